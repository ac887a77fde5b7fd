"""
Write the pointer-chasing data set (tasks/pointer_chase.py) for the depth-extrapolation runs:
parquet shards with a `text` column (the last shard is validation, as everywhere in nanochat)
and one JSONL test file per depth, test_d<depth>.jsonl, at max_depth, 2x and 4x max_depth.

    python -m dev.make_pointer_chase --out out/depth/data --max-depth 4
    python -m dev.make_pointer_chase --out out/depth52/data --n-symbols 52 --test-depths 1,2,3,4,8,16,32

The second asks 8x the training depth: a chain of 32 beside 4 roots needs 2 x 4 - 1 + 32 = 39
letters, more than a..z, so the table goes on with A..Z (52 letters, 157-token prompts).

Seeded: the same arguments write the same files. dev/make_var_chase.py writes its task the same way.
"""

import argparse
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from nanochat import errors
from tasks.pointer_chase import SURFACES, make_splits


def write_shard(path, texts):
    pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), path, row_group_size=1024)


def parse_depths(text):
    """--test-depths "1,2,8" -> [1, 2, 8]; empty -> None (the task's default depths)."""
    if not text:
        return None
    try:
        depths = [int(d) for d in text.split(",")]
    except ValueError:
        depths = []
    if not depths or min(depths) < 1:
        raise errors.UserError(f"--test-depths {text!r}: expected comma-separated positive integers like 1,2,8")
    return depths


def write_splits(out, train, val, tests, train_shards):
    """train in `train_shards` parquet shards, val as the last one, tests as test_d<depth>.jsonl."""
    os.makedirs(out, exist_ok=True)
    per = -(-len(train) // train_shards)
    for i in range(train_shards):
        write_shard(os.path.join(out, f"shard_{i:05d}.parquet"), train[i * per:(i + 1) * per])
    write_shard(os.path.join(out, f"shard_{train_shards:05d}.parquet"), val)
    for depth, problems in tests.items():
        with open(os.path.join(out, f"test_d{depth}.jsonl"), "w") as f:
            for p in problems:
                f.write(json.dumps(p) + "\n")
    print(f"{out}: {len(train):,} train and {len(val):,} val documents of {len(train[0])} chars; "
          f"test depths {sorted(tests)} x {len(next(iter(tests.values())))}")


def main(doc=__doc__, make_splits=make_splits, symbols="letters in every table", roots="roots (answers to choose from) per table",
         surfaces=SURFACES):
    """The command line of a depth-task writer (dev/make_var_chase.py reuses it with its own
    make_splits and one surface): parse the flags, draw the splits, write them."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (shards and test files)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--n-train", type=int, default=200_000, help="training documents")
    parser.add_argument("--n-val", type=int, default=2_000, help="validation documents (the last shard)")
    parser.add_argument("--n-test", type=int, default=300, help="test problems per depth")
    parser.add_argument("--train-shards", type=int, default=4, help="training shards")
    parser.add_argument("--n-symbols", type=int, default=24, help=f"{symbols} (at most 52: a..z, then A..Z)")
    parser.add_argument("--n-roots", type=int, default=4, help=roots)
    parser.add_argument("--max-depth", type=int, default=4, help="D_train: the deepest question in training")
    parser.add_argument("--queries", type=int, default=8, help="questions per training document")
    parser.add_argument("--test-depths", type=str, default="", help="comma-separated test depths (empty = max, 2x max, 4x max)")
    if len(surfaces) > 1:
        parser.add_argument("--surface", type=str, default=surfaces[0], choices=surfaces,
                            help="packed: 'ab bb|qb' for a byte-level tokenizer; spaced: ' a b b b | q b', every letter "
                                 "one word, for a BPE vocabulary that also reads text")
    args = parser.parse_args()
    surface = {"surface": args.surface} if len(surfaces) > 1 else {}
    train, val, tests = make_splits(args.seed, args.n_train, args.n_val, args.n_test, args.n_symbols,
                                    args.n_roots, args.max_depth, args.queries, parse_depths(args.test_depths), **surface)
    write_splits(args.out, train, val, tests, args.train_shards)


if __name__ == "__main__":
    errors.run(main)
