"""Hugging Face export (nanochat/hf_export.py) and the standalone remote code it ships
(nanochat/hf_model.py): transformers' logits equal ours, its cached generate equals our
Engine, the chat template renders render_conversation's ids, export -> load -> export is
byte-stable, lm-evaluation-harness runs offline on a local task, and a drift guard that
compares the two model implementations on random configs covering every GPTConfig field.
Tiny fp32 models with perturbed zero-initialised projections (tests/test_gpt.build)."""

import ast
import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers", reason="needs the [hf] extra: pip install -e '.[hf]' (.ci/run installs it)")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from nanochat import gpt, hf_export, hf_model  # noqa: E402
from nanochat.engine import Engine  # noqa: E402
from nanochat.gpt import GPTConfig  # noqa: E402
from tests.test_gpt import build, tiny  # noqa: E402

ATOL = 1e-5
VOCAB = 512  # the conftest tokenizer's


def looped_model(**kw):
    """Windows (8) shorter than the sequences, value embeds, GQA, the fixed randn state."""
    cfg = dict(vocab_size=VOCAB, value_embeds=True, n_kv_head=2, n_recur=3, window_pattern="SSL", init_state="randn")
    return build(tiny(**{**cfg, **kw}), perturb_inject=True)


def ids(B, T, seed=0):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    """(our model, its exported folder, transformers' model loaded from it)."""
    model = looped_model()
    path = hf_export.export(model, tokenizer, str(tmp_path_factory.mktemp("hf") / "looped"), recur=4, step=7)
    hf = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    return model, path, hf


# -----------------------------------------------------------------------------
# the model

@pytest.mark.parametrize("r", [1, 4])
@torch.no_grad()
def test_transformers_logits_equal_ours(exported, r):
    model, _, hf = exported
    x = ids(2, 140)  # past one NOISE_CHUNK (128) of the fixed initial-state noise, many windows of 8
    err = (hf(x, r=r).logits - model(x, r=r)).abs().max().item()
    assert err < ATOL, err
    assert hf.config.recur == 4 and hf.dtype == torch.float32
    assert torch.equal(hf(x[:, :9]).logits, hf(x[:, :9], r=4).logits)  # config.recur is the default r


@torch.no_grad()
def test_transformers_cache_prefill_and_decode_equal_full_forward(exported):
    from transformers.cache_utils import DynamicCache
    _, _, hf = exported
    x, r = ids(2, 30, seed=1), 3
    cache, out = DynamicCache(), []
    out.append(hf(x[:, :11], r=r, cache=cache, use_cache=True).logits)
    for t in range(11, 30):
        out.append(hf(x[:, t:t + 1], r=r, cache=cache, use_cache=True).logits)
    err = (torch.cat(out, dim=1) - hf(x, r=r).logits).abs().max().item()
    assert err < ATOL, err
    assert len(cache.layers) == 1 + 3 * r + 1  # prelude, (recur block, iteration), coda
    with pytest.raises(ValueError, match="one cache serves one r"):
        hf(x[:, :1], r=r + 1, cache=cache)


@torch.no_grad()
def test_generate_with_cache_equals_our_engine(exported, tokenizer):
    model, _, hf = exported
    prompt = tokenizer.encode("the loop state iterates", prepend=tokenizer.get_bos_token_id())
    for r in (1, 3):
        results, _, _ = Engine(model, tokenizer, r=r, tool=None).generate_batch(prompt, max_tokens=16, temperature=0.0)
        ours = results[0][len(prompt):]
        for use_cache in (True, False) if r > 1 else (True,):
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, r=r, use_cache=use_cache)
            theirs = out[0, len(prompt):].tolist()
            if theirs and theirs[-1] in hf.generation_config.eos_token_id:
                theirs = theirs[:-1]  # the Engine leaves the stop token out
            assert theirs == ours, (r, use_cache)
        assert len(ours) > 4


def test_gpt_arch_exports(tokenizer, tmp_path):
    model = build(tiny(arch="gpt", vocab_size=VOCAB, n_kv_head=2, value_embeds=True))
    path = hf_export.export(model, tokenizer, str(tmp_path / "gpt"))
    hf = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    x = ids(2, 24)
    with torch.no_grad():
        err = (hf(x).logits - model(x)).abs().max().item()
    assert err < ATOL and hf.config.recur == 1, err
    with pytest.raises(ValueError, match="runs its blocks once"):
        hf(x, r=2)


