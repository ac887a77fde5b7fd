"""
Join runs/gpu_check.sh's stages into one JSON and one markdown table: the training benchmark
(train.json), the loss race (the two checkpoints' meta.json and train_log.csv) and the decode
benchmark (decode.json). A stage that failed or timed out (its .rc file) shows as such, with
the last line of its log, and the others are reported all the same.

    python -m dev.gpu_check_report --out out/gpu_check --checkpoints /tmp/nanochat_gpu_check/base_checkpoints
"""

import argparse
import csv
import glob
import json
import os

RACE = {"race_looped": "looped (s, 2/4/2, r sampled)", "race_gpt": "GPT (d = size)"}


def stage_status(out, name):
    """'ok', 'timed out', 'failed (exit N): <last log line>' or 'not run'."""
    rc_path = os.path.join(out, f"{name}.rc")
    if not os.path.exists(rc_path):
        return "not run"
    rc = int(open(rc_path).read().strip() or 1)
    if rc == 0:
        return "ok"
    log = os.path.join(out, f"{name}.log")
    lines = [x for x in open(log).read().splitlines() if x.strip()] if os.path.exists(log) else []
    why = "timed out" if rc in (124, 137) else f"failed (exit {rc})"
    return f"{why}: {lines[-1][:200]}" if lines else why


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def race_result(checkpoints, tag):
    """{steps, val_bpb, train_seconds} of the last checkpoint of a race run, or None."""
    metas = sorted(glob.glob(os.path.join(checkpoints, tag, "step_*", "meta.json")))
    if not metas:
        return None
    meta = load_json(metas[-1])
    if meta is None:
        return None
    step = int(os.path.basename(os.path.dirname(metas[-1]))[len("step_"):])
    seconds = None
    log = os.path.join(checkpoints, tag, "train_log.csv")
    if os.path.exists(log):
        with open(log) as f:
            rows = list(csv.DictReader(f))
        seconds = sum(float(row["dt_s"]) for row in rows if row.get("dt_s"))
    return dict(steps=step, val_bpb=meta.get("val_bpb"), train_seconds=seconds)


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def main(args):
    report = {"stages": {name: stage_status(args.out, name)
                         for name in ("train", "tokenizer", "race_looped", "race_gpt", "decode")}}
    report["train"] = load_json(os.path.join(args.out, "train.json"))
    report["race"] = {tag: race_result(args.checkpoints, tag) for tag in RACE}
    report["decode"] = load_json(os.path.join(args.out, "decode.json"))
    md = ["# GPU check", "", "| stage | status |", "|---|---|"]
    md += [f"| {name} | {status} |" for name, status in report["stages"].items()]
    if report["train"]:
        t = report["train"]
        md += ["", f"## Training throughput ({t['device']}, B={t['args']['batch_size']}, T={t['args']['seq_len']}, "
               f"compile {t['args']['compile']})", "",
               "| config | mean r | FLOPs/token | tok/s | vs gpt | TFLOP/s | MFU % | peak GiB |", "|---|---|---|---|---|---|---|---|"]
        base = t["results"][0]["tok_s"]
        for x in t["results"]:
            md.append(f"| {x['label']} | {x['mean_r']:.2f} | {x['flops']:.3e} | {x['tok_s']:,.0f} | {x['tok_s'] / base:.2f} | "
                      f"{x['tflops']:.1f} | {fmt(x['mfu'], '.1f')} | {fmt(x['mem'], '.1f')} |")
    if any(report["race"].values()):
        md += ["", "## Loss race at equal training FLOPs", "", "| model | steps | final val bpb | training s |", "|---|---|---|---|"]
        for tag, label in RACE.items():
            x = report["race"][tag]
            if x:
                md.append(f"| {label} | {x['steps']} | {fmt(x['val_bpb'], '.4f')} | {fmt(x['train_seconds'], '.0f')} |")
    if report["decode"]:
        d = report["decode"]
        md += ["", f"## Decode ({d['device']}, s{d['args']['size']} r={d['args']['recur']})", "",
               "| batch | way | tok/s, median (range) | vs forward |", "|---|---|---|---|"]
        md += [f"| {x['batch']} | {x['way']} | {x['tok_s']:,.1f} ({x['lo']:,.1f}-{x['hi']:,.1f}) | {x['vs_forward']:.2f}x |"
               for x in d["results"]]
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Join runs/gpu_check.sh's results into gpu_check.{json,md}")
    parser.add_argument("--out", required=True, help="the folder the stages wrote to ($OUT)")
    parser.add_argument("--checkpoints", required=True, help="base_checkpoints folder of the loss race")
    main(parser.parse_args())
