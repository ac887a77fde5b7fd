"""CORE evaluation: prompts, spans and accuracies of each task type computed by hand with a
character tokenizer and a bigram stub model; few-shot draws; centering; left truncation; 2 gloo
ranks == 1 process; the real bundle's task list; bundle download; base_eval end to end."""

import csv
import dataclasses
import io
import json
import os
import random
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from nanochat.checkpoint_manager import save_checkpoint
from nanochat.common import centered_accuracy
from nanochat.core_eval import (core_metric, evaluate_core, evaluate_task, evaluation_order,
                                fewshot_indices, render_prompts, tokenize_example)
from nanochat.eval_bundle import Task, load_baselines, load_rows, load_tasks, resolve_bundle
from nanochat.gpt import GPT, GPTConfig
from tests.conftest import FakeResponse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_BUNDLE = os.path.join(ROOT, "..", "shared", "data", "eval_bundle")
GOOD = 10.0  # the stub's logit for its favoured next token (all others 0)


class CharTokenizer:
    """One token per character (id = code point + 1), BOS = 0: prompts tokenise by hand."""

    def get_bos_token_id(self):
        return 0

    def encode(self, text, prepend=None):
        if isinstance(text, list):
            return [self.encode(t, prepend) for t in text]
        return ([] if prepend is None else [prepend]) + [ord(c) + 1 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 1) if i else "<bos>" for i in ids)


class BigramStub(torch.nn.Module):
    """Logits depend on the current token only: GOOD on favour[current char], 0 elsewhere.
    Records every input and r it is called with."""

    def __init__(self, favour, seq_len=1024, vocab=130):
        super().__init__()
        self.config = SimpleNamespace(sequence_len=seq_len)
        self.table = torch.zeros(vocab, vocab)
        for a, b in favour.items():
            self.table[ord(a) + 1, ord(b) + 1] = GOOD
        self.calls = []

    def forward(self, idx, r=None):
        self.calls.append((idx.clone(), r))
        return self.table[idx]  # (B, T, V)


def run_task(model, task_type, rows, shots=0, delimiter=" ", max_seq_len=None, log=None):
    task = Task("t", task_type, shots, delimiter, "unused")
    return evaluate_task(model, CharTokenizer(), task, rows, "cpu", r=3, max_seq_len=max_seq_len, log=log)


# -----------------------------------------------------------------------------
# prompts and continuation spans

def test_prompts_by_hand():
    mc_shot = {"query": "Q: y", "choices": ["c", "d"], "gold": 0}
    mc = {"query": "Q: x", "choices": ["a", "b"], "gold": 1}
    assert render_prompts("multiple_choice", mc, "\nA: ", [mc_shot]) == ["Q: y\nA: c\n\nQ: x\nA: a", "Q: y\nA: c\n\nQ: x\nA: b"]
    assert render_prompts("multiple_choice", mc, " ", []) == ["Q: x a", "Q: x b"]
    sc_shot = {"context_options": ["p", "q"], "continuation": "r", "gold": 1}
    sc = {"context_options": ["s", "t"], "continuation": "u", "gold": 0}
    assert render_prompts("schema", sc, " ", [sc_shot]) == ["q r\n\ns u", "q r\n\nt u"]
    lm_shot = {"context": " c1 ", "continuation": "k1"}
    lm = {"context": "c2 \n", "continuation": "k2"}
    # contexts trimmed; the prompt without continuation stripped (the delimiter's space goes)
    assert render_prompts("language_modeling", lm, " ", [lm_shot]) == ["c1 k1\n\nc2", "c1 k1\n\nc2 k2"]
    assert render_prompts("language_modeling", lm, "\nAnswer: ", []) == ["c2\nAnswer:", "c2\nAnswer: k2"]
    with pytest.raises(ValueError, match="task type"):
        render_prompts("generative", lm, " ", [])


