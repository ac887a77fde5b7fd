"""
Training-loop helpers shared by the training scripts: the lr and momentum schedules, the
device's bf16 peak for MFU, a loss log that survives resume and draws the loss curve, the
one check every stage makes before it resumes, the recipe a later stage starts from, and the
weights a curriculum's next stage starts from.
"""

import csv
import dataclasses
import math
import os

from nanochat.errors import UserError, user_input
from nanochat.optim import OptimizerSpec, optimizer_from_meta
from nanochat.recurrence import RecurrenceSpec, recurrence_from_meta

# dense bf16 peak FLOP/s by device name (H100 SXM; H200 has the same compute)
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


# flags that never change what a run computes: a resumed run may give them other values
RESUME_FREE = ("resume", "run", "device_type", "compile", "data_dir", "eval_every", "eval_tokens", "sample_every",
               "core_metric_every", "core_metric_max_per_task", "eval_bundle", "save_every", "model_tag",
               "chat_eval_every", "chat_eval_problems", "chat_eval_max_tokens", "eval_examples", "eval_samples",
               "set")  # --set's effect is compared where it lands: the specs and the model config


def check_resume(args, meta, model_config, checkpoint_dir, recurrence, optimizer):
    """Refuse to resume when a flag that decides the model, the schedule, the data order or
    the r draws differs from the checkpoint's (every flag but RESUME_FREE), when the run's
    recurrence or optimizer spec differs from the saved one (what --set changes; a run saved
    before --set existed is read through its flags), or when the same flags built another
    model (another tokenizer, or the code changed): one line naming each difference and the
    flags that continue the saved run. model_config: this run's, as a dict."""
    saved = meta.get("user_config", {})

    changed = [k for k in vars(args) if k not in RESUME_FREE and saved.get(k) != getattr(args, k)]
    if changed:
        flags = [("--" + k.replace("_", "-"), getattr(args, k), saved.get(k)) for k in changed]
        raise UserError(f"--resume: {', '.join(f'{f} is {here!r} here but {then!r}' for f, here, then in flags)} "
                        f"in {checkpoint_dir}; rerun with {' '.join(f'{f} {then}' for f, _, then in flags)} "
                        f"(or start a new --model-tag)")
    specs = [(name, dataclasses.asdict(here), dataclasses.asdict(read(meta)))
             for name, here, read in (("recurrence", recurrence, recurrence_from_meta),
                                      ("optimizer", optimizer, optimizer_from_meta))]
    fields = [(name, f, here[f], then[f]) for name, here, then in specs for f in here if here[f] != then[f]]
    if fields:
        raise UserError(f"--resume: {', '.join(f'{name} {f} is {a!r} here but {b!r}' for name, f, a, b in fields)} "
                        f"in {checkpoint_dir}; rerun with {' '.join(f'--set {f}={b}' for _, f, _, b in fields)} "
                        f"(or start a new --model-tag)")
    differ = {k: (v, meta["model_config"].get(k)) for k, v in model_config.items() if meta["model_config"].get(k) != v}
    if differ:
        raise UserError(f"--resume: the model differs from the one in {checkpoint_dir} in "
                        + ", ".join(f"{k} ({here!r} here, {was!r} there)" for k, (here, was) in differ.items())
                        + ": use the tokenizer it was trained with, or start a new --model-tag")


