"""
Table and plot of a looped-vs-standard ISOFLOP comparison (runs/isoflop_cpu.sh): final val bpb
of each run (from its checkpoint's meta.json) and the looped runs' val bpb against r (from
base_eval's CSV), as a markdown table on stdout and one PNG.

    python dev/isoflop_table.py --looped loop_s42,loop_s7 --gpt gpt8_s42,gpt8_s7 --out isoflop.png
"""

import argparse
import csv
import glob
import json
import os
import statistics


def last_meta(base_dir, tag):
    metas = sorted(glob.glob(os.path.join(base_dir, "base_checkpoints", tag, "step_*", "meta.json")))
    if not metas:
        raise SystemExit(f"no checkpoint for {tag} under {base_dir}/base_checkpoints: run runs/isoflop_cpu.sh first")
    step = int(os.path.basename(os.path.dirname(metas[-1]))[len("step_"):])
    with open(metas[-1]) as f:
        return step, json.load(f)


def r_curve(base_dir, tag, step):
    """{r: val bpb} from base_eval's CSV of this checkpoint, {} when base_eval was not run."""
    path = os.path.join(base_dir, "base_eval", f"{tag}_step{step:06d}.csv")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {int(row["r"]): float(row["val_bpb"]) for row in csv.DictReader(f) if row.get("val_bpb")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--base-dir", default=os.environ.get("NANOCHAT_BASE_DIR", os.path.expanduser("~/.cache/nanochat")))
    parser.add_argument("--looped", required=True, help="model tags of the looped runs, comma-separated")
    parser.add_argument("--gpt", required=True, help="model tags of the standard GPT runs, comma-separated")
    parser.add_argument("--out", required=True, help="PNG path")
    args = parser.parse_args(argv)
    runs = []
    for arch, tags in (("looped", args.looped), ("gpt", args.gpt)):
        for tag in tags.split(","):
            step, meta = last_meta(args.base_dir, tag)
            batch = meta.get("total_batch_size") or meta["user_config"]["total_batch_size"]
            runs.append(dict(arch=arch, tag=tag, step=step, flops=meta["flops_per_token"] * batch * step,
                             bpb=meta["val_bpb"], curve=r_curve(args.base_dir, tag, step), eval_r=meta.get("eval_r", 1)))
    print("| run | arch | steps | training FLOPs | val bpb (eval r) |\n|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['tag']} | {run['arch']} | {run['step']} | {run['flops']:.3e} | {run['bpb']:.4f} (r={run['eval_r']}) |")
    for arch in ("looped", "gpt"):
        bpbs = [run["bpb"] for run in runs if run["arch"] == arch]
        spread = max(bpbs) - min(bpbs)
        print(f"| **{arch} mean** | | | | **{statistics.mean(bpbs):.4f}** (spread {spread:.4f}) |")
    rs = sorted({r for run in runs for r in run["curve"]})
    if rs:
        print("\nlooped val bpb against r:\n\n| run | " + " | ".join(f"r={r}" for r in rs) + " |\n|---|" + "---|" * len(rs))
        for run in runs:
            if run["curve"]:
                print(f"| {run['tag']} | " + " | ".join(f"{run['curve'].get(r, float('nan')):.4f}" for r in rs) + " |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>"
    for i, run in enumerate(r for r in runs if r["curve"]):
        xs = sorted(run["curve"])
        ax.plot(xs, [run["curve"][r] for r in xs], marker=markers[i % len(markers)], label=f"looped {run['tag']}")
    for i, run in enumerate(r for r in runs if r["arch"] == "gpt"):
        ax.axhline(run["bpb"], color=f"C{5 + i}", ls="--", label=f"standard GPT {run['tag']} (equal FLOPs)")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="test-time recurrence r", ylabel="val bits per byte", title="looped vs standard GPT at equal training FLOPs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