def test_continuation_spans():
    tok = CharTokenizer()
    rows, starts, ends = tokenize_example(tok, "multiple_choice", ["Q a", "Q bc"])  # common prefix: BOS "Q "
    assert starts == [3, 3] and ends == [4, 5] and rows[1] == [0] + [ord(c) + 1 for c in "Q bc"]
    rows, starts, ends = tokenize_example(tok, "schema", ["xA u", "yyB u"])  # common suffix " u"
    assert starts == [3, 4] and ends == [5, 6]
    rows, starts, ends = tokenize_example(tok, "language_modeling", ["ctx", "ctx abc"])
    assert len(rows) == 1 and (starts, ends) == ([4], [8])  # " abc": the delimiter is scored too


# -----------------------------------------------------------------------------
# accuracy of each task type by hand

def test_multiple_choice_by_hand():
    # favoured chain after the space: "yes"; "z" is followed by a favoured "e", then "s"
    model = BigramStub({" ": "y", "y": "e", "e": "s", "z": "e"})
    rows = [
        {"query": "Q?", "choices": ["yes", "no"], "gold": 0},   # yes: all 3 favoured -> correct
        {"query": "Q?", "choices": ["yes", "no"], "gold": 1},   # wrong
        {"query": "Q?", "choices": ["no", "yes"], "gold": 1},   # correct
        # mean loss, not sum: "zes" = 1 bad + 2 good tokens (mean lower), "q" = 1 bad (sum lower)
        {"query": "Q?", "choices": ["q", "zes"], "gold": 1},    # correct
    ]
    res = run_task(model, "multiple_choice", rows)
    assert res["correct"] == [1, 0, 1, 1] and res["accuracy"] == 0.75 and res["skipped"] == 0
    assert all(r == 3 for _, r in model.calls), "the recurrence count reaches the model"
    assert [ids.shape[0] for ids, _ in model.calls] == [2, 2, 2, 2], "all choices of an example in one forward"


def test_schema_by_hand():
    # the continuation " Cd" is shared; only " " after "B" is favoured, so option "...B" wins
    model = BigramStub({"B": " "})
    rows = [
        {"context_options": ["xA", "xB"], "continuation": "Cd", "gold": 1},  # correct
        {"context_options": ["xA", "xB"], "continuation": "Cd", "gold": 0},  # wrong
        {"context_options": ["xB", "xA"], "continuation": "Cd", "gold": 0},  # correct
    ]
    res = run_task(model, "schema", rows)
    assert res["correct"] == [1, 0, 1] and res["accuracy"] == pytest.approx(2 / 3)


def test_language_modeling_by_hand():
    # greedy chain: "x" -> " " -> "a" -> "b" -> "c"
    model = BigramStub({"x": " ", " ": "a", "a": "b", "b": "c"})
    rows = [
        {"context": "ctx", "continuation": "abc"},   # every token the argmax -> correct
        {"context": "ctx", "continuation": "abd"},   # last token not the argmax -> wrong
        {"context": "ctx ", "continuation": "ab"},   # (context trimmed) correct
        {"context": "ctx", "continuation": "bc"},    # first token wrong
        {"context": "cty", "continuation": "abc"},   # the delimiter itself is not predicted -> wrong
    ]
    res = run_task(model, "language_modeling", rows)
    assert res["correct"] == [1, 0, 1, 0, 0] and res["accuracy"] == 0.4
    assert all(ids.shape[0] == 1 for ids, _ in model.calls)


def test_fewshot_blocks_precede_the_example():
    model = BigramStub({})
    rows = [{"query": f"question {i}", "choices": ["a", "b"], "gold": i % 2} for i in range(6)]
    run_task(model, "multiple_choice", rows, shots=3, delimiter="\nAnswer: ")
    tok = CharTokenizer()
    for idx, (ids, _) in enumerate(model.calls):
        blocks = tok.decode(ids[0].tolist()).removeprefix("<bos>").split("\n\n")
        expected = [f"question {j}\nAnswer: {'ab'[j % 2]}" for j in fewshot_indices(6, idx, 3)]
        assert blocks[:3] == expected and blocks[3] == f"question {idx}\nAnswer: a"


