"""The report card (nanochat/report.py), the shell entry points (runs/*.sh, slurm/*.sbatch) run
as dry runs, and dev/plot_scaling.py. The dry runs print every command; the flags they pass to
our scripts are checked against each script's --help, so a renamed flag fails here, not on a
cluster."""

import csv
import datetime
import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from nanochat.report import DummyReport, Report, estimate_cost, get_report, parse_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "runs", "*.sh")) + glob.glob(os.path.join(ROOT, "slurm", "*.sbatch")))
SBATCH = ["base_train", "chat_sft", "chat_rl", "chat_eval", "scaling_laws"]

# -----------------------------------------------------------------------------
# report

BASE_EVAL_MD = """## Base model evaluation

- model: s20, step 1000 (/x/base_checkpoints/s20)
- CORE examples per task: all

| r | CORE | train bpb | val bpb | CORE time (s) |
|---|---|---|---|---|
| 1 | 0.1000 | 0.9100 | 0.9200 | 12 |
| 4 | 0.2000 | 0.8000 | 0.8100 | 40 |

| task | examples | acc r=1 | centered r=1 | acc r=4 | centered r=4 |
|---|---|---|---|---|---|
| hellaswag | 100 | 0.3000 | +0.0667 | 0.4000 | +0.2000 |
"""


def write_sections(report):
    report.log("Tokenizer training", [{"vocab size": 32768, "training time (s)": 61.25}])
    report.log("Base model training", [{"size": 20}, {"val bpb": 0.81234, "unigram baseline bpb": 2.0,
                                                      "FLOPs per token": 3.2e9, "MFU (%)": 41.5}])
    with open(os.path.join(report.report_dir, "base_eval.md"), "w") as f:  # base_eval.py writes its own file
        f.write(BASE_EVAL_MD)
    report.log("Chat evaluation sft", [{"ARC-Easy": 0.41, "GSM8K": 0.05, "ChatCORE": 0.3}])
    report.log("An extra experiment", ["free text"])


def test_log_formats_dicts_and_strings(tmp_path):
    report = Report(str(tmp_path))
    path = report.log("Base model training", [{"steps": 21000, "val bpb": 0.81234, "FLOPs": 3.2e18, "arch": "looped"},
                                              "| a | b |"])
    assert os.path.basename(path) == "base_train.md"
    text = open(path).read()
    assert text.startswith("## Base model training\ntimestamp: ")
    for line in ("- steps: 21,000", "- val bpb: 0.8123", "- FLOPs: 3.2000e+18", "- arch: looped", "| a | b |"):
        assert line in text.splitlines(), line
    assert os.path.basename(report.log("Some new stage", ["x"])) == "some_new_stage.md"


def test_parse_metrics_bullets_and_r_table():
    m = parse_metrics(BASE_EVAL_MD + "\n- val bpb: 0.8000\n")
    assert m["CORE (r=1)"] == "0.1000" and m["CORE (r=4)"] == "0.2000"
    assert m["val bpb (r=4)"] == "0.8100" and m["val bpb"] == "0.8000"
    assert not any(k.startswith("task") or "hellaswag" in k for k in m)  # a table not keyed by r is no metric


