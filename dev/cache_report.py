"""
The serving cache modes on a checkpoint: KV-cache memory per row (exact vs shared) and the
shared mode's error against exact on validation text, decoding one token at a time as a server
does (teacher-forced, so both modes see the same tokens).

    NANOCHAT_BASE_DIR=/tmp/serve_toy python dev/cache_report.py --source base --model-tag s2 \\
        --data-dir dev/sample_data

Error metrics per decoded token, over --sequences validation documents: mean and max KL(exact ||
shared) of the next-token distributions, argmax agreement, and the mean loss (nats) under each.
The exact cache's decode equals the full forward (tests/test_engine.py), so it stands for the model.

With --pointer-chase DIR (a model trained by runs/depth_cpu.sh, DIR its data folder), it also
measures what the shared mode does where iterations matter: each test problem's prompt (the
table, then the question) is decoded one token at a time after BOS, as if an earlier turn had
written the table, and the answer's accuracy is compared between the modes per depth and r.

    NANOCHAT_BASE_DIR=out/depth python dev/cache_report.py --model-tag loop_s42 --data-dir out/depth/data \
        --pointer-chase out/depth/data --recur 8,32
"""

import argparse
import json
import os

import torch
import torch.nn.functional as F

from nanochat.checkpoint_manager import load_model
from nanochat.dataset import iter_texts, split_files
from nanochat.kv_cache import KVCache
from tasks.pointer_chase import grade

parser = argparse.ArgumentParser(description="KV-cache memory per row and the shared mode's error")
parser.add_argument("--source", type=str, default="base", help="checkpoint stage")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
parser.add_argument("--data-dir", type=str, required=True, help="parquet shards; the validation split is read")
parser.add_argument("--recur", type=str, default="2,4,8", help="r values, comma-separated")
parser.add_argument("--sequences", type=int, default=8, help="validation documents")
parser.add_argument("--prefill", type=int, default=32, help="tokens prefilled (exact in both modes)")
parser.add_argument("--decode", type=int, default=96, help="tokens then decoded one at a time")
parser.add_argument("--positions", type=int, default=2048, help="positions per row for the memory figures")
parser.add_argument("--pointer-chase", type=str, default="", help="folder of test_d<depth>.jsonl: answer accuracy per mode")
parser.add_argument("--depths", type=str, default="4,8,16", help="pointer-chase test depths, comma-separated")
parser.add_argument("--problems", type=int, default=200, help="pointer-chase problems per depth")


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
    positions = min(args.positions, model.rotary_len)  # a model trained on short sequences has fewer
    print("\n| r | exact MiB/row | shared MiB/row | exact / shared |")
    print("|---|---|---|---|")
    for r in recurs:
        mib = {m: KVCache(model, 1, positions, max_r=r, mode=m).nbytes / 2**20 for m in ("exact", "shared")}
        print(f"| {r} | {mib['exact']:.2f} | {mib['shared']:.2f} | {mib['exact'] / mib['shared']:.1f}x |")
    print(f"(per row at {positions} positions, {KVCache(model, 1, 1).kv.dtype} cache on this device)")
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

    if args.pointer_chase:
        pointer_chase_accuracy(model, tokenizer, args, recurs)


def pointer_chase_accuracy(model, tokenizer, args, recurs):
    """Answer accuracy, exact vs shared cache, with every prompt token decoded one at a time."""
    print("\n| test depth | r | accuracy exact | accuracy shared | answers that differ |")
    print("|---|---|---|---|---|")
    bos = tokenizer.get_bos_token_id()
    for depth in [int(d) for d in args.depths.split(",")]:
        with open(os.path.join(args.pointer_chase, f"test_d{depth}.jsonl")) as f:
            problems = [json.loads(line) for line in f][:args.problems]
        ids = torch.tensor([tokenizer.encode(p["prompt"], prepend=bos) for p in problems])  # (B, L): one length
        for r in recurs:
            answers = {}
            for mode in ("exact", "shared"):
                cache = KVCache(model, len(problems), ids.size(1), max_r=r, mode=mode)
                for t in range(ids.size(1)):
                    logits = model(ids[:, t:t + 1], r=r, kv_cache=cache)
                answers[mode] = logits[:, -1].argmax(-1).tolist()
            acc = {m: sum(grade(p, tokenizer.decode([a])) for p, a in zip(problems, answers[m])) / len(problems)
                   for m in answers}
            differ = sum(a != b for a, b in zip(answers["exact"], answers["shared"]))
            print(f"| {depth} | {r} | {acc['exact']:.2f} | {acc['shared']:.2f} | {differ} of {len(problems)} |", flush=True)


if __name__ == "__main__":
    main()
