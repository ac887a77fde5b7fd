"""
Where a text + reasoning model spends its iterations, by kind of token: under adaptive exit,
fed one token at a time as decoding runs (dev/token_depths.decode_with_exit), the iterations
each position ran, split into

- text: positions of validation text documents (the data folder's last shard), cropped to
  --text-tokens;
- table: the positions of a test problem's table (what the problem states); the problem follows
  BOS, or with --prefix the given text in the same row (the page's paragraph, then the problem);
- answer: the problem's last position, the queried letter, whose iterations produce the answer;

with the table and answer split by test depth (test_d<depth>.jsonl of the data folder, as
scripts/depth_eval.py reads them). Prints one markdown table: tokens, mean, median and 90th
percentile of the iterations, the answer's accuracy under the exit, and the answer's mean over
the text's mean.

    python -m dev.depth_by_kind --model-tag mix_s42 --data-dir out/mix/data --criterion state --threshold 0.3
"""

import argparse
import glob
import json
import os
import re
import statistics

import pyarrow.parquet as pq
import torch

from dev.token_depths import decode_with_exit
from nanochat import errors
from nanochat.checkpoint_manager import load_model
from nanochat.kv_cache import EXIT_CRITERIA
from tasks import pointer_chase


def quantile(values, q):
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def summary(kind, values, accuracy=None, text_mean=None):
    mean = statistics.mean(values)
    ratio = f"{mean / text_mean:.2f}" if text_mean else ""
    acc = f"{accuracy:.2f}" if accuracy is not None else ""
    return (f"| {kind} | {len(values)} | {mean:.2f} | {statistics.median(values):g} | {quantile(values, 0.9):g} | "
            f"{acc} | {ratio} |")


def text_rows(tokenizer, data_dir, n_docs, n_tokens):
    """The first n_docs validation documents with at least n_tokens tokens (BOS first), cropped."""
    shards = sorted(glob.glob(os.path.join(data_dir, "*.parquet")))
    if not shards:
        raise errors.MissingInput(f"no parquet shards in {data_dir}: pass the data folder the model trained on")
    rows = []
    for text in pq.read_table(shards[-1], columns=["text"]).column("text").to_pylist():
        ids = tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())
        if len(ids) >= n_tokens:
            rows.append(ids[:n_tokens])
        if len(rows) == n_docs:
            return rows
    raise errors.UserError(f"the validation shard {shards[-1]} has {len(rows)} documents of >= {n_tokens} tokens, "
                           f"--text-docs asks {n_docs}: lower --text-docs or --text-tokens")


def problems_by_depth(data_dir, limit):
    paths = glob.glob(os.path.join(data_dir, "test_d*.jsonl"))
    if not paths:
        raise errors.MissingInput(f"no test_d<depth>.jsonl in {data_dir}: write them with python -m dev.make_pointer_chase")
    tests = {}
    for path in paths:
        with open(path) as f:
            tests[int(re.search(r"test_d(\d+)\.jsonl$", path).group(1))] = [json.loads(line) for line in f][:limit]
    return dict(sorted(tests.items()))


def problem_depths(model, tokenizer, problems, cap, criterion, threshold, prefix=""):
    """(table depths, answer depths, accuracy) of equal-length problems decoded together, each after
    BOS and `prefix` (text the problem follows in one document, as a chat page's prompt has it)."""
    device = model.lm_head.weight.device
    bos = tokenizer.get_bos_token_id()
    rows = [tokenizer.encode(prefix + p["prompt"], prepend=bos) for p in problems]
    if len({len(r) for r in rows}) != 1:
        raise errors.UserError("the test prompts of one depth differ in length under this tokenizer: a letter is more "
                               "than one token (the spaced surface keeps one token per letter)")
    prefix_ids = tokenizer.encode(prefix) if prefix else []
    start = 1 + len(prefix_ids)
    if rows[0][1:start] != prefix_ids:
        raise errors.UserError("--prefix merges with the problem's first token under this tokenizer: end it with a line break")
    logits, depths = decode_with_exit(model, torch.tensor(rows, device=device), cap, criterion, threshold)
    sep = tokenizer.encode(pointer_chase.spaced(pointer_chase.SEP))[0]
    first_sep = rows[0].index(sep, start)  # the table is every position from the problem's start to the separator
    table = depths[:, start:first_sep].flatten().tolist()
    answers = logits[:, -1].argmax(-1).tolist()
    accuracy = statistics.mean(pointer_chase.grade(p, tokenizer.decode([a])) for p, a in zip(problems, answers))
    return table, depths[:, -1].tolist(), accuracy


def main():
    parser = argparse.ArgumentParser(description="Iterations per token under adaptive exit: text, table and answer")
    parser.add_argument("--source", type=str, default="base", help="checkpoint stage")
    parser.add_argument("--model-tag", type=str, required=True, help="checkpoint folder under the stage")
    parser.add_argument("--data-dir", type=str, required=True, help="folder with the shards and test_d<depth>.jsonl")
    parser.add_argument("--problems", type=int, default=100, help="test problems per depth")
    parser.add_argument("--text-docs", type=int, default=32, help="validation documents")
    parser.add_argument("--text-tokens", type=int, default=128, help="positions of each validation document")
    parser.add_argument("--cap", type=int, default=32, help="most iterations per position")
    parser.add_argument("--criterion", type=str, default="state", choices=EXIT_CRITERIA, help="exit criterion (nanochat/kv_cache.py)")
    parser.add_argument("--threshold", type=float, default=0.3, help="exit threshold")
    parser.add_argument("--prefix", type=str, default="",
                        help="text each problem follows in its row, e.g. a paragraph and a line break (default: none, BOS)")
    parser.add_argument("--out", type=str, default="", help="also write the table to this markdown file")
    args = parser.parse_args()
    model, tokenizer, _ = load_model(args.source, args.model_tag)
    device = model.lm_head.weight.device
    text = text_rows(tokenizer, args.data_dir, args.text_docs, args.text_tokens)
    _, depths = decode_with_exit(model, torch.tensor(text, device=device), args.cap, args.criterion, args.threshold)
    text_depths = depths[:, 1:].flatten().tolist()  # BOS predicts a document's first token: kept out
    text_mean = statistics.mean(text_depths)
    after = f", problems after {args.prefix!r}" if args.prefix else ""
    lines = [f"{args.source}/{args.model_tag}: {args.criterion} < {args.threshold:g}, cap {args.cap}{after}", "",
             "| tokens | count | mean iterations | median | p90 | accuracy | mean / text mean |",
             "|---|---|---|---|---|---|---|", summary("text", text_depths)]
    print("\n".join(lines), flush=True)
    for depth, problems in problems_by_depth(args.data_dir, args.problems).items():
        table, answer, accuracy = problem_depths(model, tokenizer, problems, args.cap, args.criterion, args.threshold,
                                                 args.prefix)
        lines += [summary(f"table, depth {depth}", table, text_mean=text_mean),
                  summary(f"answer, depth {depth}", answer, accuracy, text_mean)]
        print("\n".join(lines[-2:]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    errors.install()
    main()
