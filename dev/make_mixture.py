"""
Write a text + reasoning mixture as ordinary pretraining shards: the training documents of a
text corpus and of a depth task (dev/make_pointer_chase.py --surface spaced), shuffled together
with a seed, in parquet shards with a `text` column, so tok_train, base_train and every other
tool read it as any corpus. Written shards, not a dataloader that draws from two folders with
weights: nothing else in the pipeline changes, the mixture is a folder one can inspect, and a
run on it resumes like any other.

    python -m dev.make_pointer_chase --out out/mix/task --surface spaced --max-depth 4
    python -m dev.make_mixture --text-dir ../shared/data/pretrain --task-dir out/mix/task \
        --task-fraction 0.25 --out out/mix/data

- The weight is --task-fraction, the task's share of the training bytes (what bits per byte
  count; a spaced table is about 2 bytes a token, English about 4.5, so the task's share of the
  tokens is larger: the tokenizer tells, and tok_train prints it).
- Every text training document is used once; the task's first documents are taken until their
  bytes reach the fraction.
- --text-chunk-chars cuts each text document into pieces of at most that many characters, at
  line breaks where it can (else at spaces), each piece a document. The dataloader packs whole
  documents and crops one that fits no row, dropping its tail; a text document longer than a row
  is only taken when nothing shorter is left, so in a mixture of short task documents and long
  text the text is mostly never read (dev/mixture_shares.py counts it). Pieces a row can hold
  are read whole.
- --join-share puts that share of the task documents after text in one document: the last
  JOIN_CHARS characters of a text document (cut at a space; the rest stays a document of its own),
  a line break, then the problem. Without it a problem only ever follows BOS, and a model that
  chases alone fails on a problem that follows a paragraph (the product's prompt).
- The validation shard (the last) is the text corpus's own, unchanged: the mixture model's val
  bpb is a text bpb, on the same tokens as a text-only model's.
- The task's test files (test_d<depth>.jsonl) are copied, so depth_eval reads the mixture folder.
"""

import argparse
import glob
import os
import random
import shutil

import pyarrow.parquet as pq

from dev.make_pointer_chase import write_shard
from nanochat import errors


def shards(folder, what):
    paths = sorted(glob.glob(os.path.join(folder, "*.parquet")))
    if len(paths) < 2:
        raise errors.MissingInput(f"{folder} holds {len(paths)} parquet shards, need at least 2 (train + the last, "
                                  f"val): point {what} at a folder written as a corpus")
    return paths


def read_texts(paths):
    return [t for p in paths for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()]


def chunk(text, max_chars):
    """`text` cut into pieces of at most max_chars characters that join back to it: lines are
    gathered greedily, and a line longer than max_chars is cut at its last space that fits (or
    hard, if it has none)."""
    pieces, current = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            cut = line.rfind(" ", 0, max_chars) + 1 or max_chars
            line_head, line = line[:cut], line[cut:]
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line_head)
        if len(current) + len(line) > max_chars:
            pieces.append(current)
            current = ""
        current += line
    return [p for p in pieces + [current] if p.strip()]


JOIN_CHARS = 200  # ~45 tokens of text before a ~66-token problem: the two fit a 129-token row


def join(text_docs, task_docs, share, seed):
    """(text documents, task documents) with `share` of the task documents preceded by the tail of a
    text document and a line break; each tail leaves its text document (whose head stays), so no
    byte is added or lost."""
    rng = random.Random(seed)
    n = min(round(share * len(task_docs)), len(text_docs))
    donors = set(rng.sample(range(len(text_docs)), n))
    heads, tails = [], []
    for i, doc in enumerate(text_docs):
        if i not in donors:
            heads.append(doc)
            continue
        start = len(doc) - JOIN_CHARS
        space = doc.rstrip().find(" ", start) if start > 0 else -1  # the tail starts on a word
        cut = space + 1 if space >= 0 else max(start, 0)
        if doc[:cut].strip():
            heads.append(doc[:cut])
        tails.append(doc[cut:].rstrip("\n"))
    joined = [tail + "\n" + task for tail, task in zip(tails, task_docs)] + task_docs[n:]
    return heads, joined


