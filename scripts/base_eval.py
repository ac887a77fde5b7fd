"""
Evaluate a base checkpoint: CORE (the DCLM in-context tasks), train/val bits per byte and a
few greedy samples, at one or several recurrence counts r: the test-time compute curve.

    python -m scripts.base_eval --model-tag s20 --recur 1,2,4,8,16
    torchrun --nproc_per_node=8 -m scripts.base_eval --model-tag s20
    python -m scripts.base_eval --eval core --max-per-task 200 --eval-bundle ../shared/data/eval_bundle
    python -m scripts.base_eval --eval core --recur 4,8,16 --adaptive 1e-3     # plus adaptive exit, r the cap
    python -m scripts.base_eval --model-tag ~/.cache/nanochat/hf/base_s20      # a folder from scripts/export_hf.py

--adaptive T adds, for each r >= 2, a CORE row under adaptive exit with r as the cap: every
position of an example's forward stops iterating once the KL between successive iterations'
next-token distributions falls under T (nanochat/eval_forward.py); the row reports the mean
depth of the positions that predict continuation tokens. bpb and samples stay at fixed r.

Writes $NANOCHAT_BASE_DIR/base_eval/<tag>_step<step>.{csv,png} (one row / point per r and mode) and the
report section $NANOCHAT_BASE_DIR/report/base_eval.md. The eval bundle is --eval-bundle, else
$NANOCHAT_BASE_DIR/eval_bundle, downloaded there when absent.
"""

import argparse
import csv
import os
import time

import torch.distributed as dist

from nanochat import errors
from nanochat.checkpoint_manager import base_dir_hint, build_model, last_step
from nanochat.common import compute_cleanup, compute_init, get_base_dir, print0
from nanochat.core_eval import evaluate_core
from nanochat.eval_plots import plot_sweep
from nanochat.dataloader import DataLoader
from nanochat.dataset import default_data_dir
from nanochat.eval_bundle import resolve_bundle
from nanochat.hf_export import is_exported, load_exported
from nanochat.loss_eval import evaluate_bpb
from nanochat.recurrence import parse_recur_list, resolve_r
from nanochat.report import get_report
from nanochat.tokenizer import get_token_bytes, get_tokenizer

errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback

EVALS = ("core", "bpb", "sample")
PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
           "The opposite of hot is", "The planets of the solar system are:", "If 5*x + 3 = 13, then x is"]

parser = argparse.ArgumentParser(description="Evaluate a base model: CORE, bits per byte, samples; per recurrence count")
parser.add_argument("--model-tag", type=str, default="",
                    help="folder under base_checkpoints (default: the one saved last), or a folder written by scripts/export_hf.py")
parser.add_argument("--step", type=int, default=-1, help="checkpoint step (-1 = the latest)")
parser.add_argument("--recur", type=str, default="", help="r values, comma-separated, e.g. 1,2,4,8,16 (empty = the checkpoint's eval r)")
parser.add_argument("--eval", type=str, default="core,bpb,sample", help=f"which evaluations, comma-separated: {', '.join(EVALS)}")
parser.add_argument("--max-per-task", type=int, default=-1, help="CORE examples per task (-1 = all)")
parser.add_argument("--adaptive", type=float, default=-1, help="also run CORE under adaptive exit at this KL threshold, each r the cap (-1 = off)")
parser.add_argument("--tasks", type=str, default="", help="CORE task labels, comma-separated (empty = all of core.yaml)")
parser.add_argument("--eval-bundle", type=str, default="", help="eval bundle folder (empty = $NANOCHAT_BASE_DIR/eval_bundle, downloaded if absent)")
parser.add_argument("--data-dir", type=str, default=None, help="parquet shards for bpb (default $NANOCHAT_BASE_DIR/base_data/climbmix)")
parser.add_argument("--eval-tokens", type=int, default=10 * 524288, help="tokens per split for bpb")
parser.add_argument("--device-batch-size", type=int, default=32, help="rows per forward for bpb")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (empty = autodetect)")
args = parser.parse_args()

evals = [e for e in args.eval.split(",") if e]
if not evals or set(evals) - set(EVALS):
    raise errors.UserError(f"--eval {args.eval!r}: expected a comma-separated subset of {EVALS}")
is_ddp, rank, local_rank, world_size, device = compute_init(args.device_type or None)
master = rank == 0
print0(f"args: {vars(args)}")

# -----------------------------------------------------------------------------
# checkpoint and settings