@torch.no_grad()
def test_padded_batch_rows_equal_each_row_alone(exported):
    """Left and right padding through attention_mask: each row's logits at its real tokens are
    those of the row alone (positions, windows and the fixed noise count real tokens only);
    batched generate on a left-padded batch gives each row's own greedy tokens."""
    _, _, hf = exported
    lengths, T, r = [30, 19, 11], 30, 2
    rows = [ids(1, L, seed=10 + i)[0] for i, L in enumerate(lengths)]
    for side in ("left", "right"):
        x, mask = torch.zeros(3, T, dtype=torch.long), torch.zeros(3, T, dtype=torch.long)
        for b, row in enumerate(rows):
            sl = slice(T - len(row), T) if side == "left" else slice(0, len(row))
            x[b, sl], mask[b, sl] = row, 1
        logits = hf(x, attention_mask=mask, r=r).logits
        for b, row in enumerate(rows):
            err = (logits[b][mask[b].bool()] - hf(row[None], r=r).logits[0]).abs().max().item()
            assert err < ATOL, (side, b, err)
    out = hf.generate(x_left := torch.stack([torch.cat([torch.zeros(T - len(row), dtype=torch.long), row]) for row in rows]),
                      attention_mask=(torch.arange(T)[None] >= torch.tensor([T - L for L in lengths])[:, None]).long(),
                      max_new_tokens=8, do_sample=False, r=r)
    for b, row in enumerate(rows):
        alone = hf.generate(row[None], max_new_tokens=8, do_sample=False, r=r)[0, len(row):].tolist()
        assert out[b, x_left.size(1):].tolist()[:len(alone)] == alone, b


# -----------------------------------------------------------------------------
# drift guard: the standalone copy against nanochat/gpt.py

def random_config(rng):
    """A GPTConfig with every field drawn at random."""
    n_head = rng.choice([2, 4])
    arch = rng.choice(["looped", "looped", "gpt"])
    depth = dict(n_prelude=0, n_coda=0) if arch == "gpt" else dict(n_prelude=rng.randint(0, 2), n_coda=rng.randint(0, 2))
    return GPTConfig(
        sequence_len=rng.choice([16, 32, 64]), vocab_size=rng.choice([300, 320, 333]),
        n_embd=n_head * rng.choice([8, 16]), n_head=n_head, n_kv_head=rng.choice([1, 2, n_head]), arch=arch,
        n_recur=rng.randint(1, 3), window_pattern="".join(rng.choice("SLsl") for _ in range(rng.randint(1, 4))),
        short_window=rng.randint(1, 12), value_embeds=rng.random() < 0.6, init_state=rng.choice(["copy", "randn"]),
        init_state_std=rng.uniform(0.5, 2.0), inject_init=rng.choice(["identity", "sum", "random"]),
        softcap=rng.uniform(5.0, 30.0), **depth)


@torch.no_grad()
def test_drift_remote_code_equals_gpt_on_random_configs():
    """Every GPTConfig field is a field of the remote config, and on random configs (each
    field taking several values) the remote model, given our state dict, gives our logits.
    A new GPTConfig field, or a changed formula in one file only, fails here."""
    fields = [f.name for f in dataclasses.fields(GPTConfig)]
    assert tuple(fields) == hf_model.LoopedNanochatConfig.gpt_fields, "GPTConfig and the remote config differ"
    for name in ("ROTARY_BASE", "NORM_EPS", "VE_GATE_CHANNELS", "INIT_STATE_SEED", "NOISE_CHUNK", "VOCAB_MULTIPLE"):
        assert getattr(hf_model, name) == getattr(gpt, name), name
    rng, seen = random.Random(0), {f: set() for f in fields}
    for i in range(10):
        cfg = random_config(rng)
        for f in fields:
            seen[f].add(getattr(cfg, f))
        ours = build(cfg, seed=i, perturb_inject=True)
        r = 1 if cfg.arch == "gpt" else rng.randint(1, 4)
        theirs = hf_model.LoopedNanochatForCausalLM(hf_model.LoopedNanochatConfig(**dataclasses.asdict(cfg), recur=r))
        theirs.load_state_dict(ours.state_dict(), strict=True)
        x = torch.randint(0, cfg.vocab_size, (2, rng.randint(5, 40)), generator=torch.Generator().manual_seed(i))
        err = (theirs(x).logits - ours(x, r=r)).abs().max().item()
        assert err < ATOL, (i, cfg, r, err)
    assert all(len(v) >= 2 for v in seen.values()), {f: v for f, v in seen.items() if len(v) < 2}


