"""
Evaluate a chat model on the chat tasks, at one or several recurrence counts r: accuracy and
ChatCORE against test-time compute.

    python -m scripts.chat_eval --source sft --model-tag s20                  # every task, the checkpoint's r
    python -m scripts.chat_eval -i ARC-Easy,GSM8K --recur 1,2,4,8 --max-problems 200
    python -m scripts.chat_eval -i GSM8K --num-samples 8 --temperature 1.0    # pass@1..8
    torchrun --nproc_per_node=8 -m scripts.chat_eval --source rl

Categorical tasks (ARC-Easy, ARC-Challenge, MMLU) compare the logits of the answer letters at
the end of the prompt; generative ones (GSM8K, HumanEval, SpellingBee) sample replies through
the engine, a batch of prompts at a time (nanochat/task_eval.py). --adaptive T adds, for each
r, a row under adaptive exit with r as the cap: a token stops iterating once the KL between
successive iterations' next-token distributions falls under T. Generative tasks apply it to
every decoded token (the prompt's prefill runs r); categorical ones to every prompt position
of their one prefill (nanochat/eval_forward.py). Each row reports the mean depth per task: of
the generated tokens, or of the scored (last prompt) position; "mean depth" is their mean.
ChatCORE (nanochat): the mean centered accuracy over the six tasks, reported when all six ran.

Writes $NANOCHAT_BASE_DIR/chat_eval/<source>_<tag>_step<step>.{csv,png} (a row / point per r
and mode; the figure has one panel per task, nanochat/eval_plots.py)
and the report section "Chat evaluation <source>" ($NANOCHAT_BASE_DIR/report/chat_eval_<source>.md).
"""

import argparse
import csv
import os
import time

from nanochat import errors
from nanochat.checkpoint_manager import find_checkpoint_dir, load_model
from nanochat.common import compute_cleanup, compute_init, get_base_dir, print0
from nanochat.engine import Engine
from nanochat.eval_forward import EXIT_CRITERION
from nanochat.eval_plots import plot_sweep
from nanochat.execution import describe_sandbox
from nanochat.recurrence import parse_recur_list, resolve_r
from nanochat.report import get_report
from nanochat.common import centered_accuracy
from nanochat.task_eval import BASELINES, chatcore, evaluate_categorical, evaluate_generative
from tasks.arc import ARC
from tasks.gsm8k import GSM8K
from tasks.humaneval import HumanEval
from tasks.mmlu import MMLU
from tasks.spellingbee import SpellingBee

errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback

TASKS = {
    "ARC-Easy": lambda: ARC("ARC-Easy", "test"),
    "ARC-Challenge": lambda: ARC("ARC-Challenge", "test"),
    "MMLU": lambda: MMLU("test"),
    "GSM8K": lambda: GSM8K("test"),
    "HumanEval": lambda: HumanEval(),
    "SpellingBee": lambda: SpellingBee(size=256, split="test"),
}

parser = argparse.ArgumentParser(description="Evaluate a chat model: accuracy per task and ChatCORE, per recurrence count")
parser.add_argument("-i", "--task-name", type=str, default="all", help=f"comma-separated tasks, or 'all': {', '.join(TASKS)}")
parser.add_argument("--source", type=str, default="sft",
                    help="which stage's checkpoints: base | sft | rl, or a folder written by scripts/export_hf.py")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the one saved last)")
parser.add_argument("--step", type=int, default=-1, help="checkpoint step (-1 = the latest)")
parser.add_argument("--max-problems", type=int, default=-1, help="first N problems of each task, in its seeded shuffled order (-1 = all)")
parser.add_argument("--recur", type=str, default="", help="r values, comma-separated, e.g. 1,2,4,8 (empty = the checkpoint's eval r)")
parser.add_argument("--adaptive", type=float, default=-1, help="also evaluate under adaptive exit at this KL threshold, each r the cap (-1 = off)")
parser.add_argument("--num-samples", type=int, default=1, help="samples per generative problem: pass@1..N")
parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of generative tasks (0 = greedy)")
parser.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (-1 = all)")
parser.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per generated reply")
parser.add_argument("--device-batch-size", type=int, default=8, help="prompts per forward (categorical) or per engine call (generative)")
parser.add_argument("--seed", type=int, default=42, help="sampling seed")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (empty = autodetect)")
args = parser.parse_args()

