"""
Write the chains-of-copies data set (tasks/copy_chase.py: a program binding each variable to a
digit or to another variable; a query's value needs `depth` lookups) for the depth-extrapolation
runs, in the layout of dev/make_pointer_chase.py: parquet shards with a `text` column (the last
shard is validation) and one JSONL test file per depth, test_d<depth>.jsonl.

    python -m dev.make_copy_chase --out out/copy/data --max-depth 4 --test-depths 1,2,3,4,8,16
    python -m scripts.depth_eval --task copy_chase --data-dir out/copy/data ...

Seeded: the same arguments write the same files.
"""

from dev import make_pointer_chase
from nanochat import errors
from tasks.copy_chase import make_splits

if __name__ == "__main__":
    errors.run(make_pointer_chase.main, __doc__, make_splits, symbols="variables (lines) in every program",
               roots="variables bound to a digit (the roots of the forest)", surfaces=("packed",))
