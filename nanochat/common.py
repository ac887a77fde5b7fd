"""
Small shared utilities: rank-0 printing, the artifact directory, device and dtype
detection, and torchrun (distributed) setup/teardown.

Machine facts come from the environment only:
  NANOCHAT_BASE_DIR  where tokenizers, data and checkpoints live (default ~/.cache/nanochat)
  NANOCHAT_DTYPE     override the compute dtype: bfloat16 | float16 | float32
"""

import os
import time

import torch
import torch.distributed as dist


# -----------------------------------------------------------------------------
# ranks and printing

def get_dist_info():
    """(is_ddp, rank, local_rank, world_size) from the torchrun environment."""
    if all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def print0(*args, **kwargs):
    """print on rank 0 only, so 8 ranks don't print 8 copies."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def rank_world():
    """(rank, world size) of the initialised process group, else (0, 1)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def centered_accuracy(accuracy, baseline):
    """(acc - b) / (1 - b), b the random-guess accuracy as a fraction: 0 at chance, 1 at
    perfect (DCLM's CORE and nanochat's ChatCORE both average it over tasks)."""
    return (accuracy - baseline) / (1 - baseline)


def format_duration(seconds):
    """42s, 3.5m or 2.1h: the unit an ETA is read in."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def mib(n):
    """A byte count for progress lines."""
    return f"{n / 2**20:.1f} MiB"


class Progress:
    """Progress of a loop of known length: `update(n)` after each piece of work prints
    "label done/total (pct) | elapsed | eta" at most every `every` seconds (the caller reports the
    end itself). The ETA assumes the remaining items take the mean time per item so far."""

    def __init__(self, total, label, every=10.0, log=print0, unit=str):
        self.total, self.label, self.every, self.log, self.unit = total, label, every, log, unit
        self.done, self.t0 = 0, time.time()
        self.shown = self.t0

    def line(self):
        elapsed = time.time() - self.t0
        if not self.total:  # an unknown length (a download without content-length): no percentage, no ETA
            return f"{self.label} {self.unit(self.done)} | {format_duration(elapsed)} elapsed"
        eta = format_duration(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        return (f"{self.label} {self.unit(self.done)}/{self.unit(self.total)} ({100 * self.done / self.total:.0f}%)"
                f" | {format_duration(elapsed)} elapsed | eta {eta}")

    def update(self, n=1, extra=""):
        self.done += n
        now = time.time()
        if self.log is not None and now - self.shown >= self.every:
            self.shown = now
            self.log(self.line() + extra)


# -----------------------------------------------------------------------------
# artifacts

def get_base_dir():
    """Directory for tokenizer, data shards, checkpoints and reports (created on demand)."""
    base = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    os.makedirs(base, exist_ok=True)
    return base


# -----------------------------------------------------------------------------
# device and dtype

def autodetect_device_type():
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
           "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}


def _pick_compute_dtype():
    """One global compute dtype: bf16 on CUDA SM80+ (fast and range-safe), fp32 elsewhere
    (so CPU equivalence tests can be tight). NANOCHAT_DTYPE overrides."""
    override = os.environ.get("NANOCHAT_DTYPE")
    if override:
        if override not in _DTYPES:
            raise ValueError(f"NANOCHAT_DTYPE={override!r}: expected one of {sorted(_DTYPES)}")
        return _DTYPES[override], f"NANOCHAT_DTYPE={override}"
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        return torch.bfloat16, "CUDA SM80+ has fast bf16"
    return torch.float32, "no CUDA SM80+ device: fp32"


COMPUTE_DTYPE, COMPUTE_DTYPE_REASON = _pick_compute_dtype()


# -----------------------------------------------------------------------------
# distributed

def compute_init(device_type=None, seed=42):
    """Set up the process: seeds, precision flags, and torchrun's process group if present.
    NCCL on CUDA, gloo on CPU, so the same distributed code runs in CPU tests.
    Returns (is_ddp, rank, local_rank, world_size, device)."""
    device_type = device_type or autodetect_device_type()
    if device_type not in ("cuda", "cpu", "mps"):
        raise ValueError(f"device_type={device_type!r}: expected cuda, cpu or mps")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device_type='cuda' but torch sees no CUDA device")
    torch.manual_seed(seed)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (rare: we compute in bf16) may use tf32
        torch.backends.cudnn.allow_tf32 = True
    is_ddp, rank, local_rank, world_size = get_dist_info()
    if is_ddp:
        if device_type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            device = torch.device(device_type)
            dist.init_process_group(backend="gloo")
        dist.barrier()
    else:
        device = torch.device(device_type)
    print0(f"device: {device} | world size {world_size} | compute dtype {COMPUTE_DTYPE} ({COMPUTE_DTYPE_REASON})")
    return is_ddp, rank, local_rank, world_size, device


def compute_cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def synchronize(device):
    """Wait for queued device work (a no-op on CPU), for honest timings."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DummyWandb:
    """Stands in for a wandb run when no run name is given."""
    def log(self, *args, **kwargs):
        pass

    def finish(self):
        pass
