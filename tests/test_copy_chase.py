"""The chains-of-copies task (tasks/copy_chase.py), its generator (dev/make_copy_chase.py) and
`depth_eval --task copy_chase`: seeded generation, one length at every depth, answers and depths
recomputed from the text alone, no test program in training, the baselines, and a micro model
trained through base_train for seconds whose eval table has every cell (no accuracy is asserted)."""

import os
import random
import re
import subprocess
import sys

import pytest

from nanochat.tokenizer import Tokenizer
from tasks.copy_chase import SHORTCUTS, biggest_tree_guess, chance, eval_problem, grade, make_splits, train_document
from tasks.pointer_chase import ALPHABET, SEP, vocab_size
from tests.test_var_chase import assert_tests_unseen, micro_depth_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"([a-zA-Z])([a-zA-Z0-9])")


def evaluate_text(program):
    """{letter: (value, depth)} from the program text alone, without the task's helpers: a line
    bound to a digit is known in round 0, a line naming a known letter in the next round."""
    lines = [LINE.fullmatch(line).groups() for line in program.split(" ")]
    known = {x: (int(s), 0) for x, s in lines if s.isdigit()}
    for rounds in range(1, len(lines) + 1):
        new = {x: (known[s][0], rounds) for x, s in lines if x not in known and s in known}
        if not new:
            break
        known.update(new)
    assert len(known) == len(lines), "a line never resolves: a cycle"
    return known


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
            assert all(len(line) == 2 for line in lines) and sum(line[1].isdigit() for line in lines) == 4  # roots
            assert evaluate_text(program)[x] == (int(p["answer"]), depth) and p["depth"] == depth


def test_training_documents_stay_within_the_training_depth():
    rng = random.Random(1)
    first_depths, depths = set(), set()
    for _ in range(100):
        program, queries = train_document(rng).split(SEP)
        values = evaluate_text(program)
        asked = queries.split(" ")
        assert len(asked) == 8 and len({q[0] for q in asked}) == 8 and all(len(q) == 2 for q in asked)
        for x, answer in asked:
            assert values[x][0] == int(answer) and 0 <= values[x][1] <= 4
            depths.add(values[x][1])
        first_depths.add(values[asked[0][0]][1])
    assert first_depths == {1, 2, 3, 4} and depths == {0, 1, 2, 3, 4}  # roots are asked too, after the first


def test_difficulty_does_not_change_length():
    """Byte-level tokens: 3N + 3 x queries - 1 per training document, 3N + 1 per test prompt at
    every depth, a query letter the token of its key, the answer one token."""
    rng = random.Random(2)
    docs = [train_document(rng) for _ in range(300)]
    tok = Tokenizer.train_from_iterator(iter(docs), vocab_size(24))
    assert {len(tok.encode(d)) for d in docs} == {3 * 24 + 3 * 8 - 1}
    prompts = [eval_problem(rng, d)["prompt"] for d in (1, 2, 3, 4, 8, 16) for _ in range(20)]
    assert {len(tok.encode(p)) for p in prompts} == {3 * 24 + 1}
    p = eval_problem(rng, 8)
    ids = tok.encode(p["prompt"])
    assert ids[-1] in ids[:-2:3] and len(tok.encode(p["answer"])) == 1  # the queried letter is a key's token
    deep = [eval_problem(rng, d, n_symbols=52)["prompt"] for d in (1, 4, 16, 32)]
    assert {len(tok.encode(p)) for p in deep} == {3 * 52 + 1}


def test_no_program_of_the_tests_in_training():
    # 5 variables, 2 roots, depth <= 1: a few thousand programs, so 2000 training documents
    # repeat some and the depth-1 tests would meet them if the generator did not skip them
    train, val, tests = make_splits(0, 2000, 100, 50, n_symbols=5, n_roots=2, max_depth=1, queries=2,
                                    test_depths=[1, 2])
    assert_tests_unseen(train, val, tests, 50)
    assert sorted(make_splits(0, 20, 2, 3)[2]) == [4, 8, 16]  # default depths: max, 2x, 4x max


def test_grader_and_baselines():
    # a=3 b=a c=b d=7 e=d f=e g=f: c is 3 (depth 2, tree of 3), g is 7 (depth 3, the biggest tree)
    program = "a3 ba cb d7 ed fe gf"
    c = {"prompt": program + "|c", "answer": "3", "depth": 2, "program": program}
    g = {"prompt": program + "|g", "answer": "7", "depth": 3, "program": program}
    assert grade(c, "3") and grade(c, "3 a3") and not grade(c, "7") and not grade(c, " 3") and not grade(c, "")
    assert chance(c) == 0.5 and chance({**c, "answer": "5"}) == 0.0
    assert biggest_tree_guess(c) == 0.0 and biggest_tree_guess(g) == 1.0
    shared = "a3 ba c3 dc"  # two roots with one digit: a pick among them is always right
    assert chance({"program": shared, "answer": "3"}) == 1.0
    assert biggest_tree_guess({"program": shared, "answer": "3"}) == 1.0
    assert set(SHORTCUTS) == {"biggest_tree"}


def test_bad_generator_flags(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dev.make_copy_chase", "--out", str(tmp_path), "--n-train", "5",
                          "--test-depths", "30"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "cannot hold" in out.stderr


@pytest.mark.slow
def test_micro_run_and_depth_eval_task(tmp_path):
    """The micro run of tests/test_var_chase.py on copy_chase: its baselines in the table and JSON."""
    result, _, _ = micro_depth_eval(tmp_path, "copy_chase")
    assert all(list(b) == ["chance", "biggest_tree"] and 0.5 <= b["chance"] <= 1 for b in result["baselines"].values())
    assert "| test depth | chance | biggest-tree guess |" in (tmp_path / "eval.md").read_text()
