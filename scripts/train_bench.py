"""
Training throughput, side by side in one process: the looped model (r fixed, r sampled,
a larger fixed r) against the standard GPT of the same width whose depth matches the
looped model's layer count at r = mean (prelude + mean * recur + coda; d20 for s20), so
both do about the same FLOPs per token. Real training steps (forward, backward, MuonAdamW)
on synthetic tokens; prints tok/s, achieved FLOP/s, MFU on known GPUs, peak memory, compile
time.

    python -m scripts.train_bench --size 2 --seq-len 256 --batch-size 8 --steps 10
"""

import argparse
import json
import time

import torch

from nanochat import flash_attention
from nanochat.common import COMPUTE_DTYPE, compute_init, print0, synchronize
from nanochat.gpt import GPT, GPTConfig
from nanochat.recurrence import RecurrenceSpec
from nanochat.training import gpu_peak_flops, maybe_compile

parser = argparse.ArgumentParser(description="Training throughput: looped vs standard GPT at equal FLOPs")
parser.add_argument("--size", type=int, default=20, help="the size dial of the looped model")
parser.add_argument("--seq-len", type=int, default=2048, help="context length T")
parser.add_argument("--batch-size", type=int, default=16, help="rows per step")
parser.add_argument("--vocab-size", type=int, default=32768, help="vocabulary (synthetic tokens)")
parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per configuration")
parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
parser.add_argument("--compile", type=int, default=-1, choices=[-1, 0, 1], help="compile the blocks (-1 = on CUDA)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu (empty = autodetect)")
parser.add_argument("--json", type=str, default="", help="also write every figure to this file")
args = parser.parse_args()

_, _, _, _, device = compute_init(args.device_type or None)
flash_attention.announce()
peak = gpu_peak_flops(device)
looped = GPTConfig.from_size(args.size, vocab_size=args.vocab_size, sequence_len=args.seq_len)
recipe = RecurrenceSpec()  # base_train's: the sampler, bptt_k and eval r the benchmark times
R = recipe.eval_r("looped")
depth = looped.n_prelude + R * looped.n_recur + looped.n_coda  # layers a token passes at the eval r
standard = GPTConfig.from_size(args.size, arch="gpt", vocab_size=args.vocab_size, sequence_len=args.seq_len, n_recur=depth)
E_r, E_min = recipe.expectations("looped")

# (label, config, r schedule, flops per token at the expected r)
RUNS = [
    (f"gpt d{depth}", standard, lambda step: 1, None),
    (f"looped s{args.size} r={R}", looped, lambda step: R, None),
    (f"looped s{args.size} r~PLN({recipe.mean:g})", looped, lambda step: recipe.draw(step, "looped", 0), (E_r, E_min)),
    (f"looped s{args.size} r=8", looped, lambda step: 8, None),
]


def build(config):
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    maybe_compile(model, args.compile, device)
    return model


def bench(label, config, r_of, expected):
    model = build(config)
    opt = model.setup_optimizer()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), generator=g).to(device)
    inputs, targets = x[:, :-1], x[:, 1:]
    bptt_k = None if config.arch == "gpt" else recipe.truncation

    def step(i):
        loss = model.loss(inputs, targets, r=r_of(i), bptt_k=bptt_k)
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    for i in range(args.warmup):
        step(10_000 + i)
    synchronize(device)
    warm = time.time() - t0
    rs = [r_of(i) for i in range(args.steps)]
    t0 = time.time()
    for i in range(args.steps):
        step(i)
    synchronize(device)
    dt = time.time() - t0
    tokens = args.steps * args.batch_size * args.seq_len
    if expected is None:  # fixed r: the FLOPs of the r actually run
        r = rs[0]
        flops = model.estimate_flops(r, bptt_k) if config.arch == "looped" else model.estimate_flops()
    else:  # sampled: the FLOPs of the draws actually run in the timed window
        flops = sum(model.estimate_flops(r, bptt_k) for r in rs) / len(rs)
    tok_s = tokens / dt
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    mfu = 100 * flops * tok_s / peak if peak else float("nan")
    return dict(label=label, tok_s=tok_s, flops=flops, tflops=flops * tok_s / 1e12, mfu=mfu, mem=mem,
                warm=warm, mean_r=sum(rs) / len(rs))


print0(f"device {device}, dtype {COMPUTE_DTYPE}, compile {args.compile} (-1 = on CUDA), B={args.batch_size}, T={args.seq_len}, "
       f"{args.steps} timed steps after {args.warmup} warmup")
results = [bench(*run) for run in RUNS]
base = results[0]
print0(f"{'config':<24}{'mean r':>8}{'FLOPs/tok':>12}{'tok/s':>12}{'vs gpt':>8}{'TFLOP/s':>9}{'MFU %':>7}{'mem GiB':>9}{'warmup s':>10}")
for res in results:
    print0(f"{res['label']:<24}{res['mean_r']:>8.2f}{res['flops']:>12.3e}{res['tok_s']:>12,.0f}"
           f"{res['tok_s'] / base['tok_s']:>8.2f}{res['tflops']:>9.3f}{res['mfu']:>7.1f}{res['mem']:>9.2f}{res['warm']:>10.1f}")
with torch.device("meta"):  # FLOPs need shapes only
    meta_looped, meta_gpt = GPT(looped), GPT(standard)
expected_ratio = meta_looped.estimate_flops(E_r, r_grad=E_min) / meta_gpt.estimate_flops()
print0(f"training FLOPs/token looped/gpt: r=4 {results[1]['flops'] / base['flops']:.3f}; sampled r: "
       f"{results[2]['flops'] / base['flops']:.3f} over the timed draws, {expected_ratio:.3f} in expectation "
       f"(E[r]={E_r:.3f}, E[min(r,{recipe.truncation})]={E_min:.3f})")
if args.json:
    with open(args.json, "w") as f:
        plain = [{k: None if v != v else v for k, v in res.items()} for res in results]  # NaN (no GPU peak) -> null
        json.dump({"args": vars(args), "device": str(device), "peak_flops": peak, "results": plain,
                   "expected_flops_ratio": expected_ratio}, f, indent=1)
