"""The variable-assignment task (tasks/var_chase.py), its generator (dev/make_var_chase.py) and
`depth_eval --task`: seeded generation, one length at every depth, answers and depths recomputed
from the text alone, no test program in training, the shortcuts, and a micro model trained
through base_train for seconds whose eval table has every cell (no accuracy is asserted)."""

import json
import os
import random
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from nanochat.tokenizer import Tokenizer
from tasks.pointer_chase import ALPHABET, vocab_size
from tasks.var_chase import (SEP, SHORTCUTS, chance, eval_problem, grade, make_splits, parent_digit_guess,
                             root_digit_guess, train_document)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"([a-zA-Z])=([a-zA-Z0])\+([0-9])")


def evaluate_text(program):
    """{letter: (value, depth)} from the program text alone, without the task's helpers: rounds
    of "a line whose source is known gets its value"; a root (source 0) is known in round 0, a
    letter in round k is k lookups from its root."""
    lines = [LINE.fullmatch(line).groups() for line in program.split(" ")]
    known = {"0": (0, -1)}
    for rounds in range(len(lines) + 1):
        new = {x: ((known[s][0] + int(k)) % 10, rounds) for x, s, k in lines if x not in known and s in known}
        if not new:
            break
        known.update(new)
    del known["0"]
    assert len(known) == len(lines), "a line never resolves: a cycle"
    return known


def assert_tests_unseen(train, val, tests, n_test):
    """Training repeats programs (the draw is small on purpose), yet no test program is one of
    them, none occurs twice, and every depth has its n_test problems (test_copy_chase.py too)."""
    seen = {d.split(SEP)[0] for d in train + val}
    assert len(seen) < len(train)
    test_programs = [p["program"] for ps in tests.values() for p in ps]
    assert not seen & set(test_programs) and len(set(test_programs)) == len(test_programs)
    assert all(len(ps) == n_test for ps in tests.values())


def test_generation_is_seeded():
    a, b = make_splits(3, 50, 5, 4), make_splits(3, 50, 5, 4)
    assert a == b
    assert make_splits(4, 50, 5, 4)[0] != a[0]


def test_problems_have_the_asked_depth_and_value():
    rng = random.Random(0)
    for depth in (1, 2, 3, 4, 8, 16):
        for _ in range(20):
            p = eval_problem(rng, depth)
            program, x = p["prompt"].split(SEP)
            assert program == p["program"] and len(x) == 1
            lines = program.split(" ")
            assert [line[0] for line in lines] == list(ALPHABET[:24])  # one line per letter, in order
            assert all(len(line) == 5 for line in lines) and sum(line[2] == "0" for line in lines) == 4  # the roots
            assert evaluate_text(program)[x] == (int(p["answer"]), depth) and p["depth"] == depth


def test_training_documents_stay_within_the_training_depth():
    rng = random.Random(1)
    first_depths = set()
    for _ in range(100):
        program, queries = train_document(rng).split(SEP)
        values = evaluate_text(program)
        asked = queries.split(" ")
        assert len(asked) == 8 and len({q[0] for q in asked}) == 8 and all(len(q) == 2 for q in asked)
        for x, answer in asked:
            assert values[x][0] == int(answer) and 1 <= values[x][1] <= 4
        first_depths.add(values[asked[0][0]][1])
    assert first_depths == {1, 2, 3, 4}


def test_difficulty_does_not_change_length():
    """Byte-level tokens: 6N + 3 x queries - 1 per training document, 6N + 1 per test prompt at
    every depth, a query letter the token of its key, the answer one token."""
    rng = random.Random(2)
    docs = [train_document(rng) for _ in range(300)]
    tok = Tokenizer.train_from_iterator(iter(docs), vocab_size(24))
    assert {len(tok.encode(d)) for d in docs} == {6 * 24 + 3 * 8 - 1}
    prompts = [eval_problem(rng, d)["prompt"] for d in (1, 2, 3, 4, 8, 16) for _ in range(20)]
    assert {len(tok.encode(p)) for p in prompts} == {6 * 24 + 1}
    p = eval_problem(rng, 8)
    ids = tok.encode(p["prompt"])
    assert ids[-1] in ids[:-2:6] and len(tok.encode(p["answer"])) == 1  # the queried letter is a key's token
    # 52 variables: the same at 8x a training depth of 4
    deep = [eval_problem(rng, d, n_symbols=52)["prompt"] for d in (1, 4, 16, 32)]
    assert {len(tok.encode(p)) for p in deep} == {6 * 52 + 1}


def test_no_program_of_the_tests_in_training():
    # 3 variables, 1 root, depth <= 1: 3 forests x 1000 digit choices, so 2000 training documents
    # repeat programs and the depth-1 tests would meet them if the generator did not skip them
    train, val, tests = make_splits(0, 2000, 100, 50, n_symbols=3, n_roots=1, max_depth=1, queries=2,
                                    test_depths=[1, 2])
    assert_tests_unseen(train, val, tests, 50)
    assert sorted(make_splits(0, 20, 2, 3)[2]) == [4, 8, 16]  # default depths: max, 2x, 4x max