def test_generate_orders_sections_lists_missing_and_summarises(tmp_path, monkeypatch):
    base = tmp_path / "base"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NANOCHAT_GPU_HOUR_PRICE", "2.5")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    report = get_report()
    assert isinstance(report, Report) and report.report_dir == str(base / "report")
    (base / "report" / "stale.md").write_text("## Stale section of the previous run\n")
    info = report.reset()
    assert not (base / "report" / "stale.md").exists()
    assert {"Run started", "Git commit", "GPUs", "CPU cores", "Memory", "Python", "PyTorch"} <= set(info)
    write_sections(report)

    path = report.generate()
    text = open(path).read()
    assert open(cwd / "report.md").read() == text
    assert text.startswith("# looped nanochat training report")
    for fact in ("- Git commit: ", "- GPUs: ", "- CPU cores: ", "- Memory: ", "- Python: ", "- PyTorch: "):
        assert fact in text
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## Summary", "## Tokenizer training", "## Base model training", "## Base model evaluation",
                     "## Chat evaluation sft", "## An extra experiment"]
    missing = next(line for line in text.splitlines() if line.startswith("Missing sections"))
    for name in ("Tokenizer evaluation (`tok_eval.md`)", "Chat SFT (`chat_sft.md`)", "Chat RL (`chat_rl.md`)",
                 "Chat evaluation rl (`chat_eval_rl.md`)"):
        assert name in missing
    assert "Base model training" not in missing

    lines = text.splitlines()
    start = lines.index("| Metric | BASE | SFT | RL |")
    table = lines[start:lines.index("", start)]
    assert table[2:] == ["| val bpb | 0.8123 | - | - |", "| val bpb (r=1) | 0.9200 | - | - |",
                         "| val bpb (r=4) | 0.8100 | - | - |", "| CORE (r=1) | 0.1000 | - | - |",
                         "| CORE (r=4) | 0.2000 | - | - |", "| ARC-Easy | - | 0.4100 | - |",
                         "| GSM8K | - | 0.0500 | - |", "| ChatCORE | - | 0.3000 | - |"]
    cost = next(line for line in text.splitlines() if line.startswith("- Estimated cost"))
    assert "no GPUs" in cost if "CPU only" in info["GPUs"] else "$2.50/GPU-hour" in cost


def test_generate_without_reset_or_sections_is_not_fatal(tmp_path):
    report = Report(str(tmp_path / "report"))
    text = open(report.generate(copy_to=str(tmp_path))).read()
    assert "report reset` was not run" in text and "Estimated cost: unknown" in text
    assert "No summary metrics" in text and "Tokenizer training (`tok_train.md`)" in text


def test_cost_estimate():
    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    header = f"- Run started: {start.isoformat()}\n- GPUs: 8 x NVIDIA H100 80GB HBM3\n- Nodes: 2\n"
    line = estimate_cost(header, start + datetime.timedelta(hours=2), 2.5)
    assert "- Wall time: 2.00 h" in line
    assert "16 GPUs x 2.00 h = 32.00 GPU-hours x $2.50/GPU-hour = $80.00" in line
    cpu = estimate_cost(f"- Run started: {start.isoformat()}\n- GPUs: none (CPU only)\n", start, 3.0)
    assert "no GPUs, no GPU cost" in cpu


