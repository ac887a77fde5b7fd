"""
How many text and task tokens a training run on a mixture folder (dev/make_mixture.py) really
reads: base_train's own dataloader is run for the run's steps and every packed document is
counted by kind (a task document starts with the table's first letter, " a"). Packing decides
this, not the bytes on disk: a text document longer than a row is only taken when nothing
shorter is left, so the counts, not the fraction asked, give the steps at which a text-only
and a task-only model read as many tokens of their kind.

    python -m dev.mixture_shares --data-dir out/mix/data --steps 1100 --batch 32 --seq-len 256
"""

import argparse

import torch

from nanochat.dataloader import DataLoader
from nanochat.tokenizer import get_tokenizer


def count_kinds(row, bos, task_first, line_ends=frozenset()):
    """(text tokens, task tokens) among the targets of one packed row of T + 1 tokens (it starts
    with BOS): a document runs from its BOS to the next, and its problem starts at a task_first
    token right after its BOS or after a token that ends a line (a problem joined after text,
    make_mixture --join-share; BPE merges the break with what precedes it, as ".\\n"), which is
    text. BOS targets are counted in neither."""
    text = task = 0
    is_task = False
    for j, t in enumerate(row):
        if t == bos or (t in line_ends and not is_task):
            is_task = j + 1 < len(row) and row[j + 1] == task_first
            if t != bos:
                text += 1
        elif j > 0:
            text, task = (text, task + 1) if is_task else (text + 1, task)
    return text, task


def main():
    parser = argparse.ArgumentParser(description="Text and task tokens a run on a mixture folder reads")
    parser.add_argument("--data-dir", required=True, help="the mixture folder")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps of the run")
    parser.add_argument("--batch", type=int, required=True, help="rows a step (total batch size / sequence length)")
    parser.add_argument("--seq-len", type=int, required=True, help="the run's --max-seq-len")
    args = parser.parse_args()
    tokenizer = get_tokenizer()
    task_first = tokenizer.encode(" a")
    assert len(task_first) == 1, "the tokenizer splits ' a': the task's spaced letters must be one token each"
    line_ends = {i for i in range(tokenizer.get_vocab_size()) if tokenizer.decode([i]).endswith("\n")}
    loader = DataLoader(tokenizer, args.data_dir, "train", args.batch, args.seq_len)
    text = task = 0
    for _ in range(args.steps):
        inputs, targets = loader.next_batch()
        for row in torch.cat([inputs[:, :1], targets], 1).tolist():
            a, b = count_kinds(row, tokenizer.get_bos_token_id(), task_first[0], line_ends)
            text, task = text + a, task + b
    total = text + task
    print(f"{args.steps} steps x {args.batch} x {args.seq_len}: text {text:,} tokens ({text / total:.1%}), "
          f"task {task:,} ({task / total:.1%}); wasted by cropping {loader.tokens_wasted:,}; epoch {loader.epoch}")
    print(f"equal tokens: text-only {round(args.steps * text / total)} steps, task-only {round(args.steps * task / total)} "
          f"steps at the same batch and length")


if __name__ == "__main__":
    main()
