"""
Easy-to-hard (depth) extrapolation on a task whose difficulty is the number of sequential
lookups at a fixed length: pointer chasing (tasks/pointer_chase.py, the default), variable
assignments mod 10 (tasks/var_chase.py) or chains of copies (tasks/copy_chase.py). Exact-match accuracy per test depth x recurrence r,
greedy, through the engine and its KV cache, and with adaptive exit (r is then a cap) the
accuracy and the mean number of iterations the answer token ran. A standard GPT (arch "gpt")
runs at r = 1 only.

    python -m scripts.depth_eval --model-tags loop_s42,gpt_s42 --data-dir out/depth/data --out out/depth/eval
    python -m scripts.depth_eval --task var_chase --model-tags loop_s42 --data-dir out/var/data --out out/var/eval

Reads <data-dir>/test_d<depth>.jsonl (dev/make_<task>.py). Writes <out>.md (markdown table),
<out>.json (every number) and <out>.png (one heatmap per model). The task decides the grader,
chance and the shortcut baselines printed beside the table.

In both tasks the prompt ends with the queried letter and the answer (a root letter, a digit)
is one token. Fixed r: the engine's generate (prefill at r, greedy). Adaptive exit: the
engine's prefill always runs its full r, so the prompt minus its last token is prefilled into a
KVCache at the cap and the last token is decoded with the exit criterion; the depth reported is
that of the answer token.
"""

import argparse
import glob
import json
import os
import re
import time

import torch

from nanochat import errors
from nanochat.checkpoint_manager import build_model, find_checkpoint_dir
from nanochat.common import compute_init, print0
from nanochat.engine import Engine
from nanochat.kv_cache import EXIT_CRITERIA, KVCache
from nanochat.recurrence import parse_recur_list
from nanochat.tokenizer import get_tokenizer
from tasks import copy_chase, pointer_chase, var_chase

errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback
TASKS = {"pointer_chase": pointer_chase, "var_chase": var_chase, "copy_chase": copy_chase}  # name -> module (grade, chance, SHORTCUTS)

parser = argparse.ArgumentParser(description="Accuracy per test depth x r on a depth-extrapolation task, and adaptive exit")
parser.add_argument("--task", type=str, default="pointer_chase", help=f"the task that wrote the test files: {' | '.join(TASKS)}")
parser.add_argument("--model-tags", type=str, required=True, help="folders under base_checkpoints, comma-separated")
parser.add_argument("--data-dir", type=str, required=True, help="folder holding test_d<depth>.jsonl")
parser.add_argument("--recur", type=str, default="1,2,4,8,16,32", help="r values for looped models, comma-separated")
parser.add_argument("--exit-criterion", type=str, default="kl", choices=[*EXIT_CRITERIA, "none"],
                    help="adaptive exit criterion (nanochat/kv_cache.py; none = skip)")
parser.add_argument("--exit-threshold", type=float, default=1e-3, help="stop once the change between iterations is below this")
parser.add_argument("--exit-cap", type=int, default=32, help="most iterations under adaptive exit")
parser.add_argument("--max-problems", type=int, default=-1, help="problems per depth (-1 = all)")
parser.add_argument("--device-batch-size", type=int, default=100, help="prompts decoded together")
parser.add_argument("--out", type=str, required=True, help="output path without extension (.md, .json, .png)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (empty = autodetect)")
args = parser.parse_args()
if args.task not in TASKS:
    raise errors.UserError(f"--task {args.task!r}: expected one of {', '.join(TASKS)}")
task = TASKS[args.task]
print0(f"args: {vars(args)}")
_, _, _, _, device = compute_init(args.device_type or None)


def load_tests(data_dir, limit):
    """{depth: [problem, ...]} from every test_d<depth>.jsonl, sorted by depth."""
    paths = glob.glob(os.path.join(data_dir, "test_d*.jsonl"))
    if not paths:
        raise errors.MissingInput(f"no test_d<depth>.jsonl in {data_dir}: write them with python -m dev.make_{args.task}")
    tests = {}
    for path in paths:
        with open(path) as f:
            problems = [json.loads(line) for line in f]
        if any(set(task.PROBLEM_KEYS) - set(p) for p in problems):
            raise errors.UserError(f"{path} is not a {args.task} test file (its problems lack {task.PROBLEM_KEYS}): "
                                   f"pass the --task that wrote it")
        tests[int(re.search(r"test_d(\d+)\.jsonl$", path).group(1))] = problems if limit < 0 else problems[:limit]
    return dict(sorted(tests.items()))


def evaluate(engine, tokenizer, problems):
    """Accuracy at the engine's fixed r, greedy. The answer is one token, written from the prefill."""
    bos = tokenizer.get_bos_token_id()
    correct = 0
    for i in range(0, len(problems), args.device_batch_size):
        batch = problems[i:i + args.device_batch_size]
        prompts = [tokenizer.encode(p["prompt"], prepend=bos) for p in batch]
        results, _, _ = engine.generate_batch(prompts, max_tokens=1, temperature=0.0)
        correct += sum(task.grade(p, tokenizer.decode(ids[len(prompt):])) for p, prompt, ids in zip(batch, prompts, results))
    return correct / len(problems)