def test_other_ranks_get_a_dummy(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    report = get_report()
    assert isinstance(report, DummyReport)
    report.log("Base model training", [{"val bpb": 1.0}])
    assert not os.path.exists(tmp_path / "report")


def test_cli_reset_then_generate(tmp_path):
    env = {**clean_env(), "NANOCHAT_BASE_DIR": str(tmp_path / "base")}
    for verb in ("reset", "generate"):
        out = subprocess.run([sys.executable, "-m", "nanochat.report", verb], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "report.md").read_text().startswith("# looped nanochat training report")
    bad = subprocess.run([sys.executable, "-m", "nanochat.report", "publish"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "usage" in bad.stderr


# -----------------------------------------------------------------------------
# shell scripts: syntax, dry runs, input checks

def clean_env():
    """This process's environment without anything the scripts read, so tests are hermetic."""
    drop = re.compile(r"^(SLURM_|NANOCHAT_|DRY_RUN|DATA_DIR|VENV|NPROC|SIZE|SIZES|BUDGETS|ARCHS|RL|WANDB_RUN|MODEL_TAG|"
                      r"SOURCE|TASKS|RECUR|RESUME|CORE|DEVICE_BATCH_SIZE|LAUNCHER|MASTER_|GPUS_PER_NODE|RANK|"
                      r"LOCAL_RANK|WORLD_SIZE|REPO_DIR|NUM_SHARDS|SEEDS|DEPTH|BUDGET|DATASET|VIRTUAL_ENV|CONDA_PREFIX)")
    return {k: v for k, v in os.environ.items() if not drop.match(k)}


@pytest.fixture
def cluster(tmp_path):
    """A fake SLURM job (2 nodes, an scontrol that lists them) and an artifact dir with a tokenizer
    and two shards; `make(...)` adds checkpoints; `run(script, **env)` dry-runs a script with this
    interpreter (NANOCHAT_PYTHON), so no .venv is needed."""
    bin_dir, base = tmp_path / "bin", tmp_path / "base"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 2\necho node1\necho node2\n')
    (bin_dir / "scontrol").chmod(0o755)
    (base / "tokenizer").mkdir(parents=True)
    (base / "tokenizer" / "tokenizer.json").write_bytes(b"fake")
    (base / "base_data" / "climbmix").mkdir(parents=True)
    for name in ("shard_00000.parquet", "shard_06542.parquet"):
        (base / "base_data" / "climbmix" / name).write_bytes(b"")

    class Cluster:
        def make(self, folder, tag, step=100):
            d = base / folder / tag / f"step_{step:06d}"
            d.mkdir(parents=True)
            (d / "meta.json").write_text("{}")

        def run(self, script, *args, scontrol=True, **env):
            path = f"{bin_dir}:{os.environ['PATH']}" if scontrol else os.environ["PATH"]
            full = {**clean_env(), "PATH": path, "DRY_RUN": "1", "NANOCHAT_PYTHON": sys.executable,
                    "NANOCHAT_BASE_DIR": str(base), "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2",
                    "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_SUBMIT_DIR": ROOT, **env}
            full = {k: v for k, v in full.items() if v is not None}
            return subprocess.run(["bash", os.path.join(ROOT, script), *args], cwd=tmp_path, env=full,
                                  capture_output=True, text=True, timeout=60)

    c = Cluster()
    c.base, c.tmp = base, tmp_path
    return c


def commands(out):
    """The printed commands of a dry run, as argument lists."""
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]


def module_args(cmd, module):
    """The arguments after `-m module` in cmd, or None if cmd does not run module."""
    for i in range(len(cmd) - 1):
        if cmd[i] == "-m" and cmd[i + 1] == module:
            return cmd[i + 2:]
    return None


def find(cmds, module):
    found = [a for a in (module_args(c, module) for c in cmds) if a is not None]
    assert found, f"no `-m {module}` among:\n" + "\n".join(map(shlex.join, cmds))
    return found


def value(args, flag):
    return args[args.index(flag) + 1]


RENDEZVOUS = ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "torchrun", "--nnodes=2",
              "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=node1:29500", "--rdzv_id=4242"]


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_shell_syntax_and_strict_mode(path):
    out = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if not path.endswith("common.sh"):  # common.sh is sourced by scripts that set strict mode themselves
        assert "set -euo pipefail" in open(path).read()


def test_speedrun_dry_run(cluster):
    out = cluster.run("runs/speedrun.sh", NANOCHAT_PYTHON=None)  # no Python chosen: setup_env.sh makes .venv
    cmds = commands(out)
    flat = [shlex.join(c) for c in cmds]
    order = ["runs/setup_env.sh", "nanochat.report reset", "nanochat.dataset --dataset climbmix -n 8", "scripts.tok_train",
             "scripts.tok_eval", "scripts.base_train", "scripts.base_eval", "scripts.chat_sft", "scripts.chat_eval",
             "nanochat.report generate"]
    positions = [next(i for i, c in enumerate(flat) if key in c) for key in order]
    assert positions == sorted(positions), flat
    assert "torch>=2.11" in flat[0]
    # the rest of the shards, derived from the horizon: 4 x 202,549,760 params x 1.2 / 61M tokens per shard
    assert any(c.endswith("nanochat.dataset --dataset climbmix -n 16") for c in flat)
    assert "data: climbmix, s20 at ratio 4 reads 810200000 tokens -> 16 train shards" in out.stdout
    data_dir = str(cluster.base / "base_data" / "climbmix")
    assert all(value(a, "--data-dir") == data_dir for m in ("scripts.tok_train", "scripts.base_train", "scripts.base_eval")
               for a in find(cmds, m))
    train = find(cmds, "scripts.base_train")[0]
    assert value(train, "--size") == "20" and value(train, "--model-tag") == "s20"
    assert "--num-iterations" not in train and "--target-flops" not in train  # the recipe defaults: ratio 4
    launch = next(c for c in cmds if module_args(c, "scripts.base_train") is not None)
    assert launch[:3] == ["torchrun", "--standalone", "--nproc_per_node=8"]
    assert value(find(cmds, "scripts.base_eval")[0], "--recur") == "1,2,4,8,16"
    assert value(find(cmds, "scripts.chat_eval")[0], "--source") == "sft"
    assert not any(module_args(c, "scripts.chat_rl") is not None for c in cmds)


def test_speedrun_options(cluster):
    data = cluster.tmp / "shards"
    data.mkdir()
    for name in ("a.parquet", "b.parquet"):
        (data / name).write_bytes(b"")
    cmds = commands(cluster.run("runs/speedrun.sh", NPROC="4", RL="1", DATA_DIR=str(data), WANDB_RUN="try 1",
                                DEVICE_BATCH_SIZE="16"))
    assert not any(module_args(c, "nanochat.dataset") is not None for c in cmds)  # local shards: no download
    train = find(cmds, "scripts.base_train")[0]
    assert value(train, "--data-dir") == str(data) and value(train, "--run") == "try 1"
    assert value(train, "--device-batch-size") == "16"
    assert all(c[:3] == ["torchrun", "--standalone", "--nproc_per_node=4"] for c in cmds if c[0] == "torchrun")
    assert find(cmds, "scripts.chat_rl")
    assert ["--source", "rl", "-i", "GSM8K"] == find(cmds, "scripts.chat_eval")[1][:4]


def test_speedrun_fineweb_edu(cluster):
    out = cluster.run("runs/speedrun.sh", DATASET="fineweb-edu", SIZE="12")
    cmds = commands(out)
    # s12: 4 x 82,994,688 params = 331,978,752 tokens x 1.2 / 55M tokens per FineWeb-Edu shard -> 8 shards
    assert [module_args(c, "nanochat.dataset") for c in cmds if module_args(c, "nanochat.dataset") is not None] == \
        [["--dataset", "fineweb-edu", "-n", "8"], ["--dataset", "fineweb-edu", "-n", "8"]]
    assert "data: fineweb-edu, s12 at ratio 4 reads 331979328 tokens -> 8 train shards" in out.stdout
    assert value(find(cmds, "scripts.base_train")[0], "--data-dir") == str(cluster.base / "base_data" / "fineweb-edu")


@pytest.mark.parametrize("env, message", [
    ({"DATA_DIR": "/nonexistent/shards"}, "parquet shards"),
    ({"NPROC": "eight"}, "NPROC='eight'"),
    ({"SIZE": "0"}, "SIZE='0'"),
    ({"DATASET": "c4"}, "DATASET='c4': expected climbmix or fineweb-edu"),
])
def test_speedrun_bad_input_fails_clearly(cluster, env, message):
    out = cluster.run("runs/speedrun.sh", **env)
    assert out.returncode != 0 and "error: " in out.stderr and message in out.stderr, out.stderr
    assert not any(module_args(shlex.split(l[2:]), "scripts.base_train") for l in out.stdout.splitlines() if l.startswith("+ "))


def test_isoflop_cpu_dry_run(cluster):
    out = cluster.run("runs/isoflop_cpu.sh", SEEDS="1 2", DEPTH="6", BUDGET="2e12",
                      DATA_DIR=str(cluster.base / "base_data" / "climbmix"))
    assert out.returncode == 0, out.stderr
    cmds = commands(out)
    trains = find(cmds, "scripts.base_train")
    assert [value(a, "--model-tag") for a in trains] == ["loop_s1", "gpt6_s1", "loop_s2", "gpt6_s2"]
    assert all(value(a, "--target-flops") == "2e12" for a in trains)  # equal training FLOPs by construction
    assert value(trains[1], "--arch") == "gpt" and value(trains[1], "--n-recur") == "6"
    assert [value(a, "--recur") for a in find(cmds, "scripts.base_eval")] == ["1,2,4,8,16"] * 2
    table = next(c for c in cmds if "dev/isoflop_table.py" in c)
    assert value(table, "--looped") == "loop_s1,loop_s2" and value(table, "--gpt") == "gpt6_s1,gpt6_s2"
    bad = cluster.run("runs/isoflop_cpu.sh", SEEDS="x")
    assert bad.returncode != 0 and "SEEDS: 'x'" in bad.stderr


def test_scaling_laws_dry_run(cluster):
    cluster.make("base_checkpoints", "s8_f1e18")  # done already: skipped
    out = cluster.run("runs/scaling_laws.sh", SIZES="4 8", BUDGETS="1e18 2.5e18", NPROC="2")
    cmds = commands(out)
    trains = find(cmds, "scripts.base_train")
    tags = [value(a, "--model-tag") for a in trains]
    assert tags == ["s4_f1e18", "d4_f1e18", "d8_f1e18", "s4_f2.5e18", "d4_f2.5e18", "s8_f2.5e18", "d8_f2.5e18"]
    assert "skip s8_f1e18" in out.stdout
    for args, tag in zip(trains, tags):
        assert value(args, "--arch") == ("gpt" if tag[0] == "d" else "looped")
        assert value(args, "--size") == tag[1:].split("_")[0]
        assert value(args, "--target-flops") == tag.split("_f")[1]
    assert [value(a, "--model-tag") for a in find(cmds, "scripts.base_eval")] == tags
    assert all(c[:3] == ["torchrun", "--standalone", "--nproc_per_node=2"] for c in cmds if c[0] == "torchrun")
    assert cmds[-1][:2] == ["python", "dev/plot_scaling.py"]


@pytest.mark.parametrize("env, message", [
    ({"BUDGETS": "lots"}, "BUDGETS: 'lots'"),
    ({"ARCHS": "rnn"}, "ARCHS: 'rnn'"),
    ({"VENV": "/nonexistent/venv"}, "no virtual environment"),
])
def test_scaling_laws_bad_input_fails_clearly(cluster, env, message):
    out = cluster.run("runs/scaling_laws.sh", **env)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_scaling_laws_needs_a_tokenizer(cluster):
    os.remove(cluster.base / "tokenizer" / "tokenizer.json")
    out = cluster.run("runs/scaling_laws.sh")
    assert out.returncode != 0 and "tokenizer.json is missing" in out.stderr and "scripts.tok_train" in out.stderr


# what each sbatch script needs besides the tokenizer, its module and expected arguments
SBATCH_CASES = {
    "base_train": ([], "scripts.base_train", {"--size": "20"}),
    "chat_sft": ([("base_checkpoints", "s20")], "scripts.chat_sft", {"--model-tag": "s20"}),
    "chat_rl": ([("chatsft_checkpoints", "s20")], "scripts.chat_rl", {"--model-tag": "s20"}),
    "chat_eval": ([("chatsft_checkpoints", "s20")], "scripts.chat_eval", {"--source": "sft", "--model-tag": "s20"}),
    "scaling_laws": ([], "scripts.base_train", {"--target-flops": "1e18"}),
}


@pytest.mark.parametrize("name", SBATCH)
def test_sbatch_dry_run_launches_torchrun_rendezvous(cluster, name):
    needs, module, expected = SBATCH_CASES[name]
    for folder, tag in needs:
        cluster.make(folder, tag)
    cmds = commands(cluster.run(f"slurm/{name}.sbatch", SIZES="8", BUDGETS="1e18"))
    launches = [c for c in cmds if module_args(c, module) is not None]
    assert launches
    for cmd in launches:
        assert cmd[:len(RENDEZVOUS)] == RENDEZVOUS, cmd
    args = module_args(launches[0], module)
    for flag, v in expected.items():
        assert value(args, flag) == v


@pytest.mark.parametrize("name", SBATCH)
def test_sbatch_checks_inputs(cluster, name):
    out = cluster.run(f"slurm/{name}.sbatch", NANOCHAT_BASE_DIR=None)
    assert out.returncode != 0 and "NANOCHAT_BASE_DIR is not set" in out.stderr, out.stderr
    out = cluster.run(f"slurm/{name}.sbatch", SLURM_JOB_ID=None)
    assert out.returncode != 0 and "not inside a SLURM job" in out.stderr, out.stderr
    needs, _, _ = SBATCH_CASES[name]
    if needs:  # the checkpoint of the previous stage is missing
        out = cluster.run(f"slurm/{name}.sbatch")
        assert out.returncode != 0 and f"no checkpoint in {cluster.base / needs[0][0] / 's20'}" in out.stderr, out.stderr
    os.remove(cluster.base / "tokenizer" / "tokenizer.json")
    for folder, tag in needs:
        cluster.make(folder, tag)
    out = cluster.run(f"slurm/{name}.sbatch")
    assert out.returncode != 0 and "tokenizer.json is missing" in out.stderr, out.stderr


def test_chat_eval_sbatch_options(cluster):
    cluster.make("chatrl_checkpoints", "d20")
    cmds = commands(cluster.run("slurm/chat_eval.sbatch", SOURCE="rl", MODEL_TAG="d20", TASKS="GSM8K", RECUR="1,4"))
    args = find(cmds, "scripts.chat_eval")[0]
    assert value(args, "--source") == "rl" and value(args, "-i") == "GSM8K" and value(args, "--recur") == "1,4"
    assert "SOURCE=base" in cluster.run("slurm/chat_eval.sbatch", SOURCE="base").stderr


def test_sbatch_dry_run_needs_no_scontrol(cluster):
    out = cluster.run("slurm/base_train.sbatch", scontrol=False, SLURM_JOB_NODELIST="gpu[07-08]")
    launch = next(c for c in commands(out) if module_args(c, "scripts.base_train") is not None)
    assert "--rdzv_endpoint=gpu07:29500" in launch


def test_scripts_use_the_given_python(cluster):
    out = cluster.run("runs/speedrun.sh")
    assert f"python: NANOCHAT_PYTHON={sys.executable}" in out.stdout
    assert not any("setup_env.sh" in shlex.join(c) for c in commands(out))  # a chosen Python is used as it is


def activate(tmp_path, **env):
    """Source runs/common.sh in an empty folder (no .venv) and run activate_venv for real."""
    script = f". {shlex.quote(os.path.join(ROOT, 'runs', 'common.sh'))}; activate_venv; python -c 'import sys; print(sys.executable)'"
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, env={**clean_env(), **env}, capture_output=True,
                          text=True, timeout=60)