def load_init_weights(model, source, model_config, device):
    """Load another base checkpoint's weights into a fresh run: the next stage of a curriculum
    (say, bigger tables after smaller ones), whose optimizer, step and data start over. source:
    a tag under $NANOCHAT_BASE_DIR/base_checkpoints or a checkpoint folder. Refused in one line
    when the model differs (only the context length may: the rotary tables are rebuilt) or when
    the source's tokenizer, found beside its base_checkpoints folder, is not this run's.
    model_config: this run's, as a dict. Returns (folder, step) of the weights loaded."""
    from nanochat.checkpoint_manager import find_checkpoint_dir, load_file, load_meta
    from nanochat.common import get_base_dir
    from nanochat.tokenizer import TOKENIZER_FILE
    folder = source if os.sep in source or os.path.isdir(source) else find_checkpoint_dir("base", source)
    step, meta = load_meta(folder)
    differ = {k: (v, meta["model_config"].get(k)) for k, v in model_config.items()
              if k != "sequence_len" and meta["model_config"].get(k) != v}
    if differ:
        raise UserError(f"--init-from {source}: the model differs from the one in {folder} in "
                        + ", ".join(f"{k} ({here!r} here, {was!r} there)" for k, (here, was) in differ.items())
                        + ": pass the flags it was trained with")
    theirs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(folder))), "tokenizer", TOKENIZER_FILE)
    ours = os.path.join(get_base_dir(), "tokenizer", TOKENIZER_FILE)
    if os.path.exists(theirs) and os.path.exists(ours) and not _same_file(theirs, ours):
        raise UserError(f"--init-from {source}: {theirs} is not this run's tokenizer ({ours}); copy it here "
                        f"before training, since token ids must mean the same in both runs")
    model.load_state_dict(load_file(folder, step, "model.pt", device))
    return folder, step


def _same_file(a, b):
    with open(a, "rb") as f, open(b, "rb") as g:
        return f.read() == g.read()


def later_stage_specs(meta, sets):
    """(RecurrenceSpec, OptimizerSpec) that SFT and RL train with: the checkpoint's, without
    weight decay (a short fine-tune), with the stage's --set values (nanochat.flags) over both;
    a value a spec refuses ends the run with one line naming it."""
    with user_input():
        recurrence = dataclasses.replace(recurrence_from_meta(meta), **sets[RecurrenceSpec])
        optimizer = dataclasses.replace(optimizer_from_meta(meta), **{"weight_decay": 0.0, **sets[OptimizerSpec]})
    return recurrence, optimizer


def gpu_peak_flops(device):
    """bf16 peak of a known CUDA device, else None (no MFU is reported then)."""
    if device.type != "cuda":
        return None
    import torch
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def lr_multiplier(step, num_iterations, warmup_steps, warmdown_ratio, final_lr_frac):
    """Linear warmup over warmup_steps, constant, then linear warmdown over the last
    warmdown_ratio of the steps down to final_lr_frac at the last step (nanochat master)."""
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step < num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / max(warmdown, 1)
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step, num_iterations=None, warmdown_ratio=0.0):
    """Muon momentum (nanochat master): 0.85 -> 0.97 over the first 400 steps (a short
    memory while the gradients change fast), then down to 0.90 across the warmdown, when
    num_iterations is given (so the last steps follow the latest gradients)."""
    if step < 400:
        return 0.85 + 0.12 * step / 400
    warmdown = round(warmdown_ratio * num_iterations) if num_iterations else 0
    start = (num_iterations or 0) - warmdown
    if warmdown and step >= start:
        return 0.97 - 0.07 * min((step - start) / warmdown, 1.0)
    return 0.97


def weight_decay_multiplier(step, num_iterations):
    """Cosine from 1 to 0 over the run (nanochat master), on top of the lr multiplier."""
    return 0.5 * (1 + math.cos(math.pi * min(step / num_iterations, 1.0)))


