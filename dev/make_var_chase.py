"""
Write the variable-assignment data set (tasks/var_chase.py: a program of assignments mod 10,
a query's value needs `depth` lookups) for the depth-extrapolation runs, in the layout of
dev/make_pointer_chase.py: parquet shards with a `text` column (the last shard is validation)
and one JSONL test file per depth, test_d<depth>.jsonl, at max_depth, 2x and 4x max_depth.

    python -m dev.make_var_chase --out out/var/data --max-depth 4 --test-depths 1,2,3,4,8
    python -m scripts.depth_eval --task var_chase --data-dir out/var/data ...

Seeded: the same arguments write the same files.
"""

import argparse

from dev.make_pointer_chase import parse_depths, write_splits
from nanochat import errors
from tasks.var_chase import make_splits


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (shards and test files)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--n-train", type=int, default=200_000, help="training documents")
    parser.add_argument("--n-val", type=int, default=2_000, help="validation documents (the last shard)")
    parser.add_argument("--n-test", type=int, default=300, help="test problems per depth")
    parser.add_argument("--train-shards", type=int, default=4, help="training shards")
    parser.add_argument("--n-symbols", type=int, default=24, help="variables (lines) in every program (at most 52: a..z, then A..Z)")
    parser.add_argument("--n-roots", type=int, default=4, help="variables assigned a constant (the roots of the forest)")
    parser.add_argument("--max-depth", type=int, default=4, help="D_train: the deepest question in training")
    parser.add_argument("--queries", type=int, default=8, help="questions per training document")
    parser.add_argument("--test-depths", type=str, default="", help="comma-separated test depths (empty = max, 2x max, 4x max)")
    args = parser.parse_args()
    train, val, tests = make_splits(args.seed, args.n_train, args.n_val, args.n_test, args.n_symbols,
                                    args.n_roots, args.max_depth, args.queries, parse_depths(args.test_depths))
    write_splits(args.out, train, val, tests, args.train_shards)


if __name__ == "__main__":
    errors.run(main)
