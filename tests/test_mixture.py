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