# -----------------------------------------------------------------------------
# few-shot draws and evaluation order

def test_fewshot_never_self_and_fixed():
    for idx in range(30):
        got = fewshot_indices(30, idx, 10)
        assert idx not in got and len(set(got)) == 10 and all(0 <= i < 30 for i in got)
        assert got == fewshot_indices(30, idx, 10), "the draw is a pure function of the index"
        # nanochat's recipe: a generator seeded 1234 + idx samples from every other index
        assert got == random.Random(1234 + idx).sample([i for i in range(30) if i != idx], 10)
    assert fewshot_indices(5, 2, 0) == []
    with pytest.raises(ValueError, match="10-shot needs at least 11 examples"):
        fewshot_indices(5, 0, 10)
    rows = list(range(50))
    order = evaluation_order(rows)
    assert sorted(order) == rows and order != rows and order == evaluation_order(rows)
    assert evaluation_order(rows, 7) == order[:7], "a cropped run evaluates a prefix of the full one"


# -----------------------------------------------------------------------------
# left truncation

def test_left_truncation_keeps_the_continuation():
    model = BigramStub({"x": " ", " ": "a", "a": "b", "b": "c"}, seq_len=16)
    rows = [{"context": "long context " * 5 + "x", "continuation": "abc"}]
    res = run_task(model, "language_modeling", rows)
    ids = model.calls[0][0][0].tolist()
    assert len(ids) == 16, "cropped to the model's context"
    assert CharTokenizer().decode(ids).endswith("x abc"), "the continuation kept whole, at the end"
    assert res["correct"] == [1] and res["skipped"] == 0
    # multiple choice: each row cropped by its own amount, still scored on its whole continuation
    model = BigramStub({" ": "y", "y": "e", "e": "s"}, seq_len=12)
    res = run_task(model, "multiple_choice", [{"query": "q" * 30, "choices": ["yes", "nope"], "gold": 0}])
    assert model.calls[0][0].shape == (2, 12) and res["correct"] == [1]


def test_continuation_that_does_not_fit_is_counted_wrong(tmp_path):
    model = BigramStub({"x": " ", " ": "a", "a": "b", "b": "c", "c": "d"})
    rows = [{"context": "ctx", "continuation": "abcd"},   # " abcd" + the token before = 6 > 5
            {"context": "ctx", "continuation": "ab"}]     # fits: "tx ab" scored
    res = run_task(model, "language_modeling", rows, max_seq_len=5)
    assert res["correct"] == [0, 1] and res["skipped"] == 1
    assert len(model.calls) == 1, "the unscorable example never reaches the model"
    bundle = write_bundle(tmp_path, {"lm": ("language_modeling", 0, " ", rows)}, {"lm": 0})
    logged = []
    out = evaluate_core(model, CharTokenizer(), bundle, "cpu", max_seq_len=5, log=logged.append)
    assert out["results"]["lm"]["accuracy"] == 0.5
    assert any("warning: lm: 1 examples counted wrong" in line for line in logged), logged


# -----------------------------------------------------------------------------
# centering and CORE

def test_centering_and_core_by_hand():
    assert centered_accuracy(0.5, 0.25) == pytest.approx(1 / 3)
    assert centered_accuracy(0.62, 0.62) == pytest.approx(0.0)
    assert centered_accuracy(0.3, 0) == pytest.approx(0.3)
    assert centered_accuracy(0.2, 0.5) == pytest.approx(-0.6)
    table = {"a": 1 / 3, "b": 0.0, "c": 0.3, "d": -0.6}
    assert core_metric(table) == pytest.approx((1 / 3 + 0.3 - 0.6) / 4)
    with pytest.raises(ValueError, match="zero tasks"):
        core_metric({})