names = list(TASKS) if args.task_name == "all" else [t.strip() for t in args.task_name.split(",") if t.strip()]
unknown = [t for t in names if t not in TASKS]
if unknown or not names:
    raise errors.UserError(f"--task-name {args.task_name!r}: unknown {unknown}; expected 'all' or some of {', '.join(TASKS)}")
if args.num_samples < 1:
    raise errors.UserError(f"--num-samples {args.num_samples}: expected >= 1")
if args.num_samples > 1 and args.temperature == 0:
    print0("note: --num-samples > 1 with --temperature 0 gives identical samples")

is_ddp, rank, local_rank, world_size, device = compute_init(args.device_type or None, seed=args.seed)
master = rank == 0
print0(f"args: {vars(args)}")
print0(describe_sandbox())  # GSM8K's tool calls and HumanEval's programs run there
if args.source not in ("base", "sft", "rl"):  # an exported folder: named "hf <folder name>" in files and the report
    source, model_tag = "hf", os.path.basename(os.path.normpath(args.source))
else:
    source, model_tag = args.source, os.path.basename(find_checkpoint_dir(args.source, args.model_tag or None))
model, tokenizer, meta = load_model(args.source, model_tag, None if args.step < 0 else args.step, device)
config, step = model.config, meta["step"]
recurs = parse_recur_list(args.recur, config.arch, resolve_r(config.arch, meta))
if args.adaptive >= 0 and config.arch == "gpt":
    raise errors.UserError(f"--adaptive {args.adaptive}: the checkpoint is arch='gpt', which has no loop to exit from")
tasks = {name: TASKS[name]() for name in names}
print0(f"model: {source} step {step} ({config.arch}, width {config.n_embd}); tasks: "
       + ", ".join(f"{n} ({len(t)})" for n, t in tasks.items()))

# -----------------------------------------------------------------------------
# one pass per r and mode: fixed r, and with --adaptive the same r as the cap of adaptive exit

modes = [("fixed", -1.0)] + ([("adaptive", args.adaptive)] if args.adaptive >= 0 else [])
rows = []
for r in recurs:
    for mode, threshold in modes:
        if mode == "adaptive" and r < 2:
            print0(f"r={r} | adaptive: skipped (a token may stop only after its second iteration, so it equals fixed r={r})")
            continue
        engine = Engine(model, tokenizer, r=r, exit_criterion=EXIT_CRITERION if threshold >= 0 else None,
                        exit_threshold=max(threshold, 0.0))
        row, tag = {"r": r, "mode": mode}, f"r={r}" + " adaptive" * (mode == "adaptive")
        for name, task in tasks.items():
            t0 = time.time()

            def progress(line):  # progress within the task, with its ETA
                print0(f"{tag} | {name:<13} | {line}")

            if task.eval_type == "categorical":
                res = evaluate_categorical(model, tokenizer, task, device, r=r, max_problems=args.max_problems,
                                           batch_size=args.device_batch_size, exit_threshold=threshold, log=progress)
                passes = ""
            else:
                res = evaluate_generative(engine, tokenizer, task, device, num_samples=args.num_samples,
                                          max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                          top_k=args.top_k if args.top_k > 0 else None, max_problems=args.max_problems,
                                          batch_size=args.device_batch_size, seed=args.seed, log=progress)
                passes = ", ".join(f"pass@{k} {v:.4f}" for k, v in res["pass_at"].items()) if args.num_samples > 1 else ""
            row[name], row[f"{name} mean depth"] = res["accuracy"], res["mean_depth"]
            extra = f" | {passes}" * bool(passes) + (f" | mean depth {res['mean_depth']:.2f} of {r}" if threshold >= 0 else "")
            print0(f"{tag} | {name:<13} | {res['total']} problems | accuracy {res['accuracy']:.4f}{extra} | {time.time() - t0:.1f}s")
        row["mean depth"] = sum(row[f"{n} mean depth"] for n in tasks) / len(tasks)  # each task weighted alike
        accuracies = {n: row[n] for n in tasks}
        if set(tasks) == set(TASKS):
            row["ChatCORE"] = chatcore(accuracies)
            print0(f"{tag} | ChatCORE {row['ChatCORE']:.4f} | mean depth {row['mean depth']:.2f}")
        else:
            print0(f"{tag} | (ChatCORE needs all six tasks; mean centered accuracy over these {len(tasks)}: "
                   f"{chatcore(accuracies):.4f})")
        rows.append(row)

