"""The pointer-chasing task (tasks/pointer_chase.py) and its depth eval (scripts/depth_eval.py):
seeded generation, depth that never changes length, no train/test overlap, the grader, and a
micro model trained through base_train for seconds whose eval table has every cell."""

import json
import os
import random
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from nanochat.errors import UserError
from nanochat.tokenizer import Tokenizer
from tasks.pointer_chase import (ALPHABET, SEP, biggest_tree_guess, chance, depth_of, eval_problem, grade,
                                 make_splits, parse_table, root_of, train_document, vocab_size)

from tests.conftest import SAMPLE_DATA_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generation_is_seeded():
    a, b = make_splits(3, 50, 5, 4), make_splits(3, 50, 5, 4)
    assert a == b
    assert make_splits(4, 50, 5, 4)[0] != a[0]


def test_problems_have_the_asked_depth_and_root():
    rng = random.Random(0)
    for depth in (1, 4, 8, 16):
        p = eval_problem(rng, depth)
        parent = parse_table(p["table"])
        x = p["prompt"][-1]
        assert p["prompt"] == p["table"] + SEP + x
        assert depth_of(parent, x) == depth and root_of(parent, x) == p["answer"]
        assert sum(parent[y] == y for y in parent) == 4  # the roots
        assert sorted(parent) == list("abcdefghijklmnopqrstuvwx")
        assert all(any(parent[y] == r != y for y in parent) for r in parent if parent[r] == r)  # no lonely root
        # apart from the asked chain, nothing is deeper than max_depth
        chain = {x}
        while parent[x] != x:
            x = parent[x]
            chain.add(x)
        assert all(depth_of(parent, y) <= 4 for y in parent if y not in chain)


def test_training_documents_stay_within_the_training_depth():
    rng = random.Random(1)
    for _ in range(50):
        table, queries = train_document(rng).split(SEP)
        parent = parse_table(table)
        asked = [tuple(q) for q in queries.split(" ")]
        assert len(asked) == 8 and len({x for x, _ in asked}) == 8
        for x, answer in asked:
            assert 1 <= depth_of(parent, x) <= 4 and root_of(parent, x) == answer


def test_difficulty_does_not_change_length():
    """The byte-level tokenizer makes every letter one token, the same token in a key and in
    a query; token counts are fixed whatever the depth."""
    rng = random.Random(2)
    docs = [train_document(rng) for _ in range(300)]
    tok = Tokenizer.train_from_iterator(iter(docs), vocab_size(24))
    assert tok.get_vocab_size() == vocab_size(24) == 265
    assert {len(tok.encode(d)) for d in docs} == {3 * 24 + 3 * 8 - 1}
    prompts = [eval_problem(rng, d)["prompt"] for d in (1, 2, 4, 8, 16) for _ in range(20)]
    assert {len(tok.encode(p)) for p in prompts} == {3 * 24 + 1}
    p = eval_problem(rng, 8)
    query = tok.encode(p["prompt"])[-1]
    assert query in tok.encode(p["table"])[::3]  # the query letter is the token of its key in the table
    assert len(tok.encode(p["answer"])) == 1
    # the eval prompt is the start of a training document: table, SEP, the queried letter
    assert docs[0].startswith(docs[0].split(SEP)[0] + SEP) and prompts[0].count(SEP) == 1


def test_no_overlap_between_train_and_test():
    train, val, tests = make_splits(0, 2000, 100, 50, n_symbols=8, n_roots=2, max_depth=1, queries=2)
    # a tiny table space (8 letters, depth <= 1: few tables) forces collisions the generator must skip
    seen = {d.split(SEP)[0] for d in train + val}
    test_tables = [p["table"] for ps in tests.values() for p in ps]
    assert not seen & set(test_tables) and len(set(test_tables)) == len(test_tables)
    assert sorted(tests) == [1, 2, 4] and all(len(ps) == 50 for ps in tests.values())


def test_grader():
    p = {"prompt": "aa ba|b", "answer": "a"}
    assert grade(p, "a") and grade(p, "a xa")
    assert not grade(p, "b") and not grade(p, " a") and not grade(p, "") and not grade(p, "=a")


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="cannot hold"):
        eval_problem(random.Random(0), 18)  # 4 roots, 3 children of the other roots + 18 > 24 letters