@torch.inference_mode()
def evaluate_exit(model, tokenizer, problems):
    """(accuracy, mean iterations of the answer) with adaptive exit. The engine's prefill
    always runs its full r, so here the prompt minus its last token is prefilled at the cap
    (exit off) and the last token (the queried letter) is decoded with the exit criterion,
    as the engine decodes: the depth reported is the answer's own."""
    bos = tokenizer.get_bos_token_id()
    correct = depth_sum = 0
    for i in range(0, len(problems), args.device_batch_size):
        batch = problems[i:i + args.device_batch_size]
        ids = torch.tensor([tokenizer.encode(p["prompt"], prepend=bos) for p in batch], device=device)  # (B, L): same length
        cache = KVCache(model, len(batch), ids.size(1), max_r=args.exit_cap, exit_criterion=args.exit_criterion,
                        exit_threshold=args.exit_threshold)
        cache.exit_criterion = None  # the prefill runs the full cap, as Engine's does
        model(ids[:, :-1], r=args.exit_cap, kv_cache=cache)
        cache.exit_criterion = args.exit_criterion
        answer = model(ids[:, -1:], r=args.exit_cap, kv_cache=cache)[:, -1].argmax(-1).tolist()
        correct += sum(task.grade(p, tokenizer.decode([t])) for p, t in zip(batch, answer))
        depth_sum += cache.depth[:, -1].sum().item()
    return correct / len(problems), depth_sum / len(problems)


tokenizer = get_tokenizer()
tests = load_tests(args.data_dir, args.max_problems)
# what a model gets without chasing: chance and the task's shortcuts (each a mean of expected accuracies)
baselines = {d: dict(chance=sum(map(task.chance, ps)) / len(ps),
                     **{key: sum(map(guess, ps)) / len(ps) for key, (_, guess) in task.SHORTCUTS.items()})
             for d, ps in tests.items()}
results = []
for tag in args.model_tags.split(","):
    model, meta = build_model(find_checkpoint_dir("base", tag), device=device)
    arch = model.config.arch
    recurs = parse_recur_list(args.recur if arch == "looped" else "1", arch, 1)
    row = dict(tag=tag, arch=arch, step=meta["step"], acc={}, exit={})
    for depth, problems in tests.items():
        for r in recurs:
            t0 = time.time()
            acc = evaluate(Engine(model, tokenizer, r=r, tool=None), tokenizer, problems)
            row["acc"].setdefault(depth, {})[r] = acc
            print0(f"{tag} depth {depth} r={r}: {acc:.3f} ({time.time() - t0:.1f}s)")
        if arch == "looped" and args.exit_criterion != "none":
            acc, mean_depth = evaluate_exit(model, tokenizer, problems)
            row["exit"][depth] = dict(acc=acc, mean_depth=mean_depth)
            print0(f"{tag} depth {depth} adaptive exit: {acc:.3f}, mean depth {mean_depth:.2f}")
    results.append(row)

# -----------------------------------------------------------------------------
# table, JSON, heatmap

recurs = sorted({r for row in results for d in row["acc"].values() for r in d})
exit_label = (f"exit {args.exit_criterion} < {args.exit_threshold:g} (cap {args.exit_cap})" if args.exit_criterion != "none"
              else "adaptive exit off")
lines = ["| model | test depth | " + " | ".join(f"r={r}" for r in recurs) + f" | {exit_label}: acc | mean depth |",
         "|---|---|" + "---|" * (len(recurs) + 2)]
for row in results:
    for depth in tests:
        cells = [f"{row['acc'][depth][r]:.2f}" if r in row["acc"][depth] else "" for r in recurs]
        ex = row["exit"].get(depth)
        cells += [f"{ex['acc']:.2f}", f"{ex['mean_depth']:.1f}"] if ex else ["", ""]
        lines.append(f"| {row['tag']} ({row['arch']}) | {depth} | " + " | ".join(cells) + " |")
lines += ["", "| test depth | chance | " + " | ".join(label for label, _ in task.SHORTCUTS.values()) + " |",
          "|---|---|" + "---|" * len(task.SHORTCUTS)]
lines += [f"| {d} | " + " | ".join(f"{v:.2f}" for v in b.values()) + " |" for d, b in baselines.items()]
table = "\n".join(lines)
print0("\n" + table)
os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
with open(args.out + ".md", "w") as f:
    f.write(table + "\n")
with open(args.out + ".json", "w") as f:
    json.dump(dict(args=vars(args), n_problems={d: len(p) for d, p in tests.items()}, baselines=baselines, results=results),
              f, indent=1)

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

depths = list(tests)
fig, axes = plt.subplots(1, len(results), figsize=(2.2 + 0.75 * (len(recurs) + 1) * len(results), 0.6 * len(depths) + 2.0),
                         squeeze=False)
for ax, row in zip(axes[0], results):
    cols = [r for r in recurs if any(r in row["acc"][d] for d in depths)]
    labels = [f"r={r}" for r in cols] + (["exit"] if row["exit"] else [])
    grid = [[row["acc"][d].get(r, float("nan")) for r in cols] + ([row["exit"][d]["acc"]] if row["exit"] else [])
            for d in depths]
    ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, d in enumerate(depths):
        for j, v in enumerate(grid[i]):
            text = f"{v:.2f}" + (f"\nd={row['exit'][d]['mean_depth']:.1f}" if labels[j] == "exit" else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set(xlabel="test-time iterations", ylabel="test depth (lookups)", title=f"{row['tag']} ({row['arch']})")
fig.suptitle(f"{args.task.replace('_', ' ')}: exact-match accuracy", fontsize=10)
fig.tight_layout()
fig.savefig(args.out + ".png", dpi=110)
print0(f"wrote {args.out}.md, .json, .png")