# -----------------------------------------------------------------------------
# table, CSV, plot, report section

columns = list(tasks) + (["ChatCORE"] if "ChatCORE" in rows[0] else [])


def markdown_table(mode):
    """The rows of one mode. Fixed: first column r (what the report summary reads); adaptive:
    "cap r" and the mean depths, so the summary never mistakes them for fixed-r figures."""
    picked = [row for row in rows if row["mode"] == mode]
    if mode == "fixed":
        lines = ["| r | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        return lines + ["| " + " | ".join([str(row["r"])] + [f"{row[c]:.4f}" for c in columns]) + " |" for row in picked]
    lines = ["| cap r | mean depth | " + " | ".join(f"{c} (depth)" if c in tasks else c for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join([str(row["r"]), f"{row['mean depth']:.2f}"]
                                      + [f"{row[c]:.4f} ({row[c + ' mean depth']:.2f})" if c in tasks else f"{row[c]:.4f}"
                                         for c in columns]) + " |" for row in picked]


table = "\n".join(markdown_table("fixed"))
if args.adaptive >= 0:
    table += f"\n\nAdaptive exit, KL < {args.adaptive:g}, r the cap (mean depth: of the generated tokens, or of the " \
             f"scored prompt position):\n\n" + "\n".join(markdown_table("adaptive"))
print0(f"\n{source} {model_tag} step {step}"
       + (f", pass@{args.num_samples} at temperature {args.temperature:g}" if args.num_samples > 1 else "")
       + ":\n" + table)

if master:
    out_dir = os.path.join(get_base_dir(), "chat_eval")
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, f"{source}_{model_tag}_step{step:06d}")
    depth_cols = [f"{n} mean depth" for n in tasks] + ["mean depth"]
    with open(prefix + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["r", "mode", "exit_threshold"] + [f"{n}_acc" for n in tasks] + [f"{n}_centered" for n in tasks]
                   + columns[len(tasks):] + [c.replace(" ", "_") for c in depth_cols])
        for row in rows:
            w.writerow([row["r"], row["mode"], args.adaptive if row["mode"] == "adaptive" else ""] + [row[n] for n in tasks]
                       + [centered_accuracy(row[n], BASELINES[n]) for n in tasks]
                       + [row[c] for c in columns[len(tasks):]] + [row[c] for c in depth_cols])
    panels = [(n, n, BASELINES[n]) for n in tasks] + [("ChatCORE", "ChatCORE (centered)", 0.0)] * ("ChatCORE" in columns)
    plot_sweep(prefix + ".png", rows, panels,
               f"{source} {model_tag} step {step}: accuracy vs r"
               + (f" (fixed r; adaptive KL<{args.adaptive:g} with r the cap)" if args.adaptive >= 0 else " (fixed r)"),
               depth_key=lambda key: "mean depth" if key == "ChatCORE" else f"{key} mean depth")

    settings = {"model": f"{source} {model_tag} step {step}", "problems per task": "all" if args.max_problems < 0 else args.max_problems,
                "generative sampling": f"{args.num_samples} sample(s), temperature {args.temperature:g}, top-k {args.top_k}",
                "adaptive exit": "off" if args.adaptive < 0 else f"KL < {args.adaptive:g}",
                "world size": world_size, "results": f"{prefix}.csv, {prefix}.png"}
    path = get_report().log(section=f"Chat evaluation {source}", data=[settings, table])
    print0(f"results: {prefix}.csv, plot: {prefix}.png, report section: {path}")
compute_cleanup()
