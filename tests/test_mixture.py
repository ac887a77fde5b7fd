"""dev/make_mixture.py: a text corpus and a depth task (spaced surface) written as one folder of
ordinary shards: every text training document once, the task's bytes at the asked fraction,
the text's validation shard unchanged, the test files copied; bad flags end in one line."""

import filecmp
import os
import subprocess
import sys

import pyarrow.parquet as pq

from tests.conftest import SAMPLE_DATA_DIR
from tests.test_pointer_chase import ROOT


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def texts(path):
    return pq.read_table(path).column("text").to_pylist()


def test_mixture_holds_the_text_once_and_the_task_at_its_fraction(tmp_path):
    task, out = tmp_path / "task", tmp_path / "mix"
    proc = run("-m", "dev.make_pointer_chase", "--out", str(task), "--surface", "spaced", "--n-train", "4000",
               "--n-val", "10", "--n-test", "5", "--train-shards", "2")
    assert proc.returncode == 0, proc.stderr
    proc = run("-m", "dev.make_mixture", "--text-dir", SAMPLE_DATA_DIR, "--task-dir", str(task), "--task-fraction",
               "0.1", "--out", str(out), "--train-shards", "3")
    assert proc.returncode == 0, proc.stderr
    names = sorted(os.listdir(out))
    assert names == [f"shard_0000{i}.parquet" for i in range(4)] + [f"test_d{d}.jsonl" for d in (16, 4, 8)]
    train = [t for i in range(3) for t in texts(out / f"shard_0000{i}.parquet")]
    text_train = texts(os.path.join(SAMPLE_DATA_DIR, "shard_00000.parquet"))
    task_train = texts(task / "shard_00000.parquet") + texts(task / "shard_00001.parquet")
    is_task = [t.startswith(" ") and " | " in t for t in train]
    assert sorted(t for t, k in zip(train, is_task) if not k) == sorted(text_train)  # every text document, once
    used = [t for t, k in zip(train, is_task) if k]
    assert sorted(used) == sorted(task_train[:len(used)])  # the task's first documents
    task_bytes, text_bytes = sum(len(t.encode()) for t in used), sum(len(t.encode()) for t in text_train)
    assert 0.1 <= task_bytes / (task_bytes + text_bytes) < 0.1 + 200 / text_bytes
    assert is_task.index(True) < len(train) // 4  # shuffled, not appended
    assert filecmp.cmp(out / "shard_00003.parquet", os.path.join(SAMPLE_DATA_DIR, "shard_00001.parquet"), shallow=False)
    assert filecmp.cmp(out / "test_d8.jsonl", task / "test_d8.jsonl", shallow=False)


def test_bad_mixture_flags(tmp_path):
    task = tmp_path / "task"
    run("-m", "dev.make_pointer_chase", "--out", str(task), "--surface", "spaced", "--n-train", "20", "--n-val", "2",
        "--n-test", "2", "--train-shards", "1")
    for flags, needle in [(["--task-fraction", "1.5"], "--task-fraction 1.5: expected a number in [0, 1)"),
                          (["--task-fraction", "0.5"], "needs"),
                          (["--task-fraction", "0.1", "--text-dir", str(tmp_path)], "holds 0 parquet shards")]:
        args = ["--text-dir", SAMPLE_DATA_DIR, "--task-dir", str(task), "--out", str(tmp_path / "mix")] + flags
        proc = run("-m", "dev.make_mixture", *args)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_text_pieces_fit_and_join_back(tmp_path):
    """--text-chunk-chars: every piece within the limit, cut at line breaks (or spaces), and the
    pieces joined are the document; the mixture then holds pieces, not whole documents."""
    from dev.make_mixture import chunk
    doc = "First line.\n" + "word " * 60 + "\nshort\n" + "x" * 75 + "\nlast"
    pieces = chunk(doc, 40)
    assert "".join(pieces) == doc and all(len(p) <= 40 for p in pieces)
    assert pieces[0] == "First line.\n" and pieces[-2:] == ["x" * 40, "x" * 35 + "\nlast"]  # cut hard: no space
    assert chunk("a b\n", 10) == ["a b\n"] and chunk("", 10) == []
    task, out = tmp_path / "task", tmp_path / "mix"
    run("-m", "dev.make_pointer_chase", "--out", str(task), "--surface", "spaced", "--n-train", "20", "--n-val", "2",
        "--n-test", "2", "--train-shards", "1")
    proc = run("-m", "dev.make_mixture", "--text-dir", SAMPLE_DATA_DIR, "--task-dir", str(task), "--task-fraction",
               "0", "--text-chunk-chars", "500", "--out", str(out), "--train-shards", "1")
    assert proc.returncode == 0, proc.stderr
    pieces = texts(out / "shard_00000.parquet")
    whole = texts(os.path.join(SAMPLE_DATA_DIR, "shard_00000.parquet"))
    assert max(len(p) for p in pieces) <= 500 < max(len(d) for d in whole) and len(pieces) > len(whole)
    assert sorted(pieces) == sorted(p for d in whole for p in chunk(d, 500))
    bad = run("-m", "dev.make_mixture", "--text-dir", SAMPLE_DATA_DIR, "--task-dir", str(task), "--task-fraction", "0",
              "--text-chunk-chars", "-1", "--out", str(out))
    assert bad.returncode == 2 and "--text-chunk-chars -1: expected >= 0" in bad.stderr