def test_activate_venv_outside_a_venv(tmp_path):
    out = activate(tmp_path, NANOCHAT_PYTHON=sys.executable)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"python: NANOCHAT_PYTHON={sys.executable}", sys.executable]
    out = activate(tmp_path)
    assert out.returncode != 0 and "no virtual environment with nanochat" in out.stderr
    assert "pip install -e '.[dev]'" in out.stderr and "runs/setup_env.sh" in out.stderr
    out = activate(tmp_path, NANOCHAT_PYTHON=str(tmp_path / "nope"))
    assert out.returncode != 0 and "is not an executable" in out.stderr


# -----------------------------------------------------------------------------
# flag drift: every flag a shell script passes must exist in the script it calls

@pytest.fixture(scope="module")
def all_dry_run_commands(tmp_path_factory):
    """Every command printed by every dry run, with the options that add flags switched on."""
    tmp = tmp_path_factory.mktemp("drift")
    cmds = []
    for k, (script, env) in enumerate([("runs/speedrun.sh", dict(RL="1", WANDB_RUN="w", DEVICE_BATCH_SIZE="8")),
                        ("runs/speedrun.sh", dict(DATA_DIR="SHARDS")),
                        ("runs/scaling_laws.sh", dict(SIZES="4", BUDGETS="1e18", DATA_DIR="SHARDS", DEVICE_BATCH_SIZE="8")),
                        ("slurm/base_train.sbatch", dict(MODEL_TAG="s20", DATA_DIR="SHARDS", RESUME="1", WANDB_RUN="w")),
                        ("slurm/chat_sft.sbatch", dict(WANDB_RUN="w")),
                        ("slurm/chat_rl.sbatch", dict(WANDB_RUN="w")),
                        ("slurm/chat_eval.sbatch", dict(TASKS="GSM8K", RECUR="1,4")),
                        ("slurm/scaling_laws.sbatch", dict(SIZES="4", BUDGETS="1e18")),
                        ("runs/isoflop_cpu.sh", dict(DATA_DIR="SHARDS", SEEDS="1 2"))]):
        base, shards = tmp / f"base{k}", tmp / "shards"
        for d in (base / "tokenizer", shards, *(base / f / "s20" / "step_000001" for f in
                                                ("base_checkpoints", "chatsft_checkpoints"))):
            d.mkdir(parents=True, exist_ok=True)
        (base / "tokenizer" / "tokenizer.json").write_bytes(b"")
        (base / "base_data" / "climbmix").mkdir(parents=True, exist_ok=True)
        for d in (shards, base / "base_data" / "climbmix"):
            for name in ("a.parquet", "b.parquet"):
                (d / name).write_bytes(b"")
        for f in ("base_checkpoints", "chatsft_checkpoints"):
            (base / f / "s20" / "step_000001" / "meta.json").write_text("{}")
        env = {k: (str(shards) if v == "SHARDS" else v) for k, v in env.items()}
        bin_dir = tmp / "bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "scontrol").write_text("#!/bin/sh\necho node1\n")
        (bin_dir / "scontrol").chmod(0o755)
        full = {**clean_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "DRY_RUN": "1", "NANOCHAT_BASE_DIR": str(base),
                "SLURM_JOB_ID": "1", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node1", "SLURM_SUBMIT_DIR": ROOT,
                "NANOCHAT_PYTHON": sys.executable, **env}
        out = subprocess.run(["bash", os.path.join(ROOT, script)], cwd=tmp, env=full, capture_output=True, text=True, timeout=60)
        cmds += commands(out)
    return cmds


