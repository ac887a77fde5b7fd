"""
The serving cache modes on a checkpoint: KV-cache memory per row (exact vs shared) and the
shared mode's error against exact on validation text, decoding one token at a time as a server
does (teacher-forced, so both modes see the same tokens).

    NANOCHAT_BASE_DIR=/tmp/serve_toy python dev/cache_report.py --source base --model-tag s2 \\
        --data-dir dev/sample_data

Error metrics per decoded token, over --sequences validation documents: mean and max KL(exact ||
shared) of the next-token distributions, argmax agreement, and the mean loss (nats) under each.
The exact cache's decode equals the full forward (tests/test_engine.py), so it stands for the model.
"""

import argparse

import torch
import torch.nn.functional as F

from nanochat.checkpoint_manager import load_model
from nanochat.dataset import iter_texts, split_files
from nanochat.kv_cache import KVCache

parser = argparse.ArgumentParser(description="KV-cache memory per row and the shared mode's error")
parser.add_argument("--source", type=str, default="base", help="checkpoint stage")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
parser.add_argument("--data-dir", type=str, required=True, help="parquet shards; the validation split is read")
parser.add_argument("--recur", type=str, default="2,4,8", help="r values, comma-separated")
parser.add_argument("--sequences", type=int, default=8, help="validation documents")
parser.add_argument("--prefill", type=int, default=32, help="tokens prefilled (exact in both modes)")
parser.add_argument("--decode", type=int, default=96, help="tokens then decoded one at a time")
parser.add_argument("--positions", type=int, default=2048, help="positions per row for the memory figures")


@torch.inference_mode()
def main():
    args = parser.parse_args()
    print(f"arguments: {vars(args)}")
    model, tokenizer, meta = load_model(args.source, args.model_tag or None, None, torch.device("cpu"))
    recurs = [int(r) for r in args.recur.split(",")]
    T = args.prefill + args.decode + 1
    seqs = []
    for text in iter_texts(split_files(args.data_dir, "val")):
        ids = tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())
        if len(ids) >= T:
            seqs.append(ids[:T])
        if len(seqs) == args.sequences:
            break
    assert len(seqs) == args.sequences, f"only {len(seqs)} validation documents have {T} tokens"
    idx = torch.tensor(seqs)  # (B, T)
    x, y = idx[:, :-1], idx[:, 1:]
    cfg = model.config
    print(f"model: {cfg.n_prelude} prelude + {cfg.n_recur} recur + {cfg.n_coda} coda blocks, "
          f"kv {cfg.n_kv_head} x {cfg.head_dim}, step {meta['step']}")
    print("\n| r | exact MiB/row | shared MiB/row | exact / shared |")
    print("|---|---|---|---|")
    for r in recurs:
        mib = {m: KVCache(model, 1, args.positions, max_r=r, mode=m).nbytes / 2**20 for m in ("exact", "shared")}
        print(f"| {r} | {mib['exact']:.2f} | {mib['shared']:.2f} | {mib['exact'] / mib['shared']:.1f}x |")
    print(f"(per row at {args.positions} positions, {KVCache(model, 1, 1).kv.dtype} cache on this device)")
    print("\n| r | mean KL nats | max KL nats | argmax agreement | loss exact | loss shared |")
    print("|---|---|---|---|---|---|")
    for r in recurs:
        logp = {}
        for mode in ("exact", "shared"):
            cache = KVCache(model, len(seqs), T, max_r=r, mode=mode)
            model(x[:, :args.prefill], r=r, kv_cache=cache)
            out = [model(x[:, t:t + 1], r=r, kv_cache=cache) for t in range(args.prefill, x.size(1))]
            logp[mode] = F.log_softmax(torch.cat(out, dim=1), dim=-1)  # (B, decode, V)
        e, s = logp["exact"], logp["shared"]
        kl = (e.exp() * (e - s)).sum(-1)
        target = y[:, args.prefill:]
        loss = {m: F.nll_loss(lp.flatten(0, 1), target.flatten()).item() for m, lp in logp.items()}
        agree = (e.argmax(-1) == s.argmax(-1)).float().mean().item()
        print(f"| {r} | {kl.mean().item():.4f} | {kl.max().item():.4f} | {agree:.1%} | {loss['exact']:.4f} | "
              f"{loss['shared']:.4f} |")


if __name__ == "__main__":
    main()