def test_packed_rows_are_counted_by_kind():
    """dev/mixture_shares: a document runs from its BOS to the next; task documents start with " a"."""
    from dev.mixture_shares import count_kinds
    BOS, A = 0, 7
    row = [BOS, 5, 6, 8, BOS, A, 9, 9, BOS, 4]  # text (3 targets), task (3), text (1)
    assert count_kinds(row, BOS, A) == (4, 3)
    assert count_kinds([BOS, A, 1, 2, BOS], BOS, A) == (0, 3)
    NL = 3  # a problem joined after text: the line break and what precedes it are text
    assert count_kinds([BOS, 5, 6, NL, A, 9, NL, 9, BOS, 5, NL, 4], BOS, A, {NL}) == (6, 4)


def test_join_puts_problems_after_text_tails_and_keeps_every_byte():
    from dev.make_mixture import JOIN_CHARS, join
    texts = [f"w{i} " * 80 for i in range(10)]
    tasks = [f" a b c d | a{i}" for i in range(8)]
    heads, joined = join(texts, tasks, 0.5, seed=0)
    after = [d for d in joined if "\n" in d]
    assert len(after) == 4 and joined[4:] == tasks[4:]
    assert all(d.endswith("\n" + t) and len(d) - len(t) - 1 <= JOIN_CHARS for d, t in zip(after, tasks))
    tails = [d.split("\n")[0] for d in after]
    whole = [h for h in heads if h in texts]
    assert len(whole) == 6 and len(heads) == 10  # 4 donors, each leaving its head
    donors = sorted(set(texts) - set(whole))
    assert sorted(h + t for h in heads if h not in whole for t in tails if h + t in texts) == donors
    assert all(t and t[0] != " " for t in tails)  # cut at a space: the tail starts on a word


def test_mixture_cpu_dry_run(tmp_path):
    """runs/mixture_cpu.sh: the task, the mixture and the text-only pieces, one tokenizer, the token
    counts, three arms per seed at the same shape, then the evals of the arms that reason."""
    from tests.test_pointer_chase import dry_env, dry_run
    env = dry_env(tmp_path, SEEDS="1", TEXT_DIR=SAMPLE_DATA_DIR)
    out, cmds = dry_run("mixture_cpu.sh", env)
    assert out.returncode == 0, out.stderr
    assert "--surface spaced" in cmds[0] and "--task-fraction 0.5 --text-chunk-chars 400" in cmds[1]
    assert "--task-fraction 0 --text-chunk-chars 400" in cmds[2] and "--vocab-size 4096" in cmds[3]
    assert "dev.mixture_shares" in cmds[4] and "--steps 1000 --batch 64 --seq-len 128" in cmds[4]
    trains = [c for c in cmds if "scripts.base_train" in c]
    assert [c.split("--model-tag ")[1] for c in trains] == ["mix_s1", "text_s1", "task_s1"]
    assert all("--n-prelude 1 --n-recur 1 --n-coda 1 --max-seq-len 128" in c for c in trains)
    assert "--num-iterations 1000" in trains[0] and "--num-iterations TEXT_STEPS" in trains[1] and "TASK_STEPS" in trains[2]
    assert [c.split("--model-tags ")[1].split()[0] for c in cmds if "depth_eval" in c] == ["mix_s1", "task_s1"]
    assert sum("dev.depth_by_kind" in c for c in cmds) == 2 and sum("dev.token_depths" in c for c in cmds) == 2
    _, cur = dry_run("mixture_cpu.sh", {**env, "ARMS": "task cur"})
    trains = [c for c in cur if "scripts.base_train" in c]
    assert "--model-tag task_s1" in trains[0] and "--num-iterations 1000" in trains[1]
    assert trains[1].endswith("--init-from " + str(tmp_path / "base" / "base_checkpoints" / "task_s1") + " --model-tag cur_s1")
    assert sum("dev.depth_by_kind" in c for c in cur) == 2 and sum("depth_eval" in c for c in cur) == 2
    _, joined = dry_run("mixture_cpu.sh", {**env, "ARMS": "task cur text", "JOIN": "0.5"})
    assert "--join-share 0.5 --out " + str(tmp_path / "base" / "data_join0.5") in joined[4]
    assert "--data-dir " + str(tmp_path / "base" / "data_join0.5") in [c for c in joined if "mixture_shares" in c][0]
    assert [c.split("--model-tag ")[1] for c in joined if "scripts.base_train" in c] == ["task_s1", "cur_join0.5_s1",
                                                                                         "text_join0.5_s1"]
    alone, _ = dry_run("mixture_cpu.sh", {**env, "ARMS": "cur"})
    assert alone.returncode != 0 and "the curriculum starts from the task arm" in alone.stderr
    _, wide = dry_run("mixture_cpu.sh", {**env, "SEQ_LEN": "256", "CHUNK": "900"})
    assert "--steps 1000 --batch 32 --seq-len 256" in wide[4] and "--text-chunk-chars 900" in wide[1]
    # a folder made with other settings is not read silently
    (tmp_path / "base" / "data").mkdir(parents=True)
    (tmp_path / "base" / "data" / "made_with").write_text("FRACTION 0.5, CHUNK 400\n")
    same, _ = dry_run("mixture_cpu.sh", env)
    assert same.returncode == 0, same.stderr
    other, _ = dry_run("mixture_cpu.sh", {**env, "FRACTION": "0.3"})
    assert other.returncode != 0 and other.stderr.count("\n") == 1
    assert "base/data was made with FRACTION 0.5, CHUNK 400, this run asks for FRACTION 0.3, CHUNK 400" in other.stderr
    for bad, message in (({"ARMS": "big"}, "unknown arm 'big'"), ({"STEPS": "0"}, "STEPS: '0'"),
                         ({"SEQ_LEN": "100"}, "SEQ_LEN: '100'")):
        proc, _ = dry_run("mixture_cpu.sh", {**env, **bad})
        assert proc.returncode != 0 and message in proc.stderr
