"""runs/gpu_check.sh, the one prepared GPU check: its tiny mode runs every stage on the CPU and
writes the joined report; a failed stage is reported without stopping the others; bad settings
end in one line."""

import json
import os
import subprocess
import sys

import pytest

from tests.test_pointer_chase import ROOT, dry_env, dry_run


@pytest.mark.slow
def test_tiny_mode_runs_every_stage_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "TINY": "1", "OUT": str(out), "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
           "NANOCHAT_PYTHON": sys.executable}
    env.pop("DRY_RUN", None)
    proc = subprocess.run(["bash", "runs/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["stages"] == dict.fromkeys(["train", "tokenizer", "race_looped", "race_gpt", "decode"], "ok")
    assert [x["label"].split()[0] for x in report["train"]["results"]] == ["gpt", "looped", "looped", "looped"]
    assert all(x["tok_s"] > 0 for x in report["train"]["results"])
    race = report["race"]
    assert race["race_gpt"]["steps"] > race["race_looped"]["steps"] >= 1  # equal FLOPs: the GPT's steps are cheaper
    assert all(0 < x["val_bpb"] < 20 for x in race.values())
    ways = [(x["batch"], x["way"]) for x in report["decode"]["results"]]
    assert ways == [(b, w) for b in (1, 2) for w in ("forward", "engine", "scheduler")]
    md = (out / "gpu_check.md").read_text()
    assert "## Training throughput" in md and "## Loss race" in md and "## Decode" in md


def test_a_failed_stage_is_reported_and_the_rest_kept(tmp_path):
    (tmp_path / "train.rc").write_text("124\n")
    (tmp_path / "train.log").write_text("step 1\nstill compiling\n")
    (tmp_path / "decode.rc").write_text("1\n")
    (tmp_path / "decode.log").write_text("RuntimeError: CUDA out of memory\n")
    decode = {"args": {"size": 20, "recur": 4}, "device": "cuda", "results": [
        dict(way="forward", batch=1, tok_s=100.0, lo=90.0, hi=110.0, vs_forward=1.0)]}
    (tmp_path / "decode.json").write_text(json.dumps(decode))
    subprocess.run([sys.executable, "-m", "dev.gpu_check_report", "--out", str(tmp_path), "--checkpoints",
                    str(tmp_path / "none")], cwd=ROOT, check=True, capture_output=True)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["stages"]["train"] == "timed out: still compiling"
    assert report["stages"]["decode"] == "failed (exit 1): RuntimeError: CUDA out of memory"
    assert report["stages"]["race_gpt"] == "not run" and report["race"] == {"race_looped": None, "race_gpt": None}
    assert "| 1 | forward | 100.0 (90.0-110.0) | 1.00x |" in (tmp_path / "gpu_check.md").read_text()


def test_dry_run_and_bad_settings(tmp_path):
    env = dry_env(tmp_path, OUT=str(tmp_path / "out"))
    out, cmds = dry_run("gpu_check.sh", env)
    assert out.returncode == 0, out.stderr
    stages = [line[3:].split(" ")[0] for line in out.stdout.splitlines() if line.startswith("== ")]
    assert stages == ["train", "tokenizer", "race_looped", "race_gpt", "decode"]
    assert "--size 20" in out.stdout and "--compile 1" in out.stdout and "--target-flops 1e16" in out.stdout
    assert cmds[-1].startswith("python -m dev.gpu_check_report")
    for settings, needle in [({"TINY": "2"}, "TINY: '2' must be 0 or 1"),
                             ({"RACE_FLOPS": "lots"}, "RACE_FLOPS: 'lots' is not like 2e16"),
                             ({"DATA_DIR": str(tmp_path / "nothing")}, "holds 0 parquet shards")]:
        out, _ = dry_run("gpu_check.sh", {**env, **settings})
        assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr, out.stderr