def test_remote_code_stands_alone(exported):
    """The shipped file is hf_model.py byte for byte and imports only torch and transformers."""
    _, path, _ = exported
    with open(os.path.join(path, hf_export.MODELING_FILE), "rb") as f, open(hf_export.HF_MODEL_SOURCE, "rb") as g:
        assert f.read() == g.read()
    tree = ast.parse(open(hf_export.HF_MODEL_SOURCE).read())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert roots <= {"math", "torch", "transformers"}, roots


# -----------------------------------------------------------------------------
# tokenizer and chat template

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello, friend!"}]},
    {"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 1+2?  \n\n twice"},
        {"role": "assistant", "content": [{"type": "text", "text": "let me compute "}, {"type": "python", "text": "1+2"},
                                          {"type": "python_output", "text": "3"}, {"type": "text", "text": " so 3."}]},
        {"role": "user", "content": "ünï 码 🤖 thanks"}, {"role": "assistant", "content": "ok 42"}]},
]


def test_tokenizer_and_chat_template_match_ours(exported, tokenizer):
    _, path, _ = exported
    hf_tok = AutoTokenizer.from_pretrained(path)  # no remote code needed (an interactive shell asks; either answer works)
    bos = tokenizer.get_bos_token_id()
    from nanochat.dataset import iter_texts, list_parquet_files
    from tests.conftest import SAMPLE_DATA_DIR
    texts = [t[:3000] for t in iter_texts(list_parquet_files(SAMPLE_DATA_DIR)[:1])][:40]
    texts += ["  leading spaces\n\n\ttabs 1234567 x", "ünï 码 🤖 don't WE'LL", ""]
    for text in texts:
        ours = tokenizer.encode(text)
        assert hf_tok(text)["input_ids"] == [bos] + ours, text[:80]  # our documents all start with <|bos|>
        assert hf_tok.decode(ours) == text
    for conv in CONVERSATIONS:
        rendered = hf_tok.apply_chat_template(conv["messages"], tokenize=True)["input_ids"]
        assert rendered == tokenizer.render_conversation(conv, max_tokens=10**9)[0]
        prompt = hf_tok.apply_chat_template(conv["messages"][:-1], tokenize=True, add_generation_prompt=True)["input_ids"]
        assert prompt == tokenizer.render_for_completion(conv)
    assert hf_tok.eos_token == "<|assistant_end|>" and hf_tok.model_max_length == 32  # sequence_len


def test_chat_template_reads_the_shapes_the_server_accepts(exported, tokenizer):
    """What RAG and agent front-ends send (two user turns in a row, a later system message, a
    developer message, text parts, a model_dump()'d reply with null content): the exported template
    renders the prompt ids the OpenAI route renders for the same messages."""
    from nanochat.openai_api import _messages
    _, path, _ = exported
    hf_tok = AutoTokenizer.from_pretrained(path)
    shapes = [
        [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}],
        [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "hello"}, {"role": "system", "content": "context: loops"},
         {"role": "user", "content": "why?"}],
        [{"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]},
         {"role": "assistant", "content": None}, {"role": "assistant", "content": "late"},
         {"role": "user", "content": "again"}],
        [{"role": "user", "content": "compute"},
         {"role": "assistant", "content": [{"type": "text", "text": "ok "}, {"type": "python", "text": "1+1"},
                                           {"type": "python_output", "text": "2"}]},
         {"role": "assistant", "content": "so 2"}, {"role": "user", "content": "thanks"}],
    ]
    for messages in shapes:
        server, _ = _messages([dict(m) for m in messages])
        want = tokenizer.render_for_completion({"messages": server + [{"role": "assistant", "content": ""}]})
        got = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
        assert got == want, messages