def write_bundle(root, tasks, baselines, extra_yaml=""):
    """A bundle folder: tasks = {label: (type, shots, delimiter, rows)}; baselines in %."""
    os.makedirs(root / "eval_data" / "cat", exist_ok=True)
    lines = ["icl_tasks:"]
    for label, (task_type, shots, delimiter, rows) in tasks.items():
        with open(root / "eval_data" / "cat" / f"{label}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        lines += [f"- label: {label}", f"  dataset_uri: cat/{label}.jsonl", f"  num_fewshot: [{shots}]",
                  f"  icl_task_type: {task_type}", f"  continuation_delimiter: {json.dumps(delimiter)}"]
    (root / "core.yaml").write_text("\n".join(lines) + "\n" + extra_yaml)
    meta = "Eval Task,Task Category,Random baseline\n" + "".join(f"{k},x,{v}\n" for k, v in baselines.items())
    (root / "eval_meta_data.csv").write_text(meta)
    return str(root)


MISSING_TASK = "- label: gone\n  dataset_uri: cat/gone.jsonl\n  num_fewshot: [0]\n  icl_task_type: schema\n"


def stub_bundle(root):
    mc = [{"query": f"Q{i}?", "choices": ["yes", "no"] if i % 3 else ["no", "yes"], "gold": i % 2} for i in range(9)]
    lm = [{"context": f"ctx{i}", "continuation": "ab" if i % 2 else "ba"} for i in range(7)]
    return write_bundle(root, {"mc": ("multiple_choice", 2, "\nA:", mc), "lm": ("language_modeling", 1, " ", lm)},
                        {"mc": 50, "lm": 0, "gone": 50}, MISSING_TASK)


STUB_FAVOUR = {":": "y", "y": "e", "e": "s", "0": " ", "1": " ", "2": " ", "3": " ", "4": " ", "5": " ",
               "6": " ", " ": "a", "a": "b"}