if args.model_tag and is_exported(args.model_tag):  # an exported folder: its weights and its tokenizer
    checkpoint_dir, model_tag = args.model_tag, os.path.basename(os.path.normpath(args.model_tag))
    model, tokenizer, meta = load_exported(checkpoint_dir, device)
else:
    ckpt_root = os.path.join(get_base_dir(), "base_checkpoints")
    tags = sorted(t for t in os.listdir(ckpt_root) if last_step(os.path.join(ckpt_root, t)) is not None) \
        if os.path.isdir(ckpt_root) else []
    if args.model_tag:
        model_tag = args.model_tag
    elif tags:
        model_tag = max(tags, key=lambda t: os.path.getmtime(os.path.join(ckpt_root, t)))
    else:
        raise errors.MissingInput(f"no checkpoints under {ckpt_root}: train one (python -m scripts.base_train)"
                                  + base_dir_hint())
    checkpoint_dir = os.path.join(ckpt_root, model_tag)
    if not os.path.isdir(checkpoint_dir):
        raise errors.MissingInput(f"--model-tag {model_tag}: no folder {checkpoint_dir} (found: {tags})")
    model, meta = build_model(checkpoint_dir, None if args.step < 0 else args.step, device)
    tokenizer = get_tokenizer()
step, config = meta["step"], model.config
print0(f"model {model_tag} step {step}: {config}")

recurs = parse_recur_list(args.recur, config.arch, resolve_r(config.arch, meta))
if args.adaptive >= 0 and config.arch == "gpt":
    raise errors.UserError(f"--adaptive {args.adaptive}: the checkpoint is arch='gpt', which has no loop to exit from")
if args.adaptive >= 0 and "core" not in evals:
    raise errors.UserError(f"--adaptive applies to CORE only; --eval {args.eval!r} has no core")

bundle = None
if "core" in evals:
    if master:
        resolve_bundle(args.eval_bundle or None, download=True)  # one rank downloads
    if is_ddp:
        dist.barrier()
    bundle = resolve_bundle(args.eval_bundle or None, download=False)
    print0(f"eval bundle: {bundle}")
tasks = [t for t in args.tasks.split(",") if t] or None

if "bpb" in evals:
    data_dir = args.data_dir or default_data_dir()
    token_bytes = tokenizer.token_bytes().to(device) if is_exported(checkpoint_dir) else get_token_bytes(device=device)
    T = config.sequence_len
    bpb_steps = max(1, args.eval_tokens // (args.device_batch_size * T * world_size))

# -----------------------------------------------------------------------------
# one pass per r

rows, per_task, samples, missing = [], {}, {}, []
for r in recurs:
    row = {"r": r, "mode": "fixed"}
    print0(f"--- r = {r}")
    if "sample" in evals and master:
        samples[r] = []
        for prompt in PROMPTS:
            out = list(model.generate(tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id()), max_tokens=16, r=r))
            samples[r].append((prompt, tokenizer.decode(out)))
            print0(f"  {prompt!r} -> {samples[r][-1][1]!r}")
    if "core" in evals:
        t0 = time.time()
        out = evaluate_core(model, tokenizer, bundle, device, r=r, max_per_task=args.max_per_task, tasks=tasks, log=print0)
        row["core"], row["core_seconds"], missing = out["core"], time.time() - t0, out["missing"]
        per_task[(r, "fixed")] = out["results"]
        print0(f"CORE (r={r}): {out['core']:.4f} over {len(out['results'])} tasks in {row['core_seconds']:.0f}s"
               + (f"; missing: {', '.join(missing)}" if missing else ""))
    if "bpb" in evals:
        for split in ("train", "val"):
            batches = iter(DataLoader(tokenizer, data_dir, split, args.device_batch_size, T, rank, world_size, device))
            row[f"{split}_bpb"] = evaluate_bpb(model, batches, bpb_steps, token_bytes, r=r)
        print0(f"bpb (r={r}): train {row['train_bpb']:.4f} | val {row['val_bpb']:.4f}")
    rows.append(row)
    if args.adaptive >= 0 and r >= 2:  # below 2 no token can stop: the same as fixed r
        t0 = time.time()
        out = evaluate_core(model, tokenizer, bundle, device, r=r, max_per_task=args.max_per_task, tasks=tasks,
                            log=print0, exit_threshold=args.adaptive)
        arow = {"r": r, "mode": "adaptive", "core": out["core"], "core_seconds": time.time() - t0,
                "mean_depth": out["mean_depth"]}
        per_task[(r, "adaptive")] = out["results"]
        print0(f"CORE (adaptive KL<{args.adaptive:g}, cap r={r}): {out['core']:.4f}, mean depth {out['mean_depth']:.2f} "
               f"in {arow['core_seconds']:.0f}s")
        rows.append(arow)

