"""
Inference throughput in one run: prefill and decode tokens/s at batch 1 and a larger batch,
for the looped model with fixed r or adaptive exit, exact or shared KV cache, and for the
standard GPT of the same width and the same FLOPs per token (n_prelude + r * n_recur + n_coda
layers). Random-init weights: throughput does not depend on them, but adaptive exit does: at
init the identity inject ignores the state, so every token stops at the first check (depth 2,
the best case); the "kl, threshold 0" row never stops (the worst case: all r iterations plus
the coda and head at every one). A checkpoint's depths come from scripts/chat_cli.py. The
"head last" row prefills as generation does, with the head at the last position only (the
other rows score every position, as an eval does).

    python -m scripts.infer_bench                               # s4, r=4 on CPU
    python -m scripts.infer_bench --size 20 --batch 1,32        # on a GPU

Each row is timed `--repeats` times, round robin, and its fastest run reported. With one
CPU thread (OMP_NUM_THREADS=1) the timer is the process's CPU time, which other jobs on a
shared machine barely disturb; otherwise (GPU, several threads) the wall clock.
Prints a markdown table for BENCHMARKS.md.
"""

import argparse
import time

import torch

from nanochat.common import COMPUTE_DTYPE, autodetect_device_type, synchronize
from nanochat import flash_attention
from nanochat.gpt import GPT, GPTConfig
from nanochat.kv_cache import KVCache
from nanochat.recurrence import resolve_r

parser = argparse.ArgumentParser(description="Prefill/decode throughput of the KV-cache inference paths")
parser.add_argument("--size", type=int, default=4, help="the looped model's size dial (width = ceil(size*64/128)*128)")
parser.add_argument("--recur", type=int, default=-1, help="fixed r, and the cap of adaptive exit (-1 = the recipe's eval r)")
parser.add_argument("--batch", type=str, default="1,8", help="comma-separated batch sizes")
parser.add_argument("--prompt-len", type=int, default=256, help="tokens prefilled per row")
parser.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded per row")
parser.add_argument("--vocab-size", type=int, default=32768, help="vocabulary size")
parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the fastest is reported")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (empty = autodetect)")
args = parser.parse_args()

device = torch.device(args.device_type or autodetect_device_type())
# on a one-thread CPU run the process's CPU time is the honest clock on a shared machine; else wall time
one_thread_cpu = device.type == "cpu" and torch.get_num_threads() == 1
clock = time.process_time if one_thread_cpu else time.perf_counter
print(f"device {device}, compute dtype {COMPUTE_DTYPE}, attention: {flash_attention.BACKEND}, torch {torch.__version__}, "
      f"threads {torch.get_num_threads()}, timer: {'process CPU time' if one_thread_cpu else 'wall clock'}")
print(f"args: {vars(args)}")


def build(config):
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights(generator=torch.Generator(device=device).manual_seed(0))
    return model.eval()


r = resolve_r("looped", requested=args.recur)
looped_cfg = GPTConfig.from_size(args.size, vocab_size=args.vocab_size)
looped = build(looped_cfg)
depth = looped_cfg.n_prelude + r * looped_cfg.n_recur + looped_cfg.n_coda
gpt = build(GPTConfig.from_size(depth, arch="gpt", vocab_size=args.vocab_size, n_embd=looped_cfg.n_embd,
                                n_head=looped_cfg.n_head, n_kv_head=looped_cfg.n_kv_head))
print(f"looped s{args.size}: width {looped_cfg.n_embd}, {looped_cfg.n_prelude}+{looped_cfg.n_recur}x{r}+{looped_cfg.n_coda} "
      f"blocks, {looped.forward_flops(r) / 1e6:.1f} MFLOP/token; "
      f"gpt d{depth} same width: {gpt.forward_flops() / 1e6:.1f} MFLOP/token")

