"""Chat stages: SFT packing (assistant-only targets, best fit, resume, ranks), the categorical
evaluator on a stub model, ChatCORE, GRPO advantages and DAPO normalisation by hand, one RL
update, and chat_sft / chat_eval / chat_rl end to end on a tiny base checkpoint with a small
synthetic chat_data folder (hermetic: no network, no ../shared)."""

import csv
import gzip
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

from nanochat.checkpoint_manager import last_step, load_file, load_meta
from nanochat.engine import Engine
from nanochat.grpo import group_advantages, pack_rollouts, pg_loss, rollout_rows
from nanochat.sft_data import SFTPacker
from nanochat.task_eval import chatcore, evaluate_categorical, letter_ids, sample_replies
from tasks.common import Task, evaluate_mc, mc_conversation
from tests.conftest import SAMPLE_DATA_DIR
from tests.test_gpt import build, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -----------------------------------------------------------------------------
# SFT packing

class LengthTokenizer:
    """Renders {"id": i, "n": n} to n tokens: BOS, then n-1 copies of 10 + i (all supervised), so
    a row shows which conversation each token came from."""
    bos = 0

    def get_bos_token_id(self):
        return self.bos

    def render_conversation(self, conversation, max_tokens=2048):
        n = conversation["n"]
        return ([self.bos] + [10 + conversation["id"]] * (n - 1))[:max_tokens], ([0] + [1] * (n - 1))[:max_tokens]


def length_dataset(n=400, lo=8, hi=120, seed=0):
    rng = random.Random(seed)
    return [{"id": i, "n": rng.randint(lo, hi)} for i in range(n)]


def test_assistant_only_targets_on_a_hand_made_conversation(tokenizer):
    conv = {"messages": [
        {"role": "user", "content": "What is 3 times 4?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me compute: "},
                                          {"type": "python", "text": "3*4"},
                                          {"type": "python_output", "text": "12"},
                                          {"type": "text", "text": "It is 12."}]}]}
    ids, mask = tokenizer.render_conversation(conv)
    T = len(ids) + 6  # one conversation, then 7 tokens of padding
    x, y = SFTPacker(tokenizer, [conv], B=1, T=T).next_batch()
    assert x.shape == y.shape == (1, T)
    row, row_mask = ids + [tokenizer.get_bos_token_id()] * 7, mask + [0] * 7
    assert x[0].tolist() == row[:-1]
    expected = [row[t + 1] if row_mask[t + 1] else -1 for t in range(T)]
    assert y[0].tolist() == expected
    # spot checks by token: user text and tool output are never targets, the assistant's text,
    # its python call and <|assistant_end|> are, and the padding is not
    special = tokenizer.encode_special
    targets = [t for t in y[0].tolist() if t >= 0]
    assert special("<|assistant_end|>") in targets and special("<|python_start|>") in targets
    assert special("<|output_start|>") not in targets and special("<|user_end|>") not in targets
    n_user = len(tokenizer.encode("What is 3 times 4?"))
    assert ids[2 + n_user:4 + n_user] == [special("<|user_end|>"), special("<|assistant_start|>")]
    assert (y[0, :3 + n_user] == -1).all()  # predicting <|user_start|>, the user's text, <|user_end|>, <|assistant_start|>
    assert y[0, 3 + n_user] == ids[4 + n_user]  # the first token of the reply is a target
    out = ids.index(special("<|output_start|>"))
    assert all(v == -1 for v in y[0, out - 1:out + 3].tolist())  # predicting <|output_start|>, "12", <|output_end|>
    assert (y[0, len(ids) - 1:] == -1).all()  # padding
    assert sum(t >= 0 for t in expected) == sum(mask[1:])