# -----------------------------------------------------------------------------
# table, CSV, plot, report section

fmt = lambda v, spec: "-" if v is None else format(v, spec)
mode_label = lambda row: "fixed" if row["mode"] == "fixed" else f"adaptive KL<{args.adaptive:g}"
columns = [("core", "CORE", ".4f"), ("mean_depth", "mean depth", ".2f"), ("train_bpb", "train bpb", ".4f"),
           ("val_bpb", "val bpb", ".4f"), ("core_seconds", "CORE time (s)", ".0f")]
columns = [c for c in columns if any(c[0] in row for row in rows)]
# fixed rows first, under "r" (what the report summary reads); adaptive ones under "cap r"
table = ["| r | " + " | ".join(c[1] for c in columns) + " |", "|---|" + "---|" * len(columns)]
table += ["| " + " | ".join([str(row["r"])] + [fmt(row.get(k, row["r"] if k == "mean_depth" else None), s)
                                               for k, _, s in columns]) + " |" for row in rows if row["mode"] == "fixed"]
if args.adaptive >= 0:
    table += ["", f"Adaptive exit, KL < {args.adaptive:g}, r the cap (mean depth of the positions that predict "
                  f"continuation tokens):", "", "| cap r | " + " | ".join(c[1] for c in columns) + " |",
              "|---|" + "---|" * len(columns)]
    table += ["| " + " | ".join([str(row["r"])] + [fmt(row.get(k), s) for k, _, s in columns]) + " |"
              for row in rows if row["mode"] == "adaptive"]
print0(f"\nmodel {model_tag} step {step}, test-time compute:\n" + "\n".join(table))

if master:
    out_dir = os.path.join(get_base_dir(), "base_eval")
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, f"{model_tag}_step{step:06d}")
    labels = list(next(iter(per_task.values()))) if per_task else []
    header = ["r", "mode"] + [k for k, _, _ in columns] + [f"{l}_{m}" for l in labels for m in ("acc", "centered", "mean_depth")]
    with open(prefix + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            tasks_r = per_task.get((row["r"], row["mode"]), {})
            w.writerow([row["r"], mode_label(row)] + [row.get(k, "") for k, _, _ in columns] +
                       [tasks_r[l][m] if tasks_r else "" for l in labels for m in ("accuracy", "centered", "mean_depth")])

    panels = [p for p in (("core", "CORE (centered, chance 0)", 0.0), ("val_bpb", "val bits per byte", None),
                          ("train_bpb", "train bits per byte", None)) if p[0] in rows[0]]
    if panels:  # nothing to plot for --eval sample
        plot_sweep(prefix + ".png", rows, panels,
                   f"{model_tag} step {step}: base eval vs r"
                   + (f" (fixed r; adaptive KL<{args.adaptive:g} with r the cap)" if args.adaptive >= 0 else " (fixed r)"),
                   depth_key=lambda key: "mean_depth")

    info = {"model": f"{model_tag}, step {step} ({checkpoint_dir})", "device": f"{device}, world size {world_size}",
            "CORE examples per task": "all" if args.max_per_task < 0 else args.max_per_task,
            "eval bundle": bundle or "-", "results": f"{prefix}.csv", "plot": f"{prefix}.png"}
    task_table = []
    if labels:
        keys = [key for key in ((r, m) for r in recurs for m in ("fixed", "adaptive")) if key in per_task]
        name = lambda key: f"r={key[0]}" if key[1] == "fixed" else f"adaptive cap r={key[0]}"
        task_table = ["| task | examples | " + " | ".join(f"acc {name(k)} | centered {name(k)}" for k in keys) + " |",
                      "|---|---|" + "---|---|" * len(keys)]
        for l in labels:
            cells = " | ".join(f"{per_task[k][l]['accuracy']:.4f} | {per_task[k][l]['centered']:+.4f}" for k in keys)
            task_table.append(f"| {l} | {per_task[keys[0]][l]['examples']} | {cells} |")
    sample_text = [f"Greedy samples (r={r}):\n```\n" + "\n".join(f"{p!r} -> {t!r}" for p, t in pairs) + "\n```"
                   for r, pairs in samples.items()]
    path = get_report().log(section="Base model evaluation", data=[
        info, "\n".join(table),
        f"Tasks missing from the bundle (left out of CORE): {', '.join(missing)}" if missing else "",
        "\n".join(task_table), *sample_text])
    print0(f"results: {prefix}.csv, plot: {prefix}.png, report section: {path}")
compute_cleanup()
