"""
Ours against nanochat at equal shape, side by side in one process: a training step (forward,
backward, torch AdamW: the same optimizer for both, so the models are what is compared), the
Engine's greedy decode at B = 1 and 8 (one prompt, B samples: both prefill once and copy the
cache), and the time to the first token of a --ttft-len prompt at B = 1. Our model is the
standard GPT (`arch="gpt"`, the configuration nanochat's d<depth> is), random-init weights, fp32
on the CPU. Each measurement alternates ours and theirs --repeats times and reports the median
ratio ours / theirs with its range (above 1: ours is faster).

    git clone https://github.com/karpathy/nanochat /tmp/nanochat
    OMP_NUM_THREADS=1 python -m dev.peer_bench --nanochat /tmp/nanochat
    OMP_NUM_THREADS=1 python -m dev.peer_bench --nanochat /tmp/nanochat --depth 8 --width 384 --seq-len 512 --batch 2

nanochat's package is also called `nanochat`: its modules are imported under their own names
from the checkout, then moved out of sys.modules, so both live in one interpreter. The stop
tokens' head rows are zeroed in both models, so no row ends before --decode-tokens. Transformers
on an exported folder: BENCHMARKS.md, "Hugging Face export". Not part of the test suite.
"""

import argparse
import importlib
import statistics
import sys
import time

import torch

from dev.decode_bench import silence_stops
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer

parser = argparse.ArgumentParser(description="Ours vs nanochat: training step, Engine decode, TTFT")
parser.add_argument("--nanochat", type=str, required=True, help="a checkout of github.com/karpathy/nanochat")
parser.add_argument("--depth", type=int, default=4, help="layers")
parser.add_argument("--width", type=int, default=256, help="model width (heads of 128)")
parser.add_argument("--seq-len", type=int, default=256, help="training rows' length")
parser.add_argument("--batch", type=int, default=4, help="training rows per step")
parser.add_argument("--vocab-size", type=int, default=32768, help="vocabulary")
parser.add_argument("--decode-tokens", type=int, default=32, help="tokens per decode row")
parser.add_argument("--ttft-len", type=int, default=512, help="prompt tokens for the time to first token")
parser.add_argument("--repeats", type=int, default=7, help="alternations per measurement")


def import_peer(path):
    """nanochat's gpt and engine modules from the checkout at `path`."""
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "nanochat" or k.startswith("nanochat.")}
    sys.path.insert(0, path)
    try:
        gpt, engine = importlib.import_module("nanochat.gpt"), importlib.import_module("nanochat.engine")
    finally:
        sys.path.remove(path)
        for k in [k for k in sys.modules if k == "nanochat" or k.startswith("nanochat.")]:
            del sys.modules[k]
        sys.modules.update(ours)
    return gpt, engine


def build_ours(args, tokenizer):
    config = GPTConfig.from_size(args.depth, arch="gpt", vocab_size=args.vocab_size, n_embd=args.width,
                                 n_head=args.width // 128, n_kv_head=args.width // 128,
                                 sequence_len=max(args.seq_len, args.ttft_len + args.decode_tokens))
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights(generator=torch.Generator().manual_seed(0))
    return silence_stops(model, tokenizer)


def build_theirs(args, peer_gpt, tokenizer):
    config = peer_gpt.GPTConfig(sequence_len=max(args.seq_len, args.ttft_len + args.decode_tokens),
                                vocab_size=args.vocab_size, n_layer=args.depth, n_head=args.width // 128,
                                n_kv_head=args.width // 128, n_embd=args.width)
    with torch.device("meta"):
        model = peer_gpt.GPT(config)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    return silence_stops(model, tokenizer)


def train_step_timer(model, loss_fn, args):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, args.vocab_size, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(1))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()  # nanochat views its targets

    def step():
        t0 = time.process_time()
        loss_fn(model, inputs, targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.process_time() - t0
    step()  # warm-up
    return step


def decode_timer(generate, prompt, B, tokens):
    """Seconds of CPU time per decoded token after the first (the prefill's)."""
    def run():
        steps = generate(prompt, B, tokens)
        next(steps)
        t0 = time.process_time()
        n = sum(1 for _ in steps)
        assert n == tokens - 1, f"a row stopped early: {n} steps"
        return (time.process_time() - t0) / (B * n)
    run()
    return run


def ttft_timer(generate, prompt):
    def run():
        t0 = time.process_time()
        next(generate(prompt, 1, 2))
        return time.process_time() - t0
    run()
    return run


def alternate(ours, theirs, repeats):
    """(median ratio theirs_time / ours_time, min, max, our median s, their median s)."""
    a, b = [], []
    for _ in range(repeats):
        a.append(ours())
        b.append(theirs())
    ratios = [y / x for x, y in zip(a, b)]
    return statistics.median(ratios), min(ratios), max(ratios), statistics.median(a), statistics.median(b)


def main(args):
    torch.set_num_threads(1)
    peer_gpt, peer_engine = import_peer(args.nanochat)
    tokenizer = Tokenizer.train_from_iterator(iter(["the special tokens are what the engines read"]), 256 + 9)
    ours, theirs = build_ours(args, tokenizer), build_theirs(args, peer_gpt, tokenizer)
    n_ours, n_theirs = sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in theirs.parameters())
    print(f"torch {torch.__version__}, 1 thread, fp32; d{args.depth} w{args.width}; parameters ours {n_ours:,} "
          f"theirs {n_theirs:,}; {args.repeats} alternations each")
    rows = []
    rows.append((f"training step, B={args.batch} T={args.seq_len}", *alternate(
        train_step_timer(ours.train(), lambda m, x, y: m.loss(x, y), args),
        train_step_timer(theirs.train(), lambda m, x, y: m(x, targets=y), args), args.repeats)))
    ours.eval(), theirs.eval()
    our_engine, their_engine = Engine(ours, tokenizer, tool=None), peer_engine.Engine(theirs, tokenizer)

    def our_gen(prompt, B, n):
        return our_engine.generate(prompt, num_samples=B, max_tokens=n, temperature=0.0)

    def their_gen(prompt, B, n):
        return their_engine.generate(prompt, num_samples=B, max_tokens=n, temperature=0.0)

    prompt = torch.randint(256, args.vocab_size, (64,), generator=torch.Generator().manual_seed(2)).tolist()
    for B in (1, 8):
        rows.append((f"Engine decode, B={B}", *alternate(decode_timer(our_gen, prompt, B, args.decode_tokens),
                                                          decode_timer(their_gen, prompt, B, args.decode_tokens),
                                                          args.repeats)))
    long_prompt = torch.randint(256, args.vocab_size, (args.ttft_len,), generator=torch.Generator().manual_seed(3)).tolist()
    rows.append((f"TTFT, {args.ttft_len}-token prompt, B=1", *alternate(ttft_timer(our_gen, long_prompt),
                                                                         ttft_timer(their_gen, long_prompt), args.repeats)))
    print("\n| measurement | ours / nanochat throughput, median (range) | ours ms | nanochat ms |\n|---|---|---|---|")
    for name, med, lo, hi, a, b in rows:
        print(f"| {name} | {med:.2f} ({lo:.2f}-{hi:.2f}) | {1e3 * a:.2f} | {1e3 * b:.2f} |")


if __name__ == "__main__":
    main(parser.parse_args())
