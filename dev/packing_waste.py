"""
Measure the dataloader's packing waste (tokens cropped away / tokens consumed) and its speed.

    python dev/packing_waste.py --data-dir ../shared/data/pretrain --seq-len 2048 --batches 50
"""

import argparse
import time

from nanochat.dataloader import DataLoader
from nanochat.tokenizer import get_tokenizer

parser = argparse.ArgumentParser(description="Packing waste of the best-fit dataloader")
parser.add_argument("--data-dir", required=True, help="folder of parquet shards")
parser.add_argument("--seq-len", type=int, default=2048, help="row length T")
parser.add_argument("--batch-size", type=int, default=32, help="rows per batch")
parser.add_argument("--batches", type=int, default=50, help="batches to draw")
parser.add_argument("--buffer-docs", type=int, default=1000, help="documents held for best fit")
args = parser.parse_args()

loader = DataLoader(get_tokenizer(), args.data_dir, "train", args.batch_size, args.seq_len, buffer_docs=args.buffer_docs)
t0 = time.time()
for _ in range(args.batches):
    loader.next_batch()
dt = time.time() - t0
tokens = args.batches * args.batch_size * args.seq_len
print(f"T={args.seq_len} B={args.batch_size} buffer={args.buffer_docs}: waste {loader.waste:.2%}, "
      f"{tokens / dt:,.0f} tok/s, epoch {loader.epoch}")
