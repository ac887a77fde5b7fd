"""
Scaling laws: val bpb and CORE against training FLOPs, the looped model vs the standard GPT,
in one PNG (two panels), from whatever base checkpoints exist (runs/scaling_laws.sh makes them).

For the latest checkpoint of each tag under $NANOCHAT_BASE_DIR/base_checkpoints:
  FLOPs   = meta "flops_per_token" x tokens (step x total batch size)
  val bpb = meta "val_bpb"
  CORE    = base_eval's $NANOCHAT_BASE_DIR/base_eval/<tag>_step<step>.csv, the row at the
            checkpoint's eval r, when base_eval was run (else the point has no CORE)
Each point is one run; the line per architecture joins the best run at each budget.

    python dev/plot_scaling.py --out scaling_laws.png
    python dev/plot_scaling.py --tags 's*_f*,d*_f*'
"""

import argparse
import csv
import fnmatch
import json
import os
import re
import sys

DEFAULT_TOTAL_BATCH = 524288  # base_train's --total-batch-size -1


def read_core(base_dir, tag, step, eval_r):
    """CORE at the checkpoint's eval r from base_eval's CSV, or None."""
    path = os.path.join(base_dir, "base_eval", f"{tag}_step{step:06d}.csv")
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("core")]
    row = next((row for row in rows if row["r"] == str(eval_r)), rows[0] if rows else None)
    return float(row["core"]) if row else None


def collect_runs(base_dir, patterns=("*",)):
    """One dict per tag whose latest checkpoint has FLOPs/token and a val bpb."""
    root = os.path.join(base_dir, "base_checkpoints")
    runs = []
    for tag in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not any(fnmatch.fnmatch(tag, p) for p in patterns):
            continue
        steps = [int(m.group(1)) for m in map(re.compile(r"^step_(\d+)$").match, os.listdir(os.path.join(root, tag))) if m]
        if not steps:
            continue
        step = max(steps)
        with open(os.path.join(root, tag, f"step_{step:06d}", "meta.json")) as f:
            meta = json.load(f)
        if meta.get("flops_per_token") is None or meta.get("val_bpb") is None:
            print(f"skip {tag}: its meta.json has no flops_per_token or val_bpb")
            continue
        user = meta.get("user_config", {})
        batch = meta.get("total_batch_size", user.get("total_batch_size", -1))  # the batch as derived, when saved
        tokens = step * (batch if batch > 0 else DEFAULT_TOTAL_BATCH)
        arch = meta.get("model_config", {}).get("arch", user.get("arch", "looped"))
        runs.append(dict(tag=tag, arch=arch, size=user.get("size"), step=step, tokens=tokens,
                         flops=meta["flops_per_token"] * tokens, val_bpb=meta["val_bpb"],
                         core=read_core(base_dir, tag, step, meta.get("eval_r", 1))))
    return runs


def plot(runs, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"looped": ("tab:blue", "o", "looped (s)"), "gpt": ("tab:orange", "s", "standard GPT (d)")}
    for ax, key, best, label in ((axes[0], "val_bpb", min, "val bits per byte"), (axes[1], "core", max, "CORE")):
        for arch, (color, marker, name) in styles.items():
            points = [r for r in runs if r["arch"] == arch and r[key] is not None]
            if not points:
                continue
            ax.scatter([r["flops"] for r in points], [r[key] for r in points], color=color, marker=marker, label=name)
            for r in points:
                ax.annotate(("d" if arch == "gpt" else "s") + str(r["size"]), (r["flops"], r[key]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
            budgets = {}  # the best run at each budget (FLOPs rounded to 2 significant digits)
            for r in points:
                b = float(f"{r['flops']:.2g}")
                budgets[b] = best(budgets.get(b, r[key]), r[key])
            xs = sorted(budgets)
            ax.plot(xs, [budgets[x] for x in xs], color=color, lw=1, alpha=0.6)
        ax.set(xscale="log", xlabel="training FLOPs", ylabel=label, title=f"{label} vs training FLOPs")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {label} yet (run scripts/base_eval.py)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot val bpb and CORE vs training FLOPs, looped vs standard GPT")
    parser.add_argument("--base-dir", type=str, default=None, help="artifact folder (default $NANOCHAT_BASE_DIR)")
    parser.add_argument("--tags", type=str, default="*", help="comma-separated glob patterns of checkpoint tags")
    parser.add_argument("--out", type=str, default="scaling_laws.png", help="PNG to write")
    args = parser.parse_args(argv)
    base_dir = args.base_dir or os.environ.get("NANOCHAT_BASE_DIR") or os.path.expanduser("~/.cache/nanochat")
    runs = collect_runs(base_dir, args.tags.split(","))
    if not runs:
        sys.exit(f"no base checkpoints matching {args.tags!r} under {base_dir}/base_checkpoints: "
                 f"run runs/scaling_laws.sh (or scripts/base_train.py) first")
    print(f"{'tag':<16}{'arch':<8}{'step':>8}{'tokens':>16}{'FLOPs':>12}{'val bpb':>10}{'CORE':>8}")
    for r in sorted(runs, key=lambda r: (r["arch"], r["flops"])):
        core = "-" if r["core"] is None else f"{r['core']:.4f}"
        print(f"{r['tag']:<16}{r['arch']:<8}{r['step']:>8}{r['tokens']:>16,}{r['flops']:>12.3e}{r['val_bpb']:>10.4f}{core:>8}")
    plot(runs, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