def test_core_on_a_made_up_bundle(tmp_path):
    bundle = stub_bundle(tmp_path)
    out = evaluate_core(BigramStub(STUB_FAVOUR), CharTokenizer(), bundle, "cpu", r=2, log=lambda s: None)
    assert out["missing"] == ["gone"] and set(out["results"]) == {"mc", "lm"}
    # by hand: mc picks "yes" (favoured after ":"): correct when gold is yes's index
    mc_rows = load_rows(os.path.join(bundle, "eval_data", "cat", "mc.jsonl"))
    acc_mc = sum(r["choices"][r["gold"]] == "yes" for r in mc_rows) / len(mc_rows)
    lm_rows = load_rows(os.path.join(bundle, "eval_data", "cat", "lm.jsonl"))
    acc_lm = sum(r["continuation"] == "ab" for r in lm_rows) / len(lm_rows)  # the greedy chain " " -> "a" -> "b"
    assert acc_lm == 3 / 7
    assert out["results"]["mc"]["accuracy"] == pytest.approx(acc_mc)
    assert out["results"]["lm"]["accuracy"] == pytest.approx(acc_lm)
    centered = {"mc": (acc_mc - 0.5) / 0.5, "lm": acc_lm}
    assert out["core"] == pytest.approx((centered["mc"] + centered["lm"]) / 2)
    sub = evaluate_core(BigramStub(STUB_FAVOUR), CharTokenizer(), bundle, "cpu", tasks=["lm"], max_per_task=3,
                        log=lambda s: None)
    assert list(sub["results"]) == ["lm"] and sub["results"]["lm"]["examples"] == 3
    with pytest.raises(ValueError, match="unknown"):
        evaluate_core(BigramStub({}), CharTokenizer(), bundle, "cpu", tasks=["nope"])
    (tmp_path / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nmc,50\n")
    with pytest.raises(ValueError, match=r"\['lm', 'gone'\] have no row"):
        evaluate_core(BigramStub({}), CharTokenizer(), bundle, "cpu")


# -----------------------------------------------------------------------------
# 2 gloo ranks == 1 process

def _core_worker(rank, world, init_file, bundle, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = BigramStub(STUB_FAVOUR)
    res = evaluate_core(model, CharTokenizer(), bundle, "cpu", log=lambda s: None)
    if rank == 0:
        torch.save({"core": res["core"], "correct": {k: v["correct"] for k, v in res["results"].items()}}, out)
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    bundle = stub_bundle(tmp_path / "bundle")
    out = str(tmp_path / "core.pt")
    mp.spawn(_core_worker, args=(2, str(tmp_path / "init"), bundle, out), nprocs=2, join=True)
    ddp = torch.load(out)
    single = evaluate_core(BigramStub(STUB_FAVOUR), CharTokenizer(), bundle, "cpu", log=lambda s: None)
    assert ddp["core"] == pytest.approx(single["core"])
    assert ddp["correct"] == {k: v["correct"] for k, v in single["results"].items()}


# -----------------------------------------------------------------------------
# the real bundle (shared/data/eval_bundle): task list and row counts

@pytest.mark.skipif(not os.path.isdir(REAL_BUNDLE), reason="no shared eval bundle at ../shared/data/eval_bundle")
def test_real_bundle_task_list_and_row_counts():
    tasks = {t.label: t for t in load_tasks(REAL_BUNDLE)}
    assert len(tasks) == 22
    assert (tasks["hellaswag"].num_fewshot, tasks["hellaswag_zeroshot"].num_fewshot) == (10, 0)
    assert tasks["jeopardy"].delimiter == "\nAnswer: " and tasks["copa"].delimiter == " "
    assert tasks["winogrande"].task_type == "schema" and tasks["squad"].task_type == "language_modeling"
    assert len(load_tasks(REAL_BUNDLE, "core_available.yaml")) == 21
    baselines = load_baselines(REAL_BUNDLE)
    assert baselines["boolq"] == 62 and baselines["bigbench_language_identification"] == 9.1
    with open(os.path.join(REAL_BUNDLE, "eval_meta_data.csv")) as f:
        datapoints = {row["Eval Task"]: int(row["#datapoints"]) for row in csv.DictReader(f)}
    for label in ("copa", "bigbench_repeat_copy_logic"):
        rows = load_rows(tasks[label].path)
        assert len(rows) == datapoints[label], label
        key = {"multiple_choice": "choices", "schema": "context_options", "language_modeling": "continuation"}
        assert all(key[tasks[label].task_type] in row for row in rows)


# -----------------------------------------------------------------------------
# bundle: download, atomic extraction, clear errors

def _zip_bytes(bundle_dir):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for dirpath, _, files in os.walk(bundle_dir):
            for name in files:
                path = os.path.join(dirpath, name)
                zf.write(path, os.path.join("eval_bundle", os.path.relpath(path, bundle_dir)))
    return buf.getvalue()



def test_bundle_download_and_errors(tmp_path, monkeypatch):
    import requests
    src = write_bundle(tmp_path / "src", {"t": ("schema", 0, " ", [{"context_options": ["a", "b"],
                                                                    "continuation": "c", "gold": 0}])}, {"t": 50})
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    # offline: a clear error that names --eval-bundle, and nothing half-written left behind
    def offline(*a, **k):
        raise requests.ConnectionError("no network")
    monkeypatch.setattr(requests, "get", offline)
    with pytest.raises(FileNotFoundError, match="--eval-bundle"):
        resolve_bundle()
    assert os.listdir(tmp_path / "base") == []
    with pytest.raises(FileNotFoundError, match="--eval-bundle"):
        resolve_bundle(download=False)
    # online: downloaded, extracted and renamed into place
    monkeypatch.setattr(requests, "get", lambda *a, **k: FakeResponse(_zip_bytes(src)))
    got = resolve_bundle()
    assert got == str(tmp_path / "base" / "eval_bundle") and [t.label for t in load_tasks(got)] == ["t"]
    assert sorted(os.listdir(tmp_path / "base")) == ["eval_bundle"]
    # an explicit folder that is not a bundle
    with pytest.raises(FileNotFoundError, match="lacks core.yaml"):
        resolve_bundle(str(tmp_path))


# -----------------------------------------------------------------------------
# base_eval end to end on a tiny random GPT

def test_base_eval_end_to_end(tmp_path, tokenizer, shard_dir):
    base = tmp_path / "base"
    tokenizer.save(base / "tokenizer")
    config = GPTConfig(sequence_len=64, vocab_size=tokenizer.get_vocab_size(), n_embd=32, n_head=2, n_kv_head=2,
                       short_window=16)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    save_checkpoint(str(base / "base_checkpoints" / "tiny"), 3, model.state_dict(), {}, {},
                    {"model_config": dataclasses.asdict(config), "eval_r": 2})
    mc = [{"query": f"The sky number {i} is", "choices": ["blue", "green", "red"], "gold": i % 3} for i in range(6)]
    sc = [{"context_options": ["The cat", "The dog"], "continuation": f"barked {i} times.", "gold": 1} for i in range(4)]
    lm = [{"context": f"One two three {i}", "continuation": "four"} for i in range(5)]
    bundle = write_bundle(tmp_path / "bundle", {"mc": ("multiple_choice", 1, "\nAnswer: ", mc),
                                                "sc": ("schema", 0, " ", sc), "lm": ("language_modeling", 2, " ", lm)},
                          {"mc": 100 / 3, "sc": 50, "lm": 0, "gone": 50}, MISSING_TASK)
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "scripts.base_eval", "--recur", "1,2", "--eval-bundle", bundle,
           "--data-dir", shard_dir, "--eval-tokens", "128", "--device-batch-size", "2", "--adaptive", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| r | CORE | mean depth | train bpb | val bpb |" in out and "missing: gone" in out
    table = [l for l in out.splitlines() if l.startswith("| 1 |") or l.startswith("| 2 |")]
    assert len(table) == 3  # r = 1 and 2 fixed, then cap r = 2 adaptive (r = 1 cannot stop early)
    prefix = base / "base_eval" / "tiny_step000003"
    assert os.path.getsize(f"{prefix}.png") > 0
    with open(f"{prefix}.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["r", "mode", "core", "mean_depth", "train_bpb", "val_bpb"] and "mc_acc" in rows[0]
    assert [(row["r"], row["mode"]) for row in rows] == [("1", "fixed"), ("2", "fixed"), ("2", "adaptive KL<0")]
    # threshold 0 never stops a position: the fixed r = 2 figures, at depth 2 on every task
    assert rows[2]["core"] == rows[1]["core"] and float(rows[2]["mean_depth"]) == 2.0
    assert all(rows[2][f"{t}_acc"] == rows[1][f"{t}_acc"] and float(rows[2][f"{t}_mean_depth"]) == 2.0
               for t in ("mc", "sc", "lm"))
    report = (base / "report" / "base_eval.md").read_text()
    assert "## Base model evaluation" in report and "| mc | 6 |" in report
    # a standard GPT has only r=1; a missing checkpoint is named
    bad = subprocess.run([sys.executable, "-m", "scripts.base_eval", "--model-tag", "nope", "--eval", "sample"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--model-tag nope" in bad.stderr


# -----------------------------------------------------------------------------
# base_train: periodic CORE, and a missing bundle never stops a run

@pytest.mark.slow
def test_base_train_core_metric(tmp_path, tokenizer, shard_dir):
    base = tmp_path / "base"
    tokenizer.save(base / "tokenizer")
    bundle = stub_bundle(tmp_path / "bundle")
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "scripts.base_train", "--size", "1", "--max-seq-len", "64", "--device-batch-size", "2",
           "--total-batch-size", "128", "--eval-tokens", "128", "--sample-every", "-1", "--eval-every", "-1",
           "--num-iterations", "2", "--data-dir", shard_dir, "--core-metric-every", "1"]
    proc = subprocess.run(cmd + ["--eval-bundle", bundle], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    core_lines = [l for l in proc.stdout.splitlines() if "| CORE " in l]
    assert [l.split(" |")[0] for l in core_lines] == ["step 00001", "step 00002"] and "2 tasks" in core_lines[0]
    proc = subprocess.run(cmd + ["--eval-bundle", str(tmp_path / "nowhere"), "--model-tag", "b"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "note: no CORE metric during training" in proc.stdout and "| CORE " not in proc.stdout