def test_best_fit_pads_little_and_keeps_every_token():
    data, T = length_dataset(), 127
    best = SFTPacker(LengthTokenizer(), data, B=4, T=T, buffer_size=100)
    rows = [row for _ in range(20) for row in best.next_rows()]
    assert all(len(ids) == len(mask) == T + 1 for ids, mask in rows)
    assert all(ids[0] == 0 for ids, _ in rows)  # every row starts with a conversation's BOS
    greedy = SFTPacker(LengthTokenizer(), data, B=4, T=T, buffer_size=1)  # no choice: pack in order
    for _ in range(20):
        greedy.next_rows()
    assert best.pad_fraction < 0.05, best.pad_fraction  # measured 3.4 %; packing in order (buffer 1): 25 %
    assert greedy.pad_fraction > 5 * best.pad_fraction, (greedy.pad_fraction, best.pad_fraction)
    # whole conversations only: each one's tokens all land in one row, none cropped
    for ids, _ in rows:
        for conv_id in set(ids) - {0}:
            assert ids.count(conv_id) == data[conv_id - 10]["n"] - 1


def test_count_batches_is_the_epoch_length():
    data = length_dataset()
    for rank, world in ((0, 1), (1, 3)):
        packer = SFTPacker(LengthTokenizer(), data, B=3, T=63, buffer_size=16, rank=rank, world_size=world)
        n = SFTPacker(LengthTokenizer(), data, B=3, T=63, buffer_size=16, rank=rank, world_size=world).count_batches()
        assert n == len(list(packer)) > 5


