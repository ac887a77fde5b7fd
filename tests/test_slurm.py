"""The sbatch scripts on a real SLURM: a one-node cluster on localhost (2 CPUs) started here from
Debian's slurm-wlm and munge (.ci/run installs them), then slurm/base_train.sbatch with 2 tasks
(torchrun's c10d rendezvous under srun, gloo on CPU, a toy size) and slurm/chat_eval.sbatch on the
checkpoint it wrote. Each job must finish and write its outputs. The scripts ask for GPUs (and
base_train for 2 nodes) in their #SBATCH lines; on this one CPU node `--nodes=1 --gpus-per-node=0`
override that and GPUS_PER_NODE=2 makes torchrun start two CPU processes. Skipped without the SLURM and munge daemons or without root."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import SAMPLE_DATA_DIR
from tests.test_chat import make_chat_data
from tests.test_web import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")
pytestmark = pytest.mark.skipif(not all(map(os.path.exists, DAEMONS)) or os.geteuid() != 0,
                                reason="needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm munge)")

CONF = """ClusterName=nanochat-ci
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
NodeName={host} CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def start_munge():
    """munged as the munge user, unless one answers already (its key comes with the package)."""
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    if not os.path.exists("/etc/munge/munge.key"):
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/mungekey", "--create"], check=True)
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    deadline = time.time() + 10
    while subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
        assert time.time() < deadline, "munged did not start"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tokenizer):
    """(env for sbatch, NANOCHAT_BASE_DIR): slurmctld and slurmd in the foreground of this test's
    processes (killed at the end), a base dir with the tokenizer and chat_data."""
    start_munge()
    work = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool"):
        (work / d).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = work / "slurm.conf"
    conf.write_text(CONF.format(host=host, dir=work, ctld_port=free_port(), d_port=free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [subprocess.Popen([path, "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT) for path in DAEMONS[:2]]
    try:
        deadline = time.time() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout:
            logs = [(work / f).read_text()[-2000:] for f in ("slurmctld.log", "slurmd.log") if (work / f).exists()]
            assert time.time() < deadline and all(d.poll() is None for d in daemons), "the cluster did not start:\n" + \
                "\n".join(logs)
            time.sleep(0.5)
        base = work / "base"
        tokenizer.save(str(base / "tokenizer"))
        make_chat_data(str(base / "chat_data"))
        yield {**env, "NANOCHAT_BASE_DIR": str(base), "NANOCHAT_PYTHON": sys.executable, "GPUS_PER_NODE": "2",
               "MASTER_PORT": str(free_port())}, base
    finally:
        for d in daemons:
            d.terminate()
            d.wait(timeout=30)


def sbatch(env, script, *args, **settings):
    """Submit a job from the repository root and wait for it: (exit code of sbatch --wait, its log)."""
    out = env["NANOCHAT_BASE_DIR"] + f"/{os.path.basename(script)}.out"
    proc = subprocess.run(["sbatch", "--wait", "--nodes=1", "--gpus-per-node=0", f"--output={out}", script, *args], cwd=ROOT,
                          env={**env, **settings}, capture_output=True, text=True, timeout=300)
    log = open(out).read() if os.path.exists(out) else ""
    return proc.returncode, proc.stdout + proc.stderr + log


def test_base_train_then_chat_eval_on_a_real_cluster(cluster):
    env, base = cluster
    code, log = sbatch(env, "slurm/base_train.sbatch", "--max-seq-len", "64", "--device-batch-size", "2",
                       "--total-batch-size", "256", "--eval-tokens", "256", "--sample-every", "-1", "--set", "max_r=6",
                       "--num-iterations", "2", "--eval-every", "-1", "--core-metric-every", "-1", "--device-type", "cpu",
                       SIZE="1", MODEL_TAG="s1", DATA_DIR=SAMPLE_DATA_DIR)
    assert code == 0, log[-4000:]
    assert "| 2 GPUs per node" in log and "world size 2" in log and "x 64 x 2 ranks" in log, log[-3000:]
    assert os.path.exists(base / "base_checkpoints" / "s1" / "step_000002" / "model.pt"), log[-3000:]
    shutil.copytree(base / "base_checkpoints" / "s1", base / "chatsft_checkpoints" / "s1")  # evaluated as a chat model
    code, log = sbatch(env, "slurm/chat_eval.sbatch", "--max-problems", "2", "--device-type", "cpu", "--max-new-tokens", "4",
                       SOURCE="sft", MODEL_TAG="s1", TASKS="ARC-Easy,GSM8K")
    assert code == 0, log[-4000:]
    assert os.path.exists(base / "chat_eval" / "sft_s1_step000002.csv"), log[-3000:]