def called_programs(cmds):
    """{(program to --help, its args as run)}: python -m X, python file.py, and torchrun itself."""
    calls = {}
    for cmd in cmds:
        for i, tok in enumerate(cmd):
            if tok == "-m" and i + 1 < len(cmd) and cmd[0] in ("python", "torchrun", "srun"):
                calls.setdefault(cmd[i + 1], []).append(cmd[i + 2:])
                if "torchrun" in cmd[:i]:
                    calls.setdefault("torch.distributed.run", []).append(cmd[cmd.index("torchrun") + 1:i])
                break
        else:
            if cmd[0] == "python" and cmd[1].endswith(".py"):
                calls.setdefault(cmd[1], []).append(cmd[2:])
    return calls


def passed_flags(arg_lists):
    return {a.split("=")[0] for args in arg_lists for a in args if re.match(r"^--?[A-Za-z]", a)}


def help_text(program):
    cmd = [sys.executable, program, "--help"] if program.endswith(".py") else [sys.executable, "-m", program, "--help"]
    out = subprocess.run(cmd, cwd=ROOT, env={**clean_env(), "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"{shlex.join(cmd)} failed:\n{out.stderr[-2000:]}"
    return out.stdout


DRIFT_PROGRAMS = ["scripts.tok_train", "scripts.tok_eval", "scripts.base_train", "scripts.base_eval", "scripts.chat_sft",
                  "scripts.chat_rl", "scripts.chat_eval", "nanochat.dataset", "nanochat.report", "dev/plot_scaling.py",
                  "dev/isoflop_table.py", "torch.distributed.run"]


@pytest.mark.slow
@pytest.mark.parametrize("program", DRIFT_PROGRAMS)
def test_shell_scripts_pass_only_flags_that_exist(all_dry_run_commands, program):
    calls = called_programs(all_dry_run_commands)
    assert program in calls, f"no dry run calls {program}: {sorted(calls)}"
    flags = passed_flags(calls[program])
    if not flags:
        return  # e.g. `python -m nanochat.report reset`: positional only
    if program.startswith("scripts.") and not os.path.exists(os.path.join(ROOT, *program.split(".")) + ".py"):
        pytest.skip(f"{program.replace('.', '/')}.py does not exist yet: cannot check {sorted(flags)}")
    known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text(program)))
    assert flags <= known, f"{program} does not accept {sorted(flags - known)} (its --help lists {sorted(known)})"