runs = [  # (name, model, r, cache options); "head last": the prefill's head at the last position only, as generation runs it
    (f"gpt d{depth}", gpt, 1, dict()),
    (f"looped r={r}", looped, r, dict(mode="exact")),
    (f"looped r={r} head last", looped, r, dict(mode="exact", head="last")),
    (f"looped r={r}", looped, r, dict(mode="shared")),
    (f"looped r<={r} kl 0", looped, r, dict(mode="exact", exit_criterion="kl", exit_threshold=0.0)),
    (f"looped r<={r} kl 1e-3", looped, r, dict(mode="exact", exit_criterion="kl", exit_threshold=1e-3)),
    (f"looped r<={r} state 0.03", looped, r, dict(mode="exact", exit_criterion="state", exit_threshold=0.03)),
    (f"looped r<={r} kl 0", looped, r, dict(mode="shared", exit_criterion="kl", exit_threshold=0.0)),
]


@torch.inference_mode()
def bench(model, B, r, options, prompt_len, decode_tokens):
    """(prefill tok/s, decode tok/s, mean decode depth, cache bytes). The prefill runs r
    iterations (as the engine's does); adaptive exit applies to decoding."""
    options = dict(options)
    at = torch.full((B,), prompt_len - 1, device=device) if options.pop("head", "all") == "last" else None
    cache = KVCache(model, B, prompt_len + decode_tokens, max_r=r, **options)
    ids = torch.randint(model.config.vocab_size, (B, prompt_len), device=device,
                        generator=torch.Generator(device=device).manual_seed(1))
    cache.exit_criterion = None
    synchronize(device)
    t0 = clock()
    logits = model(ids, r=r, kv_cache=cache, logits_at=at)
    synchronize(device)
    t_prefill = clock() - t0
    cache.exit_criterion = options.get("exit_criterion")
    token = logits[:, -1].argmax(-1, keepdim=True)
    depths = []
    t0 = clock()
    for _ in range(decode_tokens):
        token = model(token, r=r, kv_cache=cache)[:, -1].argmax(-1, keepdim=True)
        depths.append(cache.depth)
    synchronize(device)
    t_decode = clock() - t0
    mean_depth = torch.cat(depths).float().mean().item()
    return B * prompt_len / t_prefill, B * decode_tokens / t_decode, mean_depth, cache.nbytes


batches = [int(b) for b in args.batch.split(",")]
rows = []
for B in batches:
    for name, model, rr, options in runs:
        bench(model, B, rr, options, 16, 2)  # warm-up: allocator, kernels
    timed = [[] for _ in runs]
    for _ in range(args.repeats):  # round robin, so a busy moment of the machine hits every row alike
        for t, (name, model, rr, options) in zip(timed, runs):
            t.append(bench(model, B, rr, options, args.prompt_len, args.decode_tokens))
    for t, (name, model, rr, options) in zip(timed, runs):
        prefill, decode = max(x[0] for x in t), max(x[1] for x in t)  # the least disturbed run
        mean_depth, nbytes = t[0][2:]
        rows.append((name, options.get("mode", "exact"), B, prefill, decode, mean_depth, nbytes))
        print(f"  {name:24s} {rows[-1][1]:6s} B={B:<3d} prefill {prefill:10,.0f} tok/s  decode {decode:9,.1f} tok/s  "
              f"depth {mean_depth:.2f}  cache {nbytes / 2**20:.1f} MiB", flush=True)

print(f"\n| model | cache | batch | prefill tok/s | decode tok/s | decode vs gpt | mean depth | cache MiB "
      f"({args.prompt_len}+{args.decode_tokens} tok/row) |")
print("|---|---|---|---|---|---|---|---|")
for name, mode, B, prefill, decode, mean_depth, nbytes in rows:
    base = next(row[4] for row in rows if row[2] == B and row[0].startswith("gpt"))
    print(f"| {name} | {mode} | {B} | {prefill:,.0f} | {decode:,.1f} | {decode / base:.2f}x | {mean_depth:.2f} | "
          f"{nbytes / 2**20:.1f} |")