def test_lowercase_tables_are_those_of_the_first_version():
    """Uppercase letters come after z: a table of <= 26 letters, hence every data set written
    before them, is unchanged (these strings are the lowercase-only generator's output)."""
    train, _, tests = make_splits(0, 1, 1, 1)
    assert train[0] == "aa bw cu dw es fg go hf iw jl kh lo me ns oo pd qx re ss th ux vc wa xx|ko da ms ux to cx fo jo"
    assert tests[16][0]["prompt"] == "ar bv ch dd ew ff ga hp ij jl kk lg mk nb of pe qi rr sd tx uk vt wq xc|n"


def chase_from_text(table, x):
    """(root, lookups) read off the table text alone, without the task's helpers."""
    entries = table.split(" ")
    assert all(len(e) == 2 for e in entries)
    points = dict(entries)
    lookups = 0
    while points[x] != x:
        x, lookups = points[x], lookups + 1
        assert lookups <= len(points), "a cycle"
    return x, lookups


def test_52_letter_tables_reach_8x_the_training_depth():
    """a..z then A..Z: 52 letters hold 4 roots and a chain of 32 (8x a training depth of 4). At
    every depth 1..32 the prompt has 3 x 52 + 1 tokens, the table lists every letter once in
    that order, and the answer and depth read off the text are the asked ones."""
    assert ALPHABET == "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    rng = random.Random(5)
    problems = [eval_problem(rng, depth, n_symbols=52) for depth in range(1, 33) for _ in range(3)]
    tok = Tokenizer.train_from_iterator(iter(p["prompt"] for p in problems), vocab_size(52))
    assert {len(tok.encode(p["prompt"])) for p in problems} == {3 * 52 + 1}
    for p in problems:
        table, x = p["prompt"].split(SEP)
        assert table == p["table"] and "".join(e[0] for e in table.split(" ")) == ALPHABET
        assert chase_from_text(table, x) == (p["answer"], p["depth"])
        assert sum(e[0] == e[1] for e in table.split(" ")) == 4 and chance(p) == 0.25
        assert 0 <= biggest_tree_guess(p) <= 1  # depth_eval's baselines work on these tables
    assert len(tok.encode(problems[-1]["answer"])) == 1 and problems[-1]["depth"] == 32


def test_52_letter_splits():
    """Training documents of 52 letters have one length and stay within depth 4; no test table
    at depths 1..32 occurs in training or validation."""
    depths = [1, 2, 3, 4, 8, 16, 32]
    train, val, tests = make_splits(1, 300, 30, 20, n_symbols=52, test_depths=depths)
    assert {len(d) for d in train + val} == {3 * 52 + 3 * 8 - 1}
    assert any(c.isupper() for c in train[0].split(SEP)[1])  # uppercase letters are asked too, somewhere
    for doc in train + val:
        table, queries = doc.split(SEP)
        for q in queries.split(" "):
            root, lookups = chase_from_text(table, q[0])
            assert root == q[1] and 1 <= lookups <= 4
    seen = {d.split(SEP)[0] for d in train + val}
    test_tables = [p["table"] for ps in tests.values() for p in ps]
    assert not seen & set(test_tables) and len(set(test_tables)) == len(test_tables)
    assert list(tests) == depths and all(p["depth"] == d for d, ps in tests.items() for p in ps)
    assert {len(p["prompt"]) for ps in tests.values() for p in ps} == {3 * 52 + 1}


def test_bad_sizes_name_the_limit():
    with pytest.raises(ValueError, match="at most 52 letters"):
        eval_problem(random.Random(0), 4, n_symbols=53)
    with pytest.raises(ValueError, match="cannot hold"):
        eval_problem(random.Random(0), 46, n_symbols=52)  # 4 roots, 3 children of the other roots + 46 > 52
    with pytest.raises(ValueError, match="non-roots to ask about"):
        train_document(random.Random(0), queries=21)  # 24 letters, 4 roots: 20 to ask about


