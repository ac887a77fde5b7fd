"""Bad input of the user's ends in one line on stderr that names the problem and the fix, exit
code 2, no traceback (nanochat/errors.py); NANOCHAT_DEBUG=1 brings the traceback back. Each case
runs the real command in a subprocess on a tiny model; the network is a closed port (HTTPS_PROXY),
so "offline" is hermetic and fails at once."""

import os
import shutil
import subprocess
import sys

import pytest

from nanochat.errors import MissingInput, UserError, run
from tests.conftest import SAMPLE_DATA_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--size", "1", "--max-seq-len", "64", "--device-batch-size", "2", "--total-batch-size", "128",
        "--num-iterations", "1", "--eval-every", "-1", "--eval-tokens", "128", "--sample-every", "-1",
        "--core-metric-every", "-1", "--device-type", "cpu"]
OFFLINE = "http://127.0.0.1:9"  # the discard port: nothing listens, so every request is refused at once


def command(base, *args, debug=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOCHAT_") and k.lower() not in (
        "https_proxy", "http_proxy", "no_proxy", "all_proxy")}
    env.update(NANOCHAT_BASE_DIR=str(base), HTTPS_PROXY=OFFLINE, HTTP_PROXY=OFFLINE, OMP_NUM_THREADS="1")
    if debug:
        env["NANOCHAT_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def one_line(out, *needles):
    """The run failed with exit code 2 and exactly one line on stderr holding every needle."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        f"exit {out.returncode}\nstderr:\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stdout + out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def base(tokenizer, tmp_path_factory):
    """NANOCHAT_BASE_DIR with a tokenizer and a base checkpoint (tag t, size 1) from a real 1-step run."""
    base = tmp_path_factory.mktemp("base")
    tokenizer.save(str(base / "tokenizer"))
    out = command(base, "scripts.base_train", *TINY, "--data-dir", SAMPLE_DATA_DIR, "--model-tag", "t")
    assert out.returncode == 0, out.stderr[-3000:]
    return base


def test_missing_data_dir(base):
    one_line(command(base, "scripts.base_train", *TINY, "--data-dir", "/nonexistent/shards"),
             "data folder /nonexistent/shards does not exist", "--data-dir", "python -m nanochat.dataset")


def test_debug_shows_the_traceback(base):
    out = command(base, "scripts.base_train", *TINY, "--data-dir", "/nonexistent/shards", debug=True)
    assert out.returncode != 0 and "Traceback" in out.stderr and "MissingInput: data folder" in out.stderr


def test_corrupt_shard(base, tmp_path):
    shutil.copy(os.path.join(SAMPLE_DATA_DIR, "shard_00001.parquet"), tmp_path / "shard_00001.parquet")
    (tmp_path / "shard_00000.parquet").write_bytes(b"PAR1" + os.urandom(2000))
    one_line(command(base, "scripts.base_train", *TINY, "--data-dir", str(tmp_path)),
             f"corrupt or truncated parquet shard {tmp_path / 'shard_00000.parquet'}", "delete or replace it")


def test_resume_without_a_checkpoint(base):
    one_line(command(base, "scripts.base_train", *TINY, "--data-dir", SAMPLE_DATA_DIR, "--model-tag", "new", "--resume"),
             f"--resume: no checkpoint in {base / 'base_checkpoints' / 'new'}", "drop --resume", "found: t")


def test_resume_with_another_size_names_the_flags(base):
    line = one_line(command(base, "scripts.base_train", *TINY, "--data-dir", SAMPLE_DATA_DIR, "--model-tag", "t",
                            "--resume", "--size", "2", "--max-seq-len", "32"),
                    "--size is 2 here but 1", "--max-seq-len is 32 here but 64", "rerun with --size 1 --max-seq-len 64")
    assert "{" not in line  # the differing fields, not the config dicts


def test_corrupt_checkpoint_names_the_file(base, tmp_path):
    shutil.copytree(base / "tokenizer", tmp_path / "tokenizer")
    shutil.copytree(base / "base_checkpoints" / "t", tmp_path / "base_checkpoints" / "t")
    model = next((tmp_path / "base_checkpoints" / "t").glob("step_*")) / "model.pt"
    model.write_bytes(os.urandom(4096))  # overwritten with random bytes
    one_line(command(tmp_path, "scripts.base_eval", "--model-tag", "t", "--eval", "sample", "--device-type", "cpu"),
             f"corrupt checkpoint file {model}", "not the zip archive torch.save writes", "delete")


def test_base_eval_offline_without_a_bundle(base):
    one_line(command(base, "scripts.base_eval", "--model-tag", "t", "--eval", "core", "--device-type", "cpu"),
             f"no eval bundle at {base / 'eval_bundle'}", "--eval-bundle PATH", "--eval bpb,sample")


def test_dataset_download_offline(tmp_path):
    one_line(command(tmp_path, "nanochat.dataset", "-n", "2", "--data-dir", str(tmp_path / "shards")),
             "cannot reach huggingface.co", "--data-dir")


def test_run_wrapper(capsys):
    def bad():
        raise MissingInput("no x in y: make one")
    with pytest.raises(SystemExit) as e:
        run(bad)
    assert e.value.code == 2 and capsys.readouterr().err == "error: no x in y: make one\n"
    assert run(lambda a: a + 1, 1) == 2
    assert issubclass(MissingInput, FileNotFoundError) and issubclass(MissingInput, ValueError)
    with pytest.raises(KeyError):  # our bugs keep their traceback
        run(lambda: {}["k"])
    assert issubclass(UserError, ValueError)


# one bad value per script: one line, exit code 2 (the same convention everywhere)

def test_base_train_bad_config_flag(base):
    one_line(command(base, "scripts.base_train", *TINY, "--data-dir", SAMPLE_DATA_DIR, "--n-head", "3"),
             "GPTConfig.n_head=3", "a divisor of n_embd=128")
    one_line(command(base, "scripts.base_train", *TINY, "--data-dir", SAMPLE_DATA_DIR, "--set", "bptt_k=0"), "bptt_k=0")


def test_chat_sft_and_rl_bad_values(base):
    one_line(command(base, "scripts.chat_sft", "--model-tag", "t", "--set", "mean=0.5", "--device-type", "cpu"),
             "recurrence mean=0.5", "expected >= 1")
    one_line(command(base, "scripts.chat_sft", "--model-tag", "t", "--mixture", "smoltalk=lots"),
             "--mixture smoltalk=lots: expected SIZE or SIZExPASSES")
    one_line(command(base, "scripts.chat_rl", "--set", "max_r=x"), "--set max_r='x': expected int like 16")
    one_line(command(base, "scripts.chat_rl", "--set", "n_embd=64"), "--set n_embd: no such field")
    one_line(command(base, "scripts.chat_rl", "--source", "base", "--model-tag", "t", "--num-samples", "3",
                     "--device-batch-size", "2", "--device-type", "cpu"), "--num-samples 3, --device-batch-size 2")


def test_chat_eval_bad_task(base):
    one_line(command(base, "scripts.chat_eval", "--source", "base", "--model-tag", "t", "-i", "Nope",
                     "--device-type", "cpu"), "--task-name 'Nope'", "expected 'all'")


def test_chat_cli_export_and_web_missing_checkpoint(base):
    missing = base / "base_checkpoints" / "none"
    one_line(command(base, "scripts.chat_cli", "--source", "base", "--model-tag", "none", "-p", "hi"), str(missing))
    one_line(command(base, "scripts.export_hf", "--source", "base", "--model-tag", "none"), str(missing))
    one_line(command(base, "scripts.chat_web", "--source", "base", "--model-tag", "none", "--device-type", "cpu"),
             str(missing))
