"""
Validation loss by position in the row: where in its context a model predicts text well. A model
that trained only on short pieces of text can match one trained on whole pieces at the first
positions and fall behind beyond the pieces' length, which one val bpb averages away.

    NANOCHAT_BASE_DIR=out/mix python -m dev.loss_by_position --model-tags cur_join0.5_s42,text_join0.5_s42 \
        --data-dir out/mix/text --buckets 1,16,48,80,128

Prints one markdown table: per model (all sharing the base directory's tokenizer), the mean loss in
nats per token over the validation rows (dev/exit_criteria.validation_rows: the last shard's
documents, BOS-joined, cut in rows of --seq-len) for each bucket of positions [a, b), at r.
"""

import argparse

import torch
import torch.nn.functional as F

from dev.exit_criteria import validation_rows
from nanochat import errors
from nanochat.checkpoint_manager import load_model


@torch.inference_mode()
def position_losses(model, rows, r):
    """(seq_len,) mean loss in nats at each position of the rows, at r iterations."""
    x, y = rows[:, :-1], rows[:, 1:]
    logits = model(x, r=r)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(y.shape).mean(0)


def main():
    parser = argparse.ArgumentParser(description="Validation loss by position in the row")
    parser.add_argument("--source", type=str, default="base", help="checkpoint stage")
    parser.add_argument("--model-tags", type=str, required=True, help="checkpoint folders, comma-separated")
    parser.add_argument("--data-dir", type=str, required=True, help="parquet shards; the last one is validation")
    parser.add_argument("--rows", type=int, default=64, help="validation rows")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per row")
    parser.add_argument("--buckets", type=str, default="1,16,48,80,128", help="bucket edges (positions, from 1)")
    parser.add_argument("--r", type=int, default=4, help="iterations of a looped model")
    args = parser.parse_args()
    edges = [int(e) for e in args.buckets.split(",")]
    if edges != sorted(set(edges)) or edges[0] < 1 or edges[-1] > args.seq_len:
        raise errors.UserError(f"--buckets {args.buckets}: expected increasing positions in 1..{args.seq_len}")
    spans = list(zip(edges, edges[1:]))
    print("| model | " + " | ".join(f"positions {a}-{b - 1}" for a, b in spans) + " |")
    print("|---|" + "---|" * len(spans))
    for tag in args.model_tags.split(","):
        model, tokenizer, _ = load_model(args.source, tag)
        rows = validation_rows(tokenizer, args.data_dir, args.rows, args.seq_len)
        losses = position_losses(model, rows, args.r if model.config.arch == "looped" else None)
        print(f"| {tag} | " + " | ".join(f"{losses[a - 1:b - 1].mean().item():.3f}" for a, b in spans) + " |", flush=True)


if __name__ == "__main__":
    errors.install()
    main()