def test_generator_rejects_bad_flags(tmp_path):
    """dev/make_pointer_chase.py: one line and exit code 2, as every script."""
    for flags, needle in [(["--test-depths", "1,x"], "--test-depths '1,x'"), (["--n-symbols", "60"], "at most 52")]:
        out = subprocess.run([sys.executable, "-m", "dev.make_pointer_chase", "--out", str(tmp_path), "--n-train", "5",
                              *flags], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
        assert needle in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_micro_run_and_depth_eval(tmp_path):
    """Generator -> tokenizer -> base_train (looped and gpt, seconds) -> depth_eval: the table,
    JSON and PNG hold one cell per (depth, r) for the looped model and r = 1 for the GPT."""
    data, base = tmp_path / "data", tmp_path / "base"
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1"}

    def run(*cmd):
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    run("-m", "dev.make_pointer_chase", "--out", str(data), "--n-train", "2000", "--n-val", "40", "--n-test", "6",
        "--train-shards", "1", "--max-depth", "2", "--n-symbols", "12", "--n-roots", "2", "--queries", "2")
    assert pq.read_table(data / "shard_00000.parquet").num_rows == 2000
    run("-m", "scripts.tok_train", "--data-dir", str(data), "--vocab-size", str(vocab_size(12)))
    common = ["-m", "scripts.base_train", "--size", "1", "--max-seq-len", "16", "--device-batch-size", "4",
              "--total-batch-size", "64", "--num-iterations", "3", "--eval-tokens", "64", "--sample-every", "-1",
              "--data-dir", str(data), "--warmup-steps", "1"]
    run(*common, "--n-prelude", "1", "--n-recur", "1", "--n-coda", "1", "--recur-mean", "2", "--set", "max_r=4",
        "--n-head", "4", "--model-tag", "loop")
    meta = json.loads(next((base / "base_checkpoints" / "loop").glob("step_*/meta.json")).read_text())
    assert meta["model_config"]["n_head"] == meta["model_config"]["n_kv_head"] == 4  # --n-head; kv heads follow it
    run(*common, "--arch", "gpt", "--n-recur", "2", "--model-tag", "gpt")
    out = tmp_path / "eval"
    stdout = run("-m", "scripts.depth_eval", "--model-tags", "loop,gpt", "--data-dir", str(data), "--recur", "1,3",
                 "--exit-cap", "4", "--out", str(out))
    assert "loop depth 8 adaptive exit" in stdout
    result = json.loads((tmp_path / "eval.json").read_text())
    loop, gpt = result["results"]
    assert result["n_problems"] == {"2": 6, "4": 6, "8": 6}
    assert set(loop["acc"]) == {"2", "4", "8"} and all(set(v) == {"1", "3"} for v in loop["acc"].values())
    assert all(0 <= v <= 1 for d in loop["acc"].values() for v in d.values())
    assert all(1 <= e["mean_depth"] <= 4 for e in loop["exit"].values())
    assert all(set(v) == {"1"} for v in gpt["acc"].values()) and gpt["exit"] == {}
    assert set(result["baselines"]) == {"2", "4", "8"}
    assert all(b["chance"] == 0.5 and 0 <= b["biggest_tree"] <= 1 for b in result["baselines"].values())
    table = (tmp_path / "eval.md").read_text().splitlines()
    assert len(table) == 2 + 6 + 3 + 3 and table[0].count("r=") == 2 and table[-3].startswith("| 2 | 0.50 |")
    assert (tmp_path / "eval.png").stat().st_size > 1000


def dry_env(tmp_path, **settings):
    """The environment of a runs/ script's DRY_RUN: a stand-in venv, a base folder, the settings."""
    (tmp_path / "venv" / "bin").mkdir(parents=True, exist_ok=True)
    (tmp_path / "venv" / "bin" / "activate").write_text("")
    return {**os.environ, "DRY_RUN": "1", "VENV": str(tmp_path / "venv"), "NANOCHAT_BASE_DIR": str(tmp_path / "base"),
            **settings}


def dry_run(script, env):
    """(the finished process, the commands it printed) of runs/<script> under env."""
    out = subprocess.run(["bash", f"runs/{script}"], cwd=ROOT, env=env, capture_output=True, text=True)
    return out, [line[2:] for line in out.stdout.splitlines() if line.startswith("+ ")]


def test_depth_cpu_dry_run(tmp_path):
    """runs/depth_cpu.sh: data, tokenizer, looped and GPT runs per seed at one FLOPs budget, the eval."""
    env = dry_env(tmp_path, SEEDS="1 2", BUDGET="1e12")
    out, cmds = dry_run("depth_cpu.sh", env)
    assert out.returncode == 0, out.stderr
    assert "dev.make_pointer_chase" in cmds[0] and "--test-depths 1,2,3,4,8,16" in cmds[0] and "--vocab-size 265" in cmds[1]
    trains = [c for c in cmds if "scripts.base_train" in c]
    assert [c.split("--model-tag ")[1] for c in trains] == ["loop_s1", "gpt8_s1", "loop_s2", "gpt8_s2"]
    assert all("--target-flops 1e12" in c and "--max-seq-len 95" in c and "--n-head 4" in c for c in trains)
    assert "--n-prelude 1 --n-recur 1 --n-coda 1" in trains[0] and "--arch gpt --n-recur 8" in trains[1]
    assert "--model-tags loop_s1,gpt8_s1,loop_s2,gpt8_s2" in cmds[-1] and "--recur 1,2,4,8,16,32" in cmds[-1]
    bad, _ = dry_run("depth_cpu.sh", {**env, "SEEDS": "x"})
    assert bad.returncode != 0 and "SEEDS: 'x'" in bad.stderr
    # 8x the trained depth: 52-letter tables, the sequence length following them, the looped model only
    out, cmds = dry_run("depth_cpu.sh", {**env, "N_SYMBOLS": "52", "TEST_DEPTHS": "1,4,8,32", "ARCHS": "looped",
                                         "EVAL_RECUR": "1,32,64", "NANOCHAT_BASE_DIR": str(tmp_path / "big")})
    assert out.returncode == 0, out.stderr
    assert "--n-symbols 52 --test-depths 1,4,8,32" in cmds[0]
    assert [c.split("--model-tag ")[1] for c in cmds if "base_train" in c] == ["loop_s1", "loop_s2"]
    assert all("--max-seq-len 179 " in c for c in cmds if "base_train" in c)  # 3 x 52 + 24 - 1
    assert "--recur 1,32,64 --exit-cap 64" in cmds[-1]


def test_depth_recipe_dry_run(tmp_path):
    """runs/depth_recipe.sh: one-change arms from base_train's defaults, each trained then
    evaluated; the task, the table size and the questions set the sequence length."""
    env = dry_env(tmp_path, SEEDS="1", ARMS="default sum b111 b212 b141")
    out, cmds = dry_run("depth_recipe.sh", env)
    assert out.returncode == 0, out.stderr
    assert "dev.make_pointer_chase" in cmds[0] and "--test-depths 1,2,3,4,8,16 --n-symbols 24 --queries 8" in cmds[0]
    trains = [c for c in cmds if "scripts.base_train" in c]
    assert [c.split("--model-tag ")[1] for c in trains] == ["default_s1", "sum_s1", "b111_s1", "b212_s1", "b141_s1"]
    assert all("--max-seq-len 95 " in c and "--total-batch-size 6080 " in c for c in trains)
    assert "--set" not in trains[0] and "--set inject_init=sum" in trains[1] and "--n-prelude 1" in trains[2]
    assert "--n-recur 1 --seed" in trains[3] and "--n-prelude 1 --n-coda 1 --seed" in trains[4]  # one part of 2/4/2 each
    evals = [c for c in cmds if "scripts.depth_eval" in c]
    assert len(evals) == 5 and all("--task pointer_chase" in c for c in evals)
    out, cmds = dry_run("depth_recipe.sh", {**env, "TASK": "var_chase", "N_SYMBOLS": "16", "QUERIES": "12",
                                            "TEST_DEPTHS": "1,2,4,8", "ARMS": "b111",
                                            "NANOCHAT_BASE_DIR": str(tmp_path / "var")})
    assert out.returncode == 0 and "dev.make_var_chase" in cmds[0] and "--n-symbols 16 --queries 12" in cmds[0]
    assert "--max-seq-len 131 " in cmds[2] and "--task var_chase" in cmds[3]  # 6 x 16 + 3 x 12 - 1
    out, cmds = dry_run("depth_recipe.sh", {**env, "TASK": "copy_chase", "ARMS": "b111",
                                            "NANOCHAT_BASE_DIR": str(tmp_path / "copy")})
    assert out.returncode == 0 and "dev.make_copy_chase" in cmds[0]
    assert "--max-seq-len 95 " in cmds[2] and "--total-batch-size 6080 " in cmds[2] and "--task copy_chase" in cmds[3]
    first = tmp_path / "first"  # a curriculum: each arm starts from its checkpoint in an earlier base dir
    curriculum = {**env, "ARMS": "b111", "INIT_FROM": str(first), "NANOCHAT_BASE_DIR": str(tmp_path / "c")}
    out, _ = dry_run("depth_recipe.sh", curriculum)
    assert out.returncode != 0 and f"no checkpoint in {first}/base_checkpoints/b111_s1" in out.stderr
    (first / "base_checkpoints" / "b111_s1" / "step_000010").mkdir(parents=True)
    (first / "base_checkpoints" / "b111_s1" / "step_000010" / "meta.json").write_text("{}")
    out, cmds = dry_run("depth_recipe.sh", curriculum)
    assert out.returncode == 0, out.stderr
    assert cmds[1] == f"cp -r {first}/tokenizer {tmp_path}/c/tokenizer" and not any("tok_train" in c for c in cmds)
    assert cmds[2].endswith(f"--model-tag b111_s1 --init-from {first}/base_checkpoints/b111_s1")
    for bad, message in (({"TASK": "sudoku"}, "TASK: 'sudoku'"), ({"ARMS": "big"}, "unknown arm 'big'")):
        out, _ = dry_run("depth_recipe.sh", {**env, **bad})
        assert out.returncode != 0 and message in out.stderr


def test_spaced_surface_keeps_one_token_per_letter_with_a_text_vocabulary():
    """The spaced surface for a text + reasoning mixture: with a BPE vocabulary trained on real
    text and these documents together, every " x" is one token, so every document and prompt
    has a fixed length at every depth, a query is the token of its key, and the answer " b" is
    one token (the property the byte-level tokenizer gives the packed surface)."""
    rng = random.Random(5)
    docs = [train_document(rng, surface="spaced") for _ in range(300)]
    assert docs[0].startswith(" ") and re.fullmatch(r"( [a-x] [a-x]){24} \|( [a-x] [a-x]){8}", docs[0])
    text = pq.read_table(os.path.join(SAMPLE_DATA_DIR, "shard_00000.parquet")).column("text").to_pylist()
    tok = Tokenizer.train_from_iterator(iter(text + docs), 1024)
    letters = [" " + x for x in ALPHABET[:24]]
    assert all(len(tok.encode(w)) == 1 for w in letters + [" |"])
    assert {len(tok.encode(d)) for d in docs} == {2 * 24 + 1 + 2 * 8}
    problems = [eval_problem(rng, d, surface="spaced") for d in (1, 2, 4, 8, 16) for _ in range(20)]
    assert {len(tok.encode(p["prompt"])) for p in problems} == {2 * 24 + 2}
    p = problems[-1]
    ids = tok.encode(p["prompt"])
    assert ids[-1] in ids[:-2:2] and len(tok.encode(p["answer"])) == 1 and p["answer"] == " " + root_of(
        parse_table(p["table"]), p["prompt"][-1])
    assert grade(p, p["answer"] + " k b") and not grade(p, p["answer"].strip()) and chance(p) == 0.25
    packed_p = {**p, "answer": p["answer"].strip(), "prompt": p["prompt"].replace(" ", "")}
    assert biggest_tree_guess(p) == biggest_tree_guess(packed_p) and biggest_tree_guess(problems[-1]) > 0  # depth 16
    # the packed and spaced splits draw the same problems, and no spaced test table is in training
    packed, spaced_ = make_splits(0, 50, 5, 4), make_splits(0, 50, 5, 4, surface="spaced")
    assert [d.replace(" ", "") for d in spaced_[0]] == [d.replace(" ", "") for d in packed[0]]
    assert [p["table"] for p in spaced_[2][4]] == [p["table"] for p in packed[2][4]]
    with pytest.raises(UserError, match="surface='fancy'"):
        make_splits(0, 5, 1, 1, surface="fancy")
