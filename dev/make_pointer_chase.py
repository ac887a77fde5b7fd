"""
Write the pointer-chasing data set (tasks/pointer_chase.py) for the depth-extrapolation runs:
parquet shards with a `text` column (the last shard is validation, as everywhere in nanochat)
and one JSONL test file per depth, test_d<depth>.jsonl, at max_depth, 2x and 4x max_depth.

    python -m dev.make_pointer_chase --out out/depth/data --max-depth 4

Seeded: the same arguments write the same files.
"""

import argparse
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.pointer_chase import make_splits


def write_shard(path, texts):
    pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), path, row_group_size=1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (shards and test files)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--n-train", type=int, default=200_000, help="training documents")
    parser.add_argument("--n-val", type=int, default=2_000, help="validation documents (the last shard)")
    parser.add_argument("--n-test", type=int, default=300, help="test problems per depth")
    parser.add_argument("--train-shards", type=int, default=4, help="training shards")
    parser.add_argument("--n-symbols", type=int, default=24, help="letters in every table")
    parser.add_argument("--n-roots", type=int, default=4, help="roots (answers to choose from) per table")
    parser.add_argument("--max-depth", type=int, default=4, help="D_train: the deepest question in training")
    parser.add_argument("--queries", type=int, default=8, help="questions per training document")
    parser.add_argument("--test-depths", type=str, default="", help="comma-separated test depths (empty = max, 2x max, 4x max)")
    args = parser.parse_args()
    test_depths = [int(d) for d in args.test_depths.split(",")] if args.test_depths else None
    train, val, tests = make_splits(args.seed, args.n_train, args.n_val, args.n_test, args.n_symbols,
                                    args.n_roots, args.max_depth, args.queries, test_depths)
    os.makedirs(args.out, exist_ok=True)
    per = -(-len(train) // args.train_shards)
    for i in range(args.train_shards):
        write_shard(os.path.join(args.out, f"shard_{i:05d}.parquet"), train[i * per:(i + 1) * per])
    write_shard(os.path.join(args.out, f"shard_{args.train_shards:05d}.parquet"), val)
    for depth, problems in tests.items():
        with open(os.path.join(args.out, f"test_d{depth}.jsonl"), "w") as f:
            for p in problems:
                f.write(json.dumps(p) + "\n")
    print(f"{args.out}: {len(train):,} train and {len(val):,} val documents of {len(train[0])} chars; "
          f"test depths {sorted(tests)} x {args.n_test}")


if __name__ == "__main__":
    main()