# -----------------------------------------------------------------------------
# round trip

def test_export_load_export_is_byte_stable(exported, tmp_path):
    model, path, _ = exported
    loaded, tok, meta = hf_export.load_exported(path)
    assert meta["step"] == 7 and meta["eval_r"] == 4 and loaded.config == model.config
    x = ids(2, 20)
    with torch.no_grad():
        assert torch.equal(loaded(x, r=2), model(x, r=2))
    again = hf_export.export(loaded, tok, str(tmp_path / "again"), recur=meta["eval_r"], step=meta["step"])
    names = sorted(os.listdir(path))
    assert names == sorted(os.listdir(again)) and "model.safetensors" in names and "tokenizer.json" in names
    for name in names:
        with open(os.path.join(path, name), "rb") as f, open(os.path.join(again, name), "rb") as g:
            assert f.read() == g.read(), name


def test_load_model_accepts_an_exported_folder(exported):
    from nanochat.checkpoint_manager import load_model
    model, path, _ = exported
    loaded, tok, meta = load_model(path)
    assert tok.get_vocab_size() == VOCAB and meta["eval_r"] == 4
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="export_hf"):
        hf_export.load_exported(os.path.dirname(path))


# -----------------------------------------------------------------------------
# lm-evaluation-harness, offline, on a local task file

LM_EVAL = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
out = lm_eval.simple_evaluate(model="hf", model_args=dict(pretrained=sys.argv[1], trust_remote_code=True, dtype="float32",
                              add_bos_token=True), tasks=["nanochat_tiny", "nanochat_tiny_gen"], device="cpu", batch_size=2,
                              task_manager=TaskManager(include_path=sys.argv[2], include_defaults=False), log_samples=True)
samples = [[s["arguments"][i][0], s["arguments"][i][1], s["resps"][i][0][0]]
           for s in out["samples"]["nanochat_tiny"] for i in range(len(s["arguments"]))]
generations = [[s["arguments"][0][0], s["resps"][0][0]] for s in out["samples"]["nanochat_tiny_gen"]]
print(json.dumps({"acc": out["results"]["nanochat_tiny"]["acc,none"], "samples": samples, "generations": generations}))
"""

LM_EVAL_SERVER = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
out = lm_eval.simple_evaluate(model="local-completions", model_args=dict(
    base_url=sys.argv[3] + "/v1/completions", model=sys.argv[4], tokenizer=sys.argv[1], tokenizer_backend="huggingface",
    trust_remote_code=True, add_bos_token=True, batch_size=2, max_retries=1),
    tasks=["nanochat_tiny", "nanochat_tiny_gen"], task_manager=TaskManager(include_path=sys.argv[2], include_defaults=False), log_samples=True)
samples = [[s["arguments"][i][0], s["arguments"][i][1], s["resps"][i][0][0]]
           for s in out["samples"]["nanochat_tiny"] for i in range(len(s["arguments"]))]
generations = [[s["arguments"][0][0], s["resps"][0][0]] for s in out["samples"]["nanochat_tiny_gen"]]
print(json.dumps({"acc": out["results"]["nanochat_tiny"]["acc,none"], "samples": samples, "generations": generations}))
"""

TASK_YAML = """task: nanochat_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


GEN_YAML = """task: nanochat_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 5
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


DOCS = [{"question": "The loop state", "choices": ["iterates", "token", "data"], "answer": 0},
        {"question": "The model thinks", "choices": ["deep", "again"], "answer": 1},
        {"question": "doc1 the", "choices": ["loop", "shard", "rank"], "answer": 2}]


