"""
Where a serving step's time goes: the Scheduler run in-process (no HTTP) on a checkpoint with C
requests that arrive together, each step's time split into its prefill forward, its decode
forward, picking tokens (sampling, tool state) and moving cache rows. It explains the figures
of dev/serve_bench.py: how a decode step's cost grows with its rows, and what a prompt arriving
with 7 others waits for before its first token.

    NANOCHAT_BASE_DIR=/work/exp/iso OMP_NUM_THREADS=1 python -m dev.serve_profile --source base --model-tag loop_s42

Prompts are those of dev/serve_bench.py (chat c's first request), temperature 1, seed per chat.
"""

import argparse
import statistics
import time
from collections import defaultdict

import torch

from dev.serve_bench import prompt
from nanochat.checkpoint_manager import load_model
from nanochat.scheduler import Scheduler

parser = argparse.ArgumentParser(description="Split the scheduler's step time by phase")
parser.add_argument("--source", type=str, default="base", help="checkpoint stage")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
parser.add_argument("--concurrency", type=str, default="1,4,8,16", help="requests arriving together, comma-separated")
parser.add_argument("--recur", type=int, default=4, help="r of every request")
parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per reply at most")
parser.add_argument("--repeats", type=int, default=3, help="runs per setting (the median is shown)")


def timed(scheduler, totals):
    """Wrap the scheduler's phases so each call adds its wall time to totals[phase]."""
    def wrap(name, fn, phase=None):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = phase(*args, **kwargs) if phase else name
                totals[key] += time.perf_counter() - t0
        setattr(scheduler, name, run)
    wrap("_forward", scheduler._forward, lambda ids, lo, rows, decode, at=None: "decode forward" if decode else "prefill forward")
    wrap("_pick", scheduler._pick, lambda rows: "pick tokens")
    wrap("_arrange", scheduler._arrange, lambda order: "move rows")


def profile(scheduler, totals, tokenizer, chats, args, seed):
    totals.clear()
    scheduler.steps = scheduler.decode_rows = 0
    ids = [tokenizer.render_for_completion({"messages": [{"role": "user", "content": prompt(c, 0)},
                                                         {"role": "assistant", "content": ""}]})
           for c in range(chats)]
    requests = [scheduler.submit(p, r=args.recur, max_tokens=args.max_tokens, temperature=1.0, seed=seed + c)
                for c, p in enumerate(ids)]
    t0, first, tokens = time.perf_counter(), None, [0] * len(requests)
    while scheduler.waiting or any(row is not None for row in scheduler.rows):
        scheduler.step()
        for i, r in enumerate(requests):
            while (step := r.poll()) is not None:
                tokens[i] += not step.done[0]
        if first is None and all(tokens):
            first = time.perf_counter() - t0  # every request has its first token
    wall = time.perf_counter() - t0
    tokens = sum(tokens)
    return dict(wall=wall, first=first, tokens=tokens, steps=scheduler.steps, rows=scheduler.decode_rows,
                prompt_tokens=sum(len(p) for p in ids), **totals)


def main():
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer, _ = load_model(args.source, args.model_tag or None, None, torch.device("cpu"))
    print(f"arguments: {vars(args)}, torch threads {torch.get_num_threads()}", flush=True)
    phases = ["prefill forward", "decode forward", "pick tokens", "move rows"]
    print("\n| chats | prompt tokens | decode steps | mean rows | wall ms | all first tokens ms | "
          "decode ms/step | " + " | ".join(f"{p} %" for p in phases) + " | other % |")
    print("|---|---|---|---|---|---|---|" + "---|" * (len(phases) + 1))
    concurrency = [int(c) for c in args.concurrency.split(",")]
    # one scheduler for all runs, as a server keeps one: its cache has grown to size after the warm-up
    scheduler, totals = Scheduler(model, tokenizer, max_rows=max(concurrency)), defaultdict(float)
    timed(scheduler, totals)
    profile(scheduler, totals, tokenizer, max(concurrency), args, 0)  # warm up
    for chats in concurrency:
        runs = [profile(scheduler, totals, tokenizer, chats, args, 100 * rep) for rep in range(args.repeats)]
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        shares = [100 * med[p] / med["wall"] for p in phases]
        print(f"| {chats} | {med['prompt_tokens']:.0f} | {med['steps']:.0f} | {med['rows'] / med['steps']:.1f} | "
              f"{1000 * med['wall']:.0f} | {1000 * med['first']:.1f} | {1000 * med['decode forward'] / med['steps']:.1f} | "
              + " | ".join(f"{s:.0f}" for s in shares) + f" | {100 - sum(shares):.0f} |", flush=True)


if __name__ == "__main__":
    main()
