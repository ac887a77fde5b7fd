"""
Where a looped model spends its iterations along one text: the text is fed one token at a time
through a KV cache with adaptive exit on, as decoding it would be, and the iterations each
position ran, the compute behind predicting the
next token, are drawn as one bar per token in a PNG. Segments (say, a paragraph of text, then a
pointer-chase table, then its query) get their own colours, and the table of mean iterations
per segment is printed.

    python -m dev.token_depths --model-tag mix_s42 --segment text="The river ..." \
        --segment table=" a b b b c b ... |" --segment query=" q" --cap 32 --out out/mix/token_depths.png

A segment is NAME=TEXT; they are joined in order after BOS. A query segment's last position is
the one whose iterations produce the answer.
"""

import argparse
import statistics

import torch

from nanochat.checkpoint_manager import load_model
from nanochat.kv_cache import EXIT_CRITERIA, KVCache

COLOURS = ["#4c72b0", "#dd8452", "#c44e52", "#55a868", "#8172b3", "#937860"]


@torch.inference_mode()
def decode_with_exit(model, ids, cap, criterion, threshold):
    """(logits (B, T, V) fp32, iterations (B, T)) of a (B, T) tensor of ids fed one token at a time
    under adaptive exit with this cap, as decoding runs it. (One forward of all positions with the
    exit on is not the same under "kl": its coda runs at every iteration and a position would read
    its neighbours' coda entries of the current iteration, not of the one they stopped at.)"""
    B, T = ids.shape
    cache = KVCache(model, B, T, max_r=cap, exit_criterion=criterion, exit_threshold=threshold)
    logits, depths = [], []
    for t in range(T):
        logits.append(model(ids[:, t:t + 1], r=cap, kv_cache=cache)[:, -1].float())
        depths.append(cache.depth[:, -1])
    return torch.stack(logits, 1), torch.stack(depths, 1)


def token_depths(model, ids, cap, criterion="kl", threshold=1e-3):
    """Iterations each position of `ids` (a list) ran under adaptive exit with this cap."""
    ids = torch.tensor([ids], device=model.lm_head.weight.device)
    return decode_with_exit(model, ids, cap, criterion, threshold)[1][0].tolist()


def encode_segments(tokenizer, segments):
    """(ids, [(name, first, last) per segment]) with BOS first (segment "bos")."""
    ids, spans = [tokenizer.get_bos_token_id()], [("bos", 0, 0)]
    for name, text in segments:
        part = tokenizer.encode(text)
        spans.append((name, len(ids), len(ids) + len(part) - 1))
        ids += part
    return ids, spans


def plot(tokenizer, ids, depths, spans, cap, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(name for name, _, _ in spans))
    colour = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(max(8, 0.16 * len(ids)), 4))
    for name, first, last in spans:
        xs = list(range(first, last + 1))
        ax.bar(xs, [depths[i] for i in xs], width=0.85, color=colour[name], label=name)
    ax.set_xticks(range(len(ids)))
    ax.set_xticklabels([repr(tokenizer.decode([t]))[1:-1] for t in ids], rotation=90, fontsize=6, family="monospace")
    ax.set_ylim(0, cap + 1)
    ax.set_ylabel("iterations at this position")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description="Per-token iterations under adaptive exit, as a PNG")
    parser.add_argument("--source", type=str, default="base", help="checkpoint stage, or an exported folder")
    parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
    parser.add_argument("--segment", action="append", required=True, help="NAME=TEXT, in order (repeat the flag)")
    parser.add_argument("--cap", type=int, default=32, help="most iterations per position")
    parser.add_argument("--criterion", type=str, default="kl", choices=EXIT_CRITERIA, help="exit criterion (nanochat/kv_cache.py)")
    parser.add_argument("--threshold", type=float, default=1e-3, help="exit threshold")
    parser.add_argument("--out", type=str, required=True, help="PNG path")
    args = parser.parse_args()
    segments = []
    for item in args.segment:
        name, sep, text = item.partition("=")
        if not sep or not name or not text:
            raise SystemExit(f"--segment {item!r}: expected NAME=TEXT")
        segments.append((name, text))
    model, tokenizer, _ = load_model(args.source, args.model_tag or None)
    ids, spans = encode_segments(tokenizer, segments)
    depths = token_depths(model, ids, args.cap, args.criterion, args.threshold)
    print("| segment | tokens | mean iterations | last position |\n|---|---|---|---|")
    for name, first, last in spans[1:]:
        part = depths[first:last + 1]
        print(f"| {name} | {len(part)} | {statistics.mean(part):.2f} | {part[-1]} |")
    plot(tokenizer, ids, depths, spans, args.cap,
         f"{args.source}/{args.model_tag or 'latest'}: {args.criterion} < {args.threshold:g}, cap {args.cap}", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