def run_lm_eval(script, tmp_path, *argv):
    """lm-eval on the 3-question task in a subprocess, offline, as a loglikelihood task and as a
    greedy generation task: {"acc", "samples": [context, choice, ll], "generations": [prompt, text]}."""
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tiny.yaml").write_text(TASK_YAML.format(data=data))
    (tmp_path / "tiny_gen.yaml").write_text(GEN_YAML.format(data=data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", script, argv[0], str(tmp_path), *argv[1:]], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_lm_eval_harness_runs_offline_on_a_local_task(exported, tokenizer, tmp_path):
    """lm-eval's loglikelihoods of a 3-question multiple-choice task equal ours; no network
    (HF_*_OFFLINE), a json task file, the model through `--model hf` + trust_remote_code."""
    model, path, _ = exported
    docs = DOCS
    result = run_lm_eval(LM_EVAL, tmp_path, path)
    bos, correct = tokenizer.get_bos_token_id(), 0
    assert len(result["samples"]) == 8
    for context, continuation, ll in result["samples"]:  # lm-eval: context + " " + choice, BOS first
        ctx = tokenizer.encode(context, prepend=bos)
        whole = tokenizer.encode(context + continuation, prepend=bos)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole[:-1]])), dim=-1)[0]  # default r: config.recur = 4
        ours = sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))
        assert abs(ours - ll) < 1e-4, (context, continuation, ours, ll)
    for d in docs:
        lls = [ll for c, cont, ll in result["samples"] if c == d["question"]]
        correct += max(range(len(lls)), key=lls.__getitem__) == d["answer"]
    assert result["acc"] == pytest.approx(correct / len(docs))


@pytest.mark.slow
def test_lm_eval_through_the_server_equals_lm_eval_on_the_export(exported, tmp_path):
    """lm-eval's local-completions against chat_web serving the exported folder (/v1/completions
    with echo and logprobs) gives the loglikelihoods and accuracy of `--model hf` on the folder, and
    the same greedy generations on a generate_until task."""
    from tests.test_web import chat_web_server
    _, path, _ = exported
    for folder in ("hf", "server"):
        (tmp_path / folder).mkdir()
    direct = run_lm_eval(LM_EVAL, tmp_path / "hf", path)
    with chat_web_server(tmp_path / "server", "--source", path, "--recur", "4") as url:
        served = run_lm_eval(LM_EVAL_SERVER, tmp_path / "server", path, url, f"nanochat-{os.path.basename(path)}")
    assert len(served["samples"]) == len(direct["samples"]) == 8
    for (c1, k1, ll1), (c2, k2, ll2) in zip(sorted(direct["samples"]), sorted(served["samples"])):
        assert (c1, k1) == (c2, k2) and abs(ll1 - ll2) < 1e-4, (c1, k1, ll1, ll2)
    assert served["acc"] == direct["acc"]
    assert sorted(served["generations"]) == sorted(direct["generations"]) and len(direct["generations"]) == 3


# -----------------------------------------------------------------------------
# the scripts

def test_export_script_then_chat_cli_on_the_folder(tokenizer, tmp_path):
    """scripts/export_hf.py on a saved SFT checkpoint (with its transformers logits check),
    then scripts/chat_cli with the exported folder as --source."""
    from nanochat.checkpoint_manager import save_checkpoint
    tokenizer.save(str(tmp_path / "tokenizer"))
    model = looped_model(sequence_len=64)
    meta = {"model_config": dataclasses.asdict(model.config), "eval_r": 2}
    save_checkpoint(str(tmp_path / "chatsft_checkpoints" / "s1"), 5, model.state_dict(), {}, {}, meta)
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda *argv: subprocess.run([sys.executable, "-m", *argv], cwd=repo, env=env, capture_output=True,
                                       text=True, timeout=300)
    out = tmp_path / "hf" / "s1"
    export = run("scripts.export_hf", "--source", "sft", "--out", str(out))
    assert export.returncode == 0, export.stderr[-3000:]
    assert "exported sft s1 step 5 (default r=2)" in export.stdout and "max |diff| = " in export.stdout
    assert json.loads((out / "config.json").read_text())["recur"] == 2
    chat = run("scripts.chat_cli", "--device-type", "cpu", "--source", str(out), "-p", "hello", "--max-new-tokens", "6",
               "--temperature", "0")
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert "step 5" in chat.stdout and "r=2" in chat.stdout and chat.stdout.split("Assistant: ", 1)[1].strip()


def test_chat_web_serves_an_exported_folder(exported):
    """chat_web --source <exported folder>: the folder's own model and tokenizer, named after it."""
    from fastapi.testclient import TestClient
    from scripts.chat_web import create_app, defaults_from, load_workers, model_id, parser
    _, path, _ = exported
    args = parser.parse_args(["--source", str(path), "--device-type", "cpu", "--max-new-tokens", "4"])
    workers, meta = load_workers(args)
    try:
        name = model_id(args, meta)
        assert name == f"nanochat-{os.path.basename(path)}"
        with TestClient(create_app(workers, defaults_from(args, meta), model_name=name, hosts=["testserver"])) as client:
            assert client.get("/v1/models").json()["data"][0]["id"] == name
            reply = client.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["role"] == "assistant"
    finally:
        for w in workers:
            w.scheduler.stop()


