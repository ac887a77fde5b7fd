"""
Adaptive exit on a trained text model: for each criterion, what it costs in quality (val bpb of
every validation token under that exit, the cap = the fixed r) and what it buys in speed
(greedy decode tokens/s at B = 1 and 8 against fixed r), with the mean iterations per token.
Pointer-chase accuracy under each criterion comes from scripts/depth_eval.py --exit-criterion.

    OMP_NUM_THREADS=1 python -m dev.exit_criteria --model-tag loop_s42 --data-dir ../shared/data/pretrain

Quality: the validation rows of --seq-len tokens are fed one token at a time through a KV cache
with the criterion set, as decoding runs it: every token stops on its own and the later ones
attend to the entries of the iterations it ran.
Speed: a --prompt-len token prompt from the validation text, then --decode-tokens greedy tokens
with the criterion on (the prefill runs the cap, as the engine's does), each way timed --repeats
times round robin; one thread's CPU time, so other jobs on the machine disturb it little.
"""

import argparse
import math
import statistics
import time

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from dev.decode_bench import forward_loop
from dev.token_depths import decode_with_exit
from nanochat.checkpoint_manager import load_model
from nanochat.dataset import list_parquet_files
from nanochat.tokenizer import get_token_bytes

parser = argparse.ArgumentParser(description="Adaptive-exit criteria: val bpb and decode speed against fixed r")
parser.add_argument("--source", type=str, default="base", help="checkpoint stage")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
parser.add_argument("--data-dir", type=str, required=True, help="parquet shards; the last one is validation")
parser.add_argument("--cap", type=int, default=4, help="fixed r, and the cap of every criterion")
parser.add_argument("--criteria", type=str, default="kl:1e-3,kl:1e-2,state:0.01,state:0.03,state:0.1",
                    help="criterion:threshold pairs, comma-separated")
parser.add_argument("--rows", type=int, default=16, help="validation rows for bpb")
parser.add_argument("--seq-len", type=int, default=256, help="tokens per validation row")
parser.add_argument("--batch", type=str, default="1,8", help="decode batch sizes")
parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per decode row")
parser.add_argument("--decode-tokens", type=int, default=48, help="greedy tokens per decode row")
parser.add_argument("--repeats", type=int, default=3, help="timed decode runs per way (the median is shown)")


def validation_rows(tokenizer, data_dir, rows, seq_len):
    """(rows, seq_len + 1) token ids: the validation shard's documents, BOS-joined, cut in rows."""
    ids = []
    for text in pq.read_table(list_parquet_files(data_dir)[-1], columns=["text"]).column("text").to_pylist():
        ids += [tokenizer.get_bos_token_id()] + tokenizer.encode(text)
        if len(ids) >= rows * (seq_len + 1):
            break
    if len(ids) < rows * (seq_len + 1):
        raise SystemExit(f"the validation shard holds {len(ids)} tokens, fewer than {rows} x {seq_len + 1}")
    return torch.tensor(ids[:rows * (seq_len + 1)]).view(rows, seq_len + 1)


@torch.inference_mode()
def bpb(model, data, token_bytes, cap, criterion, threshold):
    """(bits per byte, mean iterations per token) of every target under this exit."""
    x, y = data[:, :-1], data[:, 1:]
    logits, depths = decode_with_exit(model, x, cap, criterion, threshold)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    b = token_bytes[y.flatten()]
    return (loss * (b > 0)).sum().item() / (math.log(2) * b.sum().item()), depths.float().mean().item()


def decode(model, prompts, cap, criterion, threshold, tokens):
    """(decode tokens/s by one thread's CPU time, mean iterations per decoded token)."""
    return forward_loop(model, prompts, cap, tokens + 1, criterion, threshold, clock=time.process_time)


def main(args):
    torch.set_num_threads(1)
    model, tokenizer, meta = load_model(args.source, args.model_tag or None)
    token_bytes = get_token_bytes()
    ways = [("fixed", None, 0.0)]
    for item in args.criteria.split(","):
        name, threshold = item.split(":")
        ways.append((f"{name} {threshold}", name, float(threshold)))
    data = validation_rows(tokenizer, args.data_dir, args.rows, args.seq_len)
    print(f"checkpoint {args.source}/{args.model_tag or '(latest)'}, cap r = {args.cap}, {args.rows} x {args.seq_len} "
          f"validation tokens, decode {args.prompt_len} + {args.decode_tokens} tokens, {args.repeats} repeats")
    quality = {label: bpb(model, data, token_bytes, args.cap, c, t) for label, c, t in ways}
    speed = {}
    for B in [int(b) for b in args.batch.split(",")]:
        prompts = data[:B, :args.prompt_len] if B <= len(data) else data[:1, :args.prompt_len].repeat(B, 1)
        runs = {label: [] for label, _, _ in ways}
        decode(model, prompts[:, :8], args.cap, None, 0.0, 2)  # warm-up
        for _ in range(args.repeats):
            for label, c, t in ways:
                runs[label].append(decode(model, prompts, args.cap, c, t, args.decode_tokens))
        for label, xs in runs.items():
            speed[label, B] = (statistics.median(x[0] for x in xs), min(x[0] for x in xs), max(x[0] for x in xs),
                               statistics.mean(x[1] for x in xs))
    batches = sorted({B for _, B in speed})
    head = " | ".join(f"B={B} decode tok/s (range), x fixed, mean depth" for B in batches)
    print(f"\n| exit | val bpb | vs fixed | mean depth (val) | {head} |\n|---|---|---|---|" + "---|" * len(batches))
    base_bpb = quality["fixed"][0]
    for label, _, _ in ways:
        q, d = quality[label]
        cells = []
        for B in batches:
            med, lo, hi, depth = speed[label, B]
            cells.append(f"{med:,.1f} ({lo:,.1f}-{hi:,.1f}), {med / speed['fixed', B][0]:.2f}x, {depth:.2f}")
        print(f"| {label} | {q:.4f} | {100 * (q / base_bpb - 1):+.2f} % | {d:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(parser.parse_args())