def test_resume_gives_the_same_next_rows():
    data = length_dataset()
    a = SFTPacker(LengthTokenizer(), data, B=3, T=63, buffer_size=16)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(4)]
    b = SFTPacker(LengthTokenizer(), data, B=3, T=63, buffer_size=16, state=state)
    for (x1, y1), (x2, y2) in zip(expected, [b.next_batch() for _ in range(4)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert b.stats == a.stats
    with pytest.raises(ValueError, match="rows after resume would differ"):
        SFTPacker(LengthTokenizer(), data, B=3, T=31, buffer_size=16, state=state)


def test_ranks_are_disjoint_and_cover_the_epoch():
    data, W = length_dataset(n=300), 3
    seen = {}
    for rank in range(W):
        packer = SFTPacker(LengthTokenizer(), data, B=2, T=127, rank=rank, world_size=W, buffer_size=32)
        for x, y in packer:  # to the end of this rank's share
            for conv_id in set(x.flatten().tolist()) | set(y.flatten().tolist()):
                if conv_id >= 10:
                    assert seen.setdefault(conv_id - 10, rank) == rank, f"conversation {conv_id - 10} on two ranks"
        assert packer.stats["rendered"] == len(range(rank, len(data), W))  # its whole share was read
    assert all(i % W == r for i, r in seen.items())  # rank r owns conversations r, r + W, ...
    assert len(seen) > 0.9 * len(data)  # all but each rank's last partial batch


# -----------------------------------------------------------------------------
# categorical evaluator, ChatCORE

class ListTask(Task):
    eval_type = "categorical"

    def __init__(self, conversations):
        super().__init__(seed=None)  # the stored order: max_problems=2 takes the first two
        self.conversations = conversations

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return self.conversations[index]

    def evaluate(self, conversation, completion):
        return evaluate_mc(conversation, completion)


class StubModel:
    """Logits with a known letter: at the last prompt position, +1 on the letter chosen for that
    prompt and +5 on a decoy token that is not an answer letter of the question; at padding
    positions +9 on the right answer (a wrong position would score it)."""

    def __init__(self, tokenizer, choices):  # choices: {prompt tuple: (letter id, decoy id, right id)}
        self.choices, self.assistant_start = choices, tokenizer.encode_special("<|assistant_start|>")
        self.V = tokenizer.get_vocab_size()

    def __call__(self, idx, r=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.V)
        for b in range(B):
            row = idx[b].tolist()
            n = row.index(self.assistant_start) + 1
            chosen, decoy, right = self.choices[tuple(row[:n])]
            logits[b, n - 1, chosen] += 1.0
            logits[b, n - 1, decoy] += 5.0
            logits[b, n:, right] += 9.0
        return logits


def test_categorical_accuracy_on_a_stub_model(tokenizer):
    questions = [  # (question, choices, answer index, index the stub picks)
        ("Which is a fruit?", ["apple", "stone", "car", "cloud"], 0, 0),
        ("Which is blue?", ["grass", "sky", "coal", "snow"], 1, 2),
        ("Which one is the number two written as a word, spelled out fully?", ["two", "ten", "one"], 0, 0),
        ("Which swims?", ["cat", "dog", "fish", "bird"], 2, 3),
        ("Which is hot?", ["ice", "snow", "fire", "frost"], 2, 2),
    ]
    conversations, choices = [], {}
    for q, opts, answer, pick in questions:
        conv = mc_conversation(q, opts, answer)
        ids = letter_ids(tokenizer, conv["letters"])
        decoy = tokenizer.encode("E" if len(opts) == 4 else "D")[0]  # a letter, but not one of this question's
        choices[tuple(tokenizer.render_for_completion(conv))] = (ids[pick], decoy, ids[answer])
        conversations.append(conv)
    res = evaluate_categorical(StubModel(tokenizer, choices), tokenizer, ListTask(conversations), "cpu", r=2, batch_size=2)
    assert res == dict(accuracy=3 / 5, correct=3, total=5, mean_depth=2.0)
    res = evaluate_categorical(StubModel(tokenizer, choices), tokenizer, ListTask(conversations), "cpu", r=2, max_problems=2)
    assert res == dict(accuracy=1 / 2, correct=1, total=2, mean_depth=2.0)


def test_chatcore_centering():
    table = {"ARC-Easy": 0.55, "ARC-Challenge": 0.40, "MMLU": 0.25, "GSM8K": 0.10, "HumanEval": 0.05, "SpellingBee": 0.50}
    # centered: (0.55-0.25)/0.75 = 0.4, (0.40-0.25)/0.75 = 0.2, 0, then 0.1, 0.05, 0.5 (baseline 0)
    assert chatcore(table) == pytest.approx((0.4 + 0.2 + 0.0 + 0.1 + 0.05 + 0.5) / 6)
    assert chatcore({"MMLU": 0.25}) == 0.0 and chatcore({"GSM8K": 1.0}) == 1.0
    with pytest.raises(ValueError, match="no random baseline"):
        chatcore({"HellaSwag": 0.5})


# -----------------------------------------------------------------------------
# GRPO

def test_advantages_are_reward_minus_group_mean():
    rewards = torch.tensor([1., 0., 0., 1., 0., 0., 0., 0., 1., 1., 1., 0.])
    expected = [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 0.25, 0.25, 0.25, -0.75]
    assert group_advantages(rewards, 4).tolist() == expected
    with pytest.raises(ValueError):
        group_advantages(rewards, 5)


def test_dapo_token_level_normalisation_by_hand():
    # two replies of different lengths; ignored positions hold junk that must not count
    logp = torch.tensor([[1e6, -2.0, -0.5, -3.0],
                         [-0.1, -0.2, 1e6, 1e6]])
    targets = torch.tensor([[-1, 7, 8, 9],
                            [4, 5, -1, -1]])
    advantages = torch.tensor([1.0, -0.5])
    # N = 5 sampled tokens; L = -(1 * (-2 - 0.5 - 3) + (-0.5) * (-0.1 - 0.2)) / 5 = -(-5.5 + 0.15) / 5 = 1.07
    assert pg_loss(logp, targets, advantages, 5).item() == pytest.approx(1.07)
    # the per-reply mean would weigh the short reply's tokens more: -(-5.5/3 + 0.15/2)/2 = 0.879..., not this
    assert abs(pg_loss(logp, targets, advantages, 5).item() - 0.8791667) > 0.1


def test_rollout_targets_cover_only_sampled_tokens():
    a = rollout_rows([5, 6, 7], dict(tokens=[8, 9, 10], sampled=[True, False, True], stop=11, depths=[]))
    b = rollout_rows([5, 6], dict(tokens=[12, 13], sampled=[True, True], stop=None, depths=[]))
    assert a == ([5, 6, 7, 8, 9, 10, 11], [0, 0, 0, 1, 0, 1, 1])  # 9 is a forced tool-output token
    x, y = pack_rollouts([a, b], pad_id=0)
    assert x.tolist() == [[5, 6, 7, 8, 9, 10], [5, 6, 12, 13, 0, 0]]
    assert y.tolist() == [[-1, -1, 8, -1, 10, 11], [-1, 12, 13, -1, -1, -1]]


def test_one_rl_step_with_a_tiny_model_changes_the_weights(tokenizer):
    model = build(tiny(vocab_size=tokenizer.get_vocab_size(), sequence_len=64))
    optimizer = model.setup_optimizer(matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004, scalar_lr=0.5)
    engine = Engine(model, tokenizer, r=2, tool=None)
    prompts = [tokenizer.render_for_completion({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "x"}]})
               for q in ("What is 2+2?", "Name a color.")]
    replies = sample_replies(engine, prompts, num_samples=4, max_tokens=6, temperature=1.0, seed=0)
    assert len(replies) == 8 and all(1 <= len(r["tokens"]) + (r["stop"] is not None) <= 7 for r in replies)
    rewards = torch.tensor([1., 0., 0., 0., 0., 1., 1., 0.])  # as a grader would give
    advantages = group_advantages(rewards, 4)
    rolls = [rollout_rows(prompts[i // 4], reply) for i, reply in enumerate(replies)]
    x, y = pack_rollouts(rolls, tokenizer.get_bos_token_id())
    n_sampled = int((y >= 0).sum())
    assert n_sampled == sum(len(r["tokens"]) + (r["stop"] is not None) for r in replies)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    logp = -model.loss(x, y, r=2, bptt_k=1, reduction="none")
    loss = pg_loss(logp, y, advantages, n_sampled)
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad.abs().sum() > 0
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "lm_head.weight" in changed and any(k.startswith("recur.") for k in changed), changed


# -----------------------------------------------------------------------------
# the stand-in SmolTalk's source filter

def test_smoltalk_stand_in_drops_excluded_sources(tmp_path):
    from tasks.smoltalk import SmolTalk
    make_chat_data(tmp_path)
    path = os.path.join(tmp_path, "sft", "sft_conversations.jsonl")
    kept = SmolTalk("train", path=path, exclude_sources=("nanochat_identity", "gsm8k_train"))
    everything = SmolTalk("train", path=path)
    assert len(everything) == 28 and len(kept) == 19 and kept.excluded == 9  # of 30 rows, 0 and 20 are test rows
    texts = [m["content"] for conv in kept for m in conv["messages"]]
    assert not any("d32" in t or "<<" in t for t in texts)
    assert len(SmolTalk("test", path=path, exclude_sources=("nanochat_identity",))) == 1  # rows 0 and 20: one dropped


# -----------------------------------------------------------------------------
# end to end: a tiny base checkpoint, a synthetic chat_data folder, the three scripts

def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def make_chat_data(root):
    """A few rows of every file the scripts read, in the chat_data layout."""
    rng = random.Random(0)
    words = ["apple", "banana", "cherry", "river", "stone", "cloud", "tiger", "lemon", "paper", "window",
             "garden", "silver", "rocket", "planet", "violet", "marble", "candle", "forest", "bridge", "castle"]
    arc = [{"question": f"Which word is number {i}?", "choices": {"text": rng.sample(words, 4), "label": list("ABCD")},
            "answerKey": "ABCD"[i % 4]} for i in range(6)]
    write_jsonl(os.path.join(root, "arc", "ARC-Easy-test.jsonl"), arc)
    write_jsonl(os.path.join(root, "arc", "ARC-Challenge-test.jsonl"), arc[::-1])
    humaneval = [{"task_id": f"HumanEval/{i}", "prompt": f"def add{i}(a, b):\n    \"\"\"The sum.\"\"\"\n",
                  "canonical_solution": "    return a + b\n", "entry_point": f"add{i}",
                  "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"} for i in range(2)]
    os.makedirs(os.path.join(root, "humaneval"), exist_ok=True)
    with gzip.open(os.path.join(root, "humaneval", "HumanEval.jsonl.gz"), "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in humaneval)
    mmlu = [{"subject": "misc", "question": f"Pick {w}.", "choices": rng.sample(words, 4), "answer": i % 4}
            for i, w in enumerate(words[:8])]
    for split in ("auxiliary_train", "test"):
        write_jsonl(os.path.join(root, "mmlu", f"{split}.jsonl"), mmlu)
    gsm = [{"question": f"Tom has {a} apples and buys {b} more. How many now?",
            "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
           for a, b in [(2, 3), (5, 7), (1, 1), (10, 4), (6, 6), (3, 9)]]
    write_jsonl(os.path.join(root, "gsm8k", "train.jsonl"), gsm)
    write_jsonl(os.path.join(root, "gsm8k", "test.jsonl"), gsm[:4])
    chats = [{"messages": [{"role": "user", "content": f"Tell me about {w}."},
                           {"role": "assistant", "content": f"{w.capitalize()} is a word with {len(w)} letters."}],
              "source": "gpteacher_roleplay"} for w in words]
    chats += [{"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am nanochat d32."}],
               "source": "nanochat_identity"}] * 5
    chats += [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<<2+2=4>>4"}],
               "source": "gsm8k_train"}] * 5
    write_jsonl(os.path.join(root, "sft", "sft_conversations.jsonl"), chats)
    os.makedirs(os.path.join(root, "words"), exist_ok=True)
    with open(os.path.join(root, "words", "words_alpha.txt"), "w") as f:
        f.write("\n".join(words + [w + "s" for w in words] + [w + "ed" for w in words]) + "\n")


def run_script(base, module, *args, nproc=1, code=0):
    """The script's stdout; with code=2 (a user error) its single stderr line instead."""
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={nproc}"]
    proc = subprocess.run([*launch, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == code, proc.stdout[-4000:] + proc.stderr[-4000:]
    if code:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-4000:]
        return lines[0]
    return proc.stdout


def saved_meta(checkpoint_dir):
    return load_meta(checkpoint_dir)[1]


SFT_MIX = ["--mixture", "smoltalk=12,mmlu=4,gsm8k=4x2,identity=-1x1,simple_spelling=8,spelling_bee=4"]
SFT_TINY = ["--device-batch-size", "2", "--total-batch-size", "256", "--eval-tokens", "256", "--buffer-size", "8",
            "--chat-eval-problems", "2", "--chat-eval-max-tokens", "6"]


@pytest.fixture(scope="module")
def chat_base(tmp_path_factory, tokenizer):
    """NANOCHAT_BASE_DIR with a tokenizer, chat_data and a 2-step base checkpoint (size 1, T 64)."""
    base = tmp_path_factory.mktemp("chat")
    tokenizer.save(os.path.join(base, "tokenizer"))
    make_chat_data(os.path.join(base, "chat_data"))
    run_script(base, "scripts.base_train", "--size", "1", "--max-seq-len", "64", "--device-batch-size", "2",
               "--total-batch-size", "256", "--eval-tokens", "256", "--sample-every", "-1", "--set", "max_r=6",
               "--num-iterations", "2", "--eval-every", "-1", "--core-metric-every", "-1", "--data-dir", SAMPLE_DATA_DIR)
    return base


@pytest.fixture(scope="module")
def sft_run(chat_base):
    stand_in = os.path.join(chat_base, "chat_data", "sft", "sft_conversations.jsonl")
    args = ["--model-tag", "s1", "--local-data", f"smoltalk={stand_in}", *SFT_MIX, *SFT_TINY, "--num-iterations", "2",
            "--save-every", "1", "--chat-eval-every", "2"]
    return chat_base, args, run_script(chat_base, "scripts.chat_sft", *args)


def test_chat_sft_end_to_end(sft_run):
    base, _, out = sft_run
    assert "optimizer: the base run's state" in out
    assert "(9 rows dropped)" in out  # the stand-in's nanochat_identity and gsm8k_train rows of the train split
    assert "note: SmolTalk: 12 asked, only" not in out and "| SmolTalk |" in out
    assert "step 00002/2" in out and "val bpb" in out and "quick chat eval" in out
    quick = [line for line in out.splitlines() if "quick chat eval" in line]
    assert len(quick) == 1 and "HumanEval" in quick[0] and "ChatCORE" in quick[0]  # at the end, all six tasks
    ckpt = base / "chatsft_checkpoints" / "s1"
    assert last_step(ckpt) == 2 and os.path.exists(ckpt / "train_log.png")
    assert os.path.exists(base / "report" / "chat_sft.md")
    # the base run's recipe carries over: its sampler (max 6 there) and its optimizer kind
    base_meta, meta = saved_meta(base / "base_checkpoints" / "s1"), saved_meta(ckpt)
    assert meta["recurrence"] == base_meta["recurrence"] and meta["recurrence"]["max_r"] == 6
    assert meta["optimizer"]["muon_beta2"] == 0.9 and meta["optimizer"]["cautious_weight_decay"] is True
    assert meta["optimizer"]["matrix_lr"] == base_meta["optimizer"]["matrix_lr"] and meta["optimizer"]["weight_decay"] == 0.0


def test_chat_sft_resume_equals_uninterrupted(sft_run):
    base, args, _ = sft_run
    ckpt = base / "chatsft_checkpoints" / "s1"
    full = load_file(ckpt, 2, "model.pt")
    shutil.rmtree(ckpt / "step_000002")
    line = run_script(base, "scripts.chat_sft", *args, "--resume", "--warmdown-ratio", "0.5", code=2)
    assert "--warmdown-ratio is 0.5 here but 0.2" in line and "rerun with --warmdown-ratio 0.2" in line
    out = run_script(base, "scripts.chat_sft", *args, "--resume")
    assert "resumed from" in out and "at step 1" in out
    resumed = load_file(ckpt, 2, "model.pt")
    for name in full:
        assert torch.equal(full[name], resumed[name]), f"{name} differs after resume"


def test_chat_sft_two_ranks_to_the_end_of_the_epoch(chat_base, tmp_path):
    base = tmp_path / "base"  # a copy without the SFT checkpoints the other tests read
    shutil.copytree(chat_base, base, ignore=shutil.ignore_patterns("chatsft_checkpoints", "report"))
    stand_in = os.path.join(base, "chat_data", "sft", "sft_conversations.jsonl")
    out = run_script(base, "scripts.chat_sft", "--model-tag", "s1", "--local-data", f"smoltalk={stand_in}",
                     "--mixture", "smoltalk=8,mmlu=2,gsm8k=2x1,identity=0,simple_spelling=6,spelling_bee=2",
                     "--device-batch-size", "1", "--total-batch-size", "128", "--eval-tokens", "128",
                     "--chat-eval-every", "-1", "--load-optimizer", "0", "--warmdown-ratio", "0.5", nproc=2)
    assert "world size 2" in out and "x 2 ranks x 1 accum" in out and "optimizer: fresh state" in out
    steps = [line for line in out.splitlines() if line.startswith("step ") and "| loss" in line]
    counted = int(out.split("epoch: ")[1].split(" steps")[0])
    assert len(steps) == counted >= 2 and "(100.0% of the epoch)" in steps[-1]
    assert "lrm 1.00" in steps[0] and "lrm 0.00" in steps[-1]  # the decay ends on the last step of the epoch
    assert last_step(base / "chatsft_checkpoints" / "s1") == len(steps)


def test_chat_eval_end_to_end(sft_run):
    base, _, _ = sft_run
    out = run_script(base, "scripts.chat_eval", "-i", "ARC-Easy,GSM8K", "--model-tag", "s1", "--max-problems", "3",
                     "--max-new-tokens", "8", "--recur", "1,2", "--adaptive", "0")
    assert "r=1 | ARC-Easy      | 3 problems" in out and "r=2 | GSM8K         | 3 problems" in out
    assert "r=2 adaptive | ARC-Easy      | 3 problems" in out and "r=1 | adaptive: skipped" in out
    with open(base / "chat_eval" / "sft_s1_step000002.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["r"], row["mode"]) for row in rows] == [("1", "fixed"), ("2", "fixed"), ("2", "adaptive")]
    assert all(0 <= float(row["GSM8K_acc"]) <= 1 for row in rows)
    # adaptive exit at threshold 0 never stops a token: the fixed r = 2 function, every task at depth 2
    fixed, adaptive = rows[1], rows[2]
    assert all(fixed[k] == adaptive[k] for k in ("ARC-Easy_acc", "GSM8K_acc"))
    assert all(float(adaptive[k]) == 2.0 for k in ("ARC-Easy_mean_depth", "GSM8K_mean_depth", "mean_depth"))
    assert os.path.exists(base / "chat_eval" / "sft_s1_step000002.png")
    report = open(base / "report" / "chat_eval_sft.md").read()
    assert "| r | ARC-Easy | GSM8K |" in report and "| cap r | mean depth | ARC-Easy (depth) | GSM8K (depth) |" in report
    # the same accuracy from two ranks, one with 2 problems and one with 1
    two = run_script(base, "scripts.chat_eval", "-i", "ARC-Easy", "--model-tag", "s1", "--max-problems", "3",
                     "--recur", "1", nproc=2)
    acc = lambda s: next(l for l in s.splitlines() if "r=1 | ARC-Easy      | 3 problems" in l).split("accuracy ")[1].split()[0]
    assert acc(out) == acc(two)


def test_chat_rl_one_step(sft_run):
    base, _, _ = sft_run
    args = ["--model-tag", "s1", "--examples-per-step", "2", "--num-samples", "2", "--device-batch-size", "4",
            "--max-new-tokens", "8", "--num-iterations", "1", "--eval-examples", "2", "--eval-samples", "2"]
    out = run_script(base, "scripts.chat_rl", *args)
    assert "step 00001/1 | reward" in out and "pass@2" in out
    ckpt = base / "chatrl_checkpoints" / "s1"
    assert last_step(ckpt) == 1
    # RL trains with the SFT run's optimizer kind (NorMuon, cautious decay) at 0.05 x its lrs, and its sampler
    sft_meta, meta = saved_meta(base / "chatsft_checkpoints" / "s1"), saved_meta(ckpt)
    assert meta["optimizer"]["muon_beta2"] == 0.9 and meta["optimizer"]["cautious_weight_decay"] is True
    assert meta["lrs"]["matrix_lr"] == pytest.approx(0.05 * sft_meta["optimizer"]["matrix_lr"])
    assert meta["recurrence"] == sft_meta["recurrence"]
    line = run_script(base, "scripts.chat_rl", *args, "--num-iterations", "2", "--temperature", "0.5", "--resume", code=2)
    assert "--num-iterations is 2 here but 1" in line and "--temperature is 0.5 here but 1.0" in line
