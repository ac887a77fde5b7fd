"""
Decode throughput of one looped model three ways, side by side in one process:
- "forward": the bare decode loop, model(token, kv_cache=...) and argmax: the floor, what
  decoding costs with no bookkeeping;
- "engine": Engine.generate with B prompts, a Scheduler stepped in the caller's thread (evals,
  RL and the CLI decode this way);
- "scheduler": the Scheduler in its own thread with B requests of one row each, as the server
  runs it.
Random-init weights, greedy, the same B prompts of random tokens for each way; the stop
tokens' head rows are zeroed so that no row ends before max_tokens (a zero logit never wins
the argmax over a vocabulary of random ones). Tokens/s counts the decoded tokens after each
row's first, which the prefill gives, from the moment every row has its first token.

    OMP_NUM_THREADS=1 python -m dev.decode_bench --size 2 --batch 1,8     # this CPU
    python -m dev.decode_bench --size 20 --batch 1,8 --json out/decode.json  # a GPU (runs/gpu_check.sh)

Each way runs --repeats times per batch, round robin; the table shows the median and the range.
"""

import argparse
import json
import statistics
import time

import torch

from nanochat.common import autodetect_device_type, synchronize
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.kv_cache import KVCache
from nanochat.scheduler import Scheduler
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer

parser = argparse.ArgumentParser(description="Decode tokens/s: bare forward loop vs Engine vs Scheduler thread")
parser.add_argument("--size", type=int, default=2, help="the looped model's size dial")
parser.add_argument("--recur", type=int, default=4, help="r, fixed")
parser.add_argument("--batch", type=str, default="1,8", help="comma-separated batch sizes (rows decoded together)")
parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per row")
parser.add_argument("--max-tokens", type=int, default=48, help="tokens generated per row")
parser.add_argument("--vocab-size", type=int, default=32768, help="the model's vocabulary (a byte-level tokenizer "
                                                                  "names the special tokens)")
parser.add_argument("--repeats", type=int, default=5, help="timed runs per way and batch")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu (empty = autodetect)")
parser.add_argument("--json", type=str, default="", help="also write every figure to this file")


def build_model(size, vocab_size, device, tokenizer):
    config = GPTConfig.from_size(size, vocab_size=vocab_size)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights(generator=torch.Generator(device=device).manual_seed(0))
    return silence_stops(model, tokenizer).eval()


def silence_stops(model, tokenizer):
    """Zero the head rows of the special tokens: with random weights no stop token then wins the
    argmax, so every row decodes its max_tokens (dev/peer_bench.py uses it too)."""
    with torch.no_grad():
        for name in SPECIAL_TOKENS:
            model.lm_head.weight[tokenizer.encode_special(name)] = 0
    return model


@torch.inference_mode()
def forward_loop(model, prompts, r, max_tokens, exit_criterion=None, exit_threshold=0.0, clock=time.perf_counter):
    """(decode tokens/s after each row's first token, mean iterations per decoded token): the bare
    greedy loop over a KV cache. The prefill runs r; an exit criterion applies to the decode (r is
    then its cap). clock: time.perf_counter, or time.process_time for one CPU thread
    (dev/exit_criteria.py)."""
    ids = torch.as_tensor(prompts, device=model.lm_head.weight.device)
    B, T = ids.shape
    cache = KVCache(model, B, T + max_tokens, max_r=r, exit_criterion=exit_criterion, exit_threshold=exit_threshold)
    cache.exit_criterion = None
    token = model(ids, r=r, kv_cache=cache, logits_at=torch.full((B,), T - 1, device=ids.device))[:, -1].argmax(-1, keepdim=True)
    cache.exit_criterion = exit_criterion
    depths = []
    synchronize(ids.device)
    t0 = clock()
    for _ in range(max_tokens - 1):
        token = model(token, r=r, kv_cache=cache)[:, -1].argmax(-1, keepdim=True)
        depths.append(cache.depth[:, -1])  # read after the clock stops: no sync per step
    synchronize(ids.device)
    seconds = clock() - t0
    return B * (max_tokens - 1) / seconds, torch.stack(depths).float().mean().item()


def engine_run(model, tokenizer, prompts, r, max_tokens):
    steps = Engine(model, tokenizer, r=r, tool=None).generate(prompts, max_tokens=max_tokens, temperature=0.0)
    next(steps)  # every row's first token: the prefill
    t0, n = time.perf_counter(), 0
    for step in steps:
        n += sum(not d for d in step.done)
    assert n == len(prompts) * (max_tokens - 1), f"a row stopped early: {n} tokens"
    return n / (time.perf_counter() - t0)


def scheduler_run(model, tokenizer, prompts, r, max_tokens):
    sched = Scheduler(model, tokenizer, max_rows=len(prompts), prefill_chunk=len(prompts[0]),
                      max_len=len(prompts[0]) + max_tokens, tool=None).start()
    try:
        streams = [sched.submit(p, r=r, max_tokens=max_tokens, temperature=0.0).steps() for p in prompts]
        for s in streams:
            next(s)
        t0 = time.perf_counter()
        n = sum(sum(not d for step in s for d in step.done) for s in streams)
        dt = time.perf_counter() - t0
    finally:
        sched.stop()
    assert n == len(prompts) * (max_tokens - 1), f"a row stopped early: {n} tokens"
    return n / dt


WAYS = {"forward": lambda m, tok, *a: forward_loop(m, *a)[0], "engine": engine_run, "scheduler": scheduler_run}


def main(args):
    device = torch.device(args.device_type or autodetect_device_type())
    tokenizer = Tokenizer.train_from_iterator(iter(["a byte-level tokenizer names the special tokens"]), 256 + 9)
    model = build_model(args.size, args.vocab_size, device, tokenizer)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, s{args.size} r={args.recur}, "
          f"prompt {args.prompt_len}, {args.max_tokens} tokens per row, {args.repeats} repeats")
    g = torch.Generator().manual_seed(1)
    results = []
    for B in [int(b) for b in args.batch.split(",")]:
        prompts = torch.randint(256, args.vocab_size, (B, args.prompt_len), generator=g).tolist()
        for fn in WAYS.values():  # warm-up: allocator, kernels
            fn(model, tokenizer, [p[:8] for p in prompts], args.recur, 4)
        runs = {name: [] for name in WAYS}
        for _ in range(args.repeats):
            for name, fn in WAYS.items():
                runs[name].append(fn(model, tokenizer, prompts, args.recur, args.max_tokens))
        floor = statistics.median(runs["forward"])
        for name, xs in runs.items():
            results.append(dict(way=name, batch=B, tok_s=statistics.median(xs), lo=min(xs), hi=max(xs),
                                vs_forward=statistics.median(xs) / floor))
            print(f"  B={B:<3d} {name:10s} {results[-1]['tok_s']:10,.1f} tok/s ({min(xs):,.1f}-{max(xs):,.1f})  "
                  f"{results[-1]['vs_forward']:.2f}x forward", flush=True)
    print("\n| batch | way | decode tok/s, median (range) | vs forward |\n|---|---|---|---|")
    for x in results:
        print(f"| {x['batch']} | {x['way']} | {x['tok_s']:,.1f} ({x['lo']:,.1f}-{x['hi']:,.1f}) | {x['vs_forward']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": str(device), "results": results}, f, indent=1)


if __name__ == "__main__":
    main(parser.parse_args())