def apply_schedule(optimizer, lrm, step, num_iterations=None, warmdown_ratio=0.0):
    """Set this step's lr (initial_lr x multiplier) on every group, and Muon's momentum; with
    num_iterations also Muon's weight decay (its initial value x the cosine multiplier)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = muon_momentum(step, num_iterations, warmdown_ratio)
            if num_iterations:
                group.setdefault("initial_weight_decay", group["weight_decay"])
                group["weight_decay"] = group["initial_weight_decay"] * weight_decay_multiplier(step, num_iterations)


class LossLog:
    """Per-step training records, eval records, an EMA of the loss and wall time; its state is
    saved in checkpoints, so a resumed run continues the same curve and the same smoothing."""

    def __init__(self, beta=0.9):
        self.beta, self.ema, self.n = beta, 0.0, 0
        self.steps, self.evals = [], []  # (step, loss, lrm, r, dt) and (step, val_bpb)
        self.train_seconds = 0.0

    def record_step(self, step, loss, lrm, r, dt):
        """Log one optimizer step; the debiased EMA of the loss. A non-finite loss ends the run here
        (the weights it produced are already bad; the last checkpoint saved before is not)."""
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss} (r={r}); the last checkpoint is intact")
        self.ema = self.beta * self.ema + (1 - self.beta) * loss
        self.n += 1
        if self.n > 5:  # the first steps compile and warm up: not part of the time per step
            self.train_seconds += dt
        self.steps.append((step, loss, lrm, r, dt))
        return self.ema / (1 - self.beta ** self.n)  # debiased

    def record_eval(self, step, val_bpb):
        self.evals.append((step, val_bpb))

    def mean_step_seconds(self):
        timed = self.steps[5:] if len(self.steps) > 5 else self.steps
        return sum(s[4] for s in timed) / max(len(timed), 1)

    def state_dict(self):
        return {"ema": self.ema, "n": self.n, "steps": self.steps, "evals": self.evals,
                "train_seconds": self.train_seconds}

    def load_state_dict(self, state):
        self.ema, self.n, self.train_seconds = state["ema"], state["n"], state["train_seconds"]
        self.steps = [tuple(s) for s in state["steps"]]
        self.evals = [tuple(e) for e in state["evals"]]

    def write(self, prefix):
        """prefix.csv (every step) and prefix.png (train loss and val bpb against step)."""
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        with open(prefix + ".csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "train_loss", "lr_multiplier", "r", "dt_s", "val_bpb"])
            evals = dict(self.evals)
            for step, loss, lrm, r, dt in self.steps:
                w.writerow([step, f"{loss:.6f}", f"{lrm:.4f}", r, f"{dt:.4f}", evals.get(step, "")])
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        ax[0].plot([s[0] for s in self.steps], [s[1] for s in self.steps], lw=0.8)
        ax[0].set(xlabel="step", ylabel="train loss (nats)", title="training loss")
        if self.evals:
            ax[1].plot(*zip(*self.evals), marker="o")
        ax[1].set(xlabel="step", ylabel="bits per byte", title="validation bpb")
        fig.tight_layout()
        fig.savefig(prefix + ".png", dpi=110)
        plt.close(fig)
        return prefix + ".csv", prefix + ".png"


def compile_blocks(model):
    """torch.compile each block, not the loop: r changes every step and must not trigger a
    recompile. Blocks differ in window and value-embed use, and each runs with and without
    grad (truncated BPTT), so dynamo's per-function cache must hold a few graphs per block."""
    import torch._dynamo
    blocks = [*model.prelude, *model.recur, *model.coda]
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.6
    setattr(config, name, max(getattr(config, name), 8 * len(blocks)))
    for block in blocks:
        block.compile(dynamic=False)
    return blocks


def maybe_compile(model, flag, device):
    """--compile: 1 on, 0 off, -1 on CUDA only (CPU compile costs more than it saves at toy
    scale). Compiles the blocks when on and says so; returns whether it did."""
    on = flag == 1 or (flag == -1 and device.type == "cuda")
    if on:
        compile_blocks(model)
        from nanochat.common import print0
        print0("compiled the blocks with torch.compile")
    return on


def stream_seed(seed, step, rank, index):
    """The seed of one random stream (a micro-step's state noise, an RL sampling call): distinct
    for every (seed, step, rank, index), and the same after a resume."""
    return ((seed * 1_000_003 + step) * 1009 + rank) * 1009 + index


def sample_greedy(model, tokenizer, prompts, r, max_tokens=24):
    """Greedy continuations of each prompt, run eagerly: with compiled blocks every new sequence
    length would otherwise compile new graphs (two per block per token), while the other ranks
    wait. Returns [(prompt, continuation)]."""
    import torch
    was_training = model.training
    model.eval()
    out = []
    with torch.compiler.set_stance("force_eager"):
        for prompt in prompts:
            ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
            out.append((prompt, tokenizer.decode(list(model.generate(ids, max_tokens=max_tokens, r=r)))))
    model.train(was_training)
    return out


def init_wandb(run, master, project, config):
    """A wandb run when a run name is given (rank 0 only), else a no-op stand-in."""
    from nanochat.common import DummyWandb, print0
    if not (run and master):
        return DummyWandb()
    try:
        import wandb
    except ImportError:
        print0("wandb is not installed: logging to stdout only")
        return DummyWandb()
    return wandb.init(project=project, name=run, config=config)