def mix(text_docs, task_docs, fraction, seed, join_share=0.0):
    """The text documents and the first task documents whose bytes make `fraction` of the total
    (`join_share` of those after a text tail, see join), shuffled with `seed`. Returns (documents,
    task documents used)."""
    text_bytes = sum(len(d.encode()) for d in text_docs)
    want = fraction / (1 - fraction) * text_bytes  # task bytes so that task / (task + text) = fraction
    used, total = 0, 0
    while used < len(task_docs) and total < want:
        total += len(task_docs[used].encode())
        used += 1
    if total < want:
        raise errors.UserError(f"--task-fraction {fraction}: needs {want / 1e6:.1f} MB of task documents, the task "
                               f"folder has {total / 1e6:.1f} MB: write more (--n-train) or lower the fraction")
    heads, tasks = join(text_docs, task_docs[:used], join_share, seed) if join_share else (text_docs, task_docs[:used])
    docs = heads + tasks
    random.Random(seed).shuffle(docs)
    return docs, used


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-dir", required=True, help="text corpus shards (the last one is validation)")
    parser.add_argument("--task-dir", required=True, help="a depth task's shards and test_d*.jsonl")
    parser.add_argument("--task-fraction", type=float, required=True, help="the task's share of the training bytes, 0..1")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--text-chunk-chars", type=int, default=0,
                        help="cut text documents into pieces of at most this many characters (0 = keep them whole)")
    parser.add_argument("--join-share", type=float, default=0.0,
                        help="share of the task documents that follow a text tail in one document, 0..1")
    parser.add_argument("--train-shards", type=int, default=4, help="training shards to write")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    args = parser.parse_args()
    if not 0 <= args.task_fraction < 1:
        raise errors.UserError(f"--task-fraction {args.task_fraction}: expected a number in [0, 1)")
    if args.text_chunk_chars < 0:
        raise errors.UserError(f"--text-chunk-chars {args.text_chunk_chars}: expected >= 0 (0 = whole documents)")
    if not 0 <= args.join_share <= 1:
        raise errors.UserError(f"--join-share {args.join_share}: expected a number in [0, 1]")
    if args.train_shards < 1:
        raise errors.UserError(f"--train-shards {args.train_shards}: expected >= 1")
    text, task = shards(args.text_dir, "--text-dir"), shards(args.task_dir, "--task-dir")
    text_docs = read_texts(text[:-1])
    if args.text_chunk_chars:
        text_docs = [piece for doc in text_docs for piece in chunk(doc, args.text_chunk_chars)]
    docs, used = mix(text_docs, read_texts(task[:-1]), args.task_fraction, args.seed, args.join_share)
    os.makedirs(args.out, exist_ok=True)
    per = -(-len(docs) // args.train_shards)
    for i in range(args.train_shards):
        write_shard(os.path.join(args.out, f"shard_{i:05d}.parquet"), docs[i * per:(i + 1) * per])
    shutil.copyfile(text[-1], os.path.join(args.out, f"shard_{args.train_shards:05d}.parquet"))  # text val, as is
    tests = sorted(glob.glob(os.path.join(args.task_dir, "test_d*.jsonl")))
    for path in tests:
        shutil.copyfile(path, os.path.join(args.out, os.path.basename(path)))
    print(f"{args.out}: {len(docs) - used:,} text + {used:,} task documents ({args.task_fraction:.0%} of the training "
          f"bytes from the task, {args.join_share:.0%} of them after text) in {args.train_shards} shards; "
          f"val = {os.path.basename(text[-1])} of the text; {len(tests)} test files")


if __name__ == "__main__":
    errors.run(main)