def test_every_called_program_is_checked(all_dry_run_commands):
    assert set(called_programs(all_dry_run_commands)) <= set(DRIFT_PROGRAMS) | {"runs/setup_env.sh"}


# -----------------------------------------------------------------------------
# dev/plot_scaling.py

def load_plot_scaling():
    spec = importlib.util.spec_from_file_location("plot_scaling", os.path.join(ROOT, "dev", "plot_scaling.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(base, tag, arch, size, step, val_bpb, flops_per_token, total_batch=-1):
    d = base / "base_checkpoints" / tag / f"step_{step:06d}"
    d.mkdir(parents=True)
    meta = {"step": step, "model_config": {"arch": arch}, "user_config": {"size": size, "total_batch_size": total_batch},
            "val_bpb": val_bpb, "flops_per_token": flops_per_token, "eval_r": 4 if arch == "looped" else 1}
    (d / "meta.json").write_text(json.dumps(meta))


def test_plot_scaling_two_runs(tmp_path, capsys):
    plot_scaling = load_plot_scaling()
    base = tmp_path / "base"
    fake_run(base, "s4_f1e18", "looped", 4, 100, 1.10, 2e8)
    fake_run(base, "d4_f1e18", "gpt", 4, 200, 1.20, 1e8, total_batch=1024)
    (base / "base_eval").mkdir()
    with open(base / "base_eval" / "s4_f1e18_step000100.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["r", "core", "val_bpb"], [1, 0.05, 1.3], [4, 0.12, 1.1]])
    runs = {r["tag"]: r for r in plot_scaling.collect_runs(str(base))}
    assert runs["s4_f1e18"]["flops"] == pytest.approx(2e8 * 100 * 524288)  # -1: base_train's default batch
    assert runs["d4_f1e18"]["flops"] == pytest.approx(1e8 * 200 * 1024)
    assert runs["s4_f1e18"]["core"] == pytest.approx(0.12) and runs["d4_f1e18"]["core"] is None  # the row at eval r = 4
    out = tmp_path / "scaling.png"
    plot_scaling.main(["--base-dir", str(base), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "s4_f1e18" in capsys.readouterr().out


def test_plot_scaling_without_runs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no base checkpoints matching '\\*' under"):
        load_plot_scaling().main(["--base-dir", str(tmp_path), "--out", str(tmp_path / "x.png")])


def test_the_installed_command_runs_the_scripts_from_any_directory(tmp_path):
    """`nanochat <command>` (pyproject's console script) imports the installed scripts, so it works
    outside the repository; an unknown command is one line and exit code 2."""
    import shutil
    command = shutil.which("nanochat", path=os.path.dirname(sys.executable))
    assert command, "no `nanochat` next to the interpreter: reinstall with pip install -e '.[dev]'"
    run = lambda *argv: subprocess.run([command, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    listed = run("--help")
    assert listed.returncode == 0 and "serve" in listed.stdout and "python -m scripts.chat_web" in listed.stdout
    flags = run("serve", "--help")
    assert flags.returncode == 0 and "--cache-memory" in flags.stdout
    wrong = run("bogus")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "unknown command 'bogus'" in wrong.stderr