def test_exported_folder_pads_left_and_states_its_context(exported):
    """What generation-side clients read: left padding by default (a padded batch's prompts end
    together), and max_position_embeddings (the trained context)."""
    _, path, hf = exported
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.padding_side == "left" and hf.config.max_position_embeddings == hf.config.sequence_len
    batch = tok(["hi", "a longer prompt here"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1


# -----------------------------------------------------------------------------
# fine-tuning the export with the Hugging Face stack

def test_peft_lora_fine_tune_of_the_export_comes_back_into_our_tools(exported, tokenizer, tmp_path):
    """What PEFT / TRL recipes call first: attn_implementation="sdpa", gradient checkpointing; then
    a LoRA fine-tune of a few steps on CPU whose loss falls, merged and saved, which our own loader
    and chat_cli read back (the logits of the merged model, in nanochat and in transformers, agree)."""
    peft = pytest.importorskip("peft", reason="needs the [hf] extra's peft")
    import shutil
    _, path, _ = exported
    hf = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="sdpa")
    hf.gradient_checkpointing_enable()
    hf.config.use_cache = False
    lora = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                   target_modules=["c_q", "c_k", "c_v", "c_proj", "c_fc"]))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in lora.parameters()) / 5  # adapters only
    batch = ids(2, 24, seed=3)
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=3e-2)
    lora.train()
    losses = []
    for _ in range(8):
        loss = lora(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    merged = lora.merge_and_unload().eval()
    out = tmp_path / "tuned"
    merged.save_pretrained(out)
    for name in os.listdir(path):  # the tokenizer files travel with the weights
        if name.startswith("tokenizer") or name.endswith(".jinja") or name.startswith("special_tokens"):
            shutil.copy(os.path.join(path, name), out / name)
    ours, _, meta = hf_export.load_exported(str(out))
    with torch.no_grad():
        want = merged(input_ids=batch, use_cache=False).logits
        got = ours(batch, r=meta["eval_r"])
    assert (got - want).abs().max().item() < ATOL * 10
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    chat = subprocess.run([sys.executable, "-m", "scripts.chat_cli", "--device-type", "cpu", "--source", str(out), "-p",
                           "hello", "--max-new-tokens", "4", "--temperature", "0"], cwd=repo, capture_output=True,
                          text=True, timeout=300)
    assert chat.returncode == 0 and chat.stdout.split("Assistant: ", 1)[1].strip(), chat.stderr[-2000:]


def test_gradient_checkpointing_gives_the_same_gradients(exported):
    _, path, _ = exported
    grads = []
    for checkpointing in (False, True):
        hf = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).train()
        if checkpointing:
            hf.gradient_checkpointing_enable()
            assert hf.gradient_checkpointing
        hf(input_ids=ids(2, 16), labels=ids(2, 16), use_cache=False).loss.backward()
        grads.append({n: p.grad.clone() for n, p in hf.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) < 1e-6


def test_vocabulary_resize_keeps_every_embedding_in_step(exported):
    """resize_token_embeddings (added special tokens): input, output and value embeddings grow
    together, padded as nanochat pads, and the logits widen to the new vocabulary."""
    _, path, _ = exported
    hf = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    before = hf(input_ids=ids(1, 8)).logits
    hf.resize_token_embeddings(VOCAB + 3)
    assert hf.config.vocab_size == VOCAB + 3 and hf.get_input_embeddings().num_embeddings == VOCAB + 64
    assert all(e.num_embeddings == VOCAB + 64 for e in hf.value_embeds.values()) and hf.value_embeds
    with torch.no_grad():
        after = hf(input_ids=torch.cat([ids(1, 8), torch.tensor([[VOCAB + 2]])], dim=1)).logits
    assert after.shape[-1] == VOCAB + 3
    assert (after[0, :8, :VOCAB] - before[0]).abs().max().item() < ATOL  # old tokens: the same model