def test_grader_and_baselines():
    # a=0+3, b=a+4, c=b+5: c is 2 (depth 2); b is 7 (depth 1)
    program = "a=0+3 b=a+4 c=b+5"
    c = {"prompt": program + "|c", "answer": "2", "depth": 2, "program": program}
    b = {"prompt": program + "|b", "answer": "7", "depth": 1, "program": program}
    assert grade(c, "2") and grade(c, "2 a3") and not grade(c, "7") and not grade(c, " 2") and not grade(c, "")
    assert chance(c) == 0.1
    assert parent_digit_guess(b) == 1.0 and parent_digit_guess(c) == 0.0  # 5 + 4 = 9, not 2
    assert root_digit_guess(c) == 0.0 and root_digit_guess({**c, "answer": "3"}) == 1.0
    rng = random.Random(3)
    assert all(parent_digit_guess(eval_problem(rng, 1)) == 1.0 for _ in range(50))  # exact at depth 1
    assert set(SHORTCUTS) == {"parent_digit", "root_digit"}


def test_bad_generator_flags(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dev.make_var_chase", "--out", str(tmp_path), "--n-train", "5",
                          "--test-depths", "30"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "cannot hold" in out.stderr


def micro_depth_eval(tmp_path, task):
    """Generator -> tokenizer -> base_train (looped, seconds) -> depth_eval --task `task` on a
    tiny program task (tests/test_copy_chase.py uses it too). Returns (the eval's JSON, its
    command, run(*cmd, rc=0))."""
    data, base = tmp_path / "data", tmp_path / "base"
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1"}

    def run(*cmd, rc=0):
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == rc, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    run("-m", f"dev.make_{task}", "--out", str(data), "--n-train", "2000", "--n-val", "40", "--n-test", "6",
        "--train-shards", "1", "--max-depth", "2", "--n-symbols", "8", "--n-roots", "2", "--queries", "2",
        "--test-depths", "2,4")
    assert pq.read_table(data / "shard_00000.parquet").num_rows == 2000
    assert sorted(os.listdir(data)) == ["shard_00000.parquet", "shard_00001.parquet", "test_d2.jsonl", "test_d4.jsonl"]
    run("-m", "scripts.tok_train", "--data-dir", str(data), "--vocab-size", str(vocab_size(8)))
    run("-m", "scripts.base_train", "--size", "1", "--max-seq-len", "16", "--device-batch-size", "4",
        "--total-batch-size", "64", "--num-iterations", "3", "--eval-tokens", "64", "--sample-every", "-1",
        "--data-dir", str(data), "--warmup-steps", "1", "--n-prelude", "1", "--n-recur", "1", "--n-coda", "1",
        "--recur-mean", "2", "--set", "max_r=4", "--n-head", "4", "--model-tag", "loop")
    eval_cmd = ["-m", "scripts.depth_eval", "--model-tags", "loop", "--data-dir", str(data), "--recur", "1,3",
                "--exit-cap", "4", "--out", str(tmp_path / "eval")]
    assert "loop depth 4 adaptive exit" in run(*eval_cmd, "--task", task).stdout
    result = json.loads((tmp_path / "eval.json").read_text())
    (loop,) = result["results"]
    assert result["args"]["task"] == task and result["n_problems"] == {"2": 6, "4": 6}
    assert all(set(v) == {"1", "3"} and all(0 <= a <= 1 for a in v.values()) for v in loop["acc"].values())
    assert all(1 <= e["mean_depth"] <= 4 for e in loop["exit"].values())
    assert (tmp_path / "eval.png").stat().st_size > 1000
    return result, eval_cmd, run


@pytest.mark.slow
def test_micro_run_and_depth_eval_task(tmp_path):
    """The micro run on var_chase: the table and JSON hold every cell and the task's baselines.
    A bad --task, or pointer_chase's grader on these files, ends in one line and exit code 2."""
    result, eval_cmd, run = micro_depth_eval(tmp_path, "var_chase")
    assert all(list(b) == ["chance", "parent_digit", "root_digit"] and b["chance"] == pytest.approx(0.1)
               for b in result["baselines"].values())
    table = (tmp_path / "eval.md").read_text().splitlines()
    assert table[-4] == "| test depth | chance | own + parent digit | root digit |" and len(table) == 2 + 2 + 3 + 2
    assert table[-2].startswith("| 2 | 0.10 |")
    for task, needle in [("nope", "--task 'nope': expected one of pointer_chase, var_chase, copy_chase"),
                         ("pointer_chase", "is not a pointer_chase test file")]:
        err = run(*eval_cmd, "--task", task, rc=2).stderr.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err
