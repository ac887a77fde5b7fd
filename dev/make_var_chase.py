"""
Write the variable-assignment data set (tasks/var_chase.py: a program of assignments mod 10,
a query's value needs `depth` lookups) for the depth-extrapolation runs, in the layout of
dev/make_pointer_chase.py: parquet shards with a `text` column (the last shard is validation)
and one JSONL test file per depth, test_d<depth>.jsonl, at max_depth, 2x and 4x max_depth.

    python -m dev.make_var_chase --out out/var/data --max-depth 4 --test-depths 1,2,3,4,8
    python -m scripts.depth_eval --task var_chase --data-dir out/var/data ...

Seeded: the same arguments write the same files.
"""

from dev import make_pointer_chase
from nanochat import errors
from tasks.var_chase import make_splits

if __name__ == "__main__":
    errors.run(make_pointer_chase.main, __doc__, make_splits, symbols="variables (lines) in every program",
               roots="variables assigned a constant (the roots of the forest)", surfaces=("packed",))
