"""
Train the BPE tokenizer on the first --max-chars characters of the training shards.

    python -m scripts.tok_train --data-dir ../shared/data/pretrain
"""

import argparse
import json
import os
import time

from nanochat import errors
from nanochat.common import get_base_dir, print0
from nanochat.dataset import NOTE, default_data_dir, iter_texts, read_data_source, split_files
from nanochat.report import get_report
from nanochat.tokenizer import Tokenizer

errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback

parser = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer")
parser.add_argument("--vocab-size", type=int, default=32768, help="vocabulary size, special tokens included")
parser.add_argument("--max-chars", type=int, default=2_000_000_000, help="characters of training text to use")
parser.add_argument("--doc-cap", type=int, default=10_000, help="characters kept per document (long documents skew pair counts)")
parser.add_argument("--data-dir", type=str, default=None, help="folder of parquet shards (default $NANOCHAT_BASE_DIR/base_data/climbmix)")
parser.add_argument("--out-dir", type=str, default=None, help="where to save (default $NANOCHAT_BASE_DIR/tokenizer)")
args = parser.parse_args()
print0(f"args: {vars(args)}")

data_dir = args.data_dir or default_data_dir()
out_dir = args.out_dir or os.path.join(get_base_dir(), "tokenizer")


def texts():
    """Documents capped at --doc-cap, stopping after --max-chars, with progress."""
    seen, next_report, t0 = 0, 100_000_000, time.time()
    for text in iter_texts(split_files(data_dir, "train")):
        text = text[:args.doc_cap]
        seen += len(text)
        if seen >= next_report:
            print0(f"read {seen:,} chars ({seen / max(time.time() - t0, 1e-9) / 1e6:.1f}M chars/s)")
            next_report += 100_000_000
        yield text
        if seen >= args.max_chars:
            break
    print0(f"read {seen:,} chars in total")


t0 = time.time()
tokenizer = Tokenizer.train_from_iterator(texts(), args.vocab_size)
train_seconds = time.time() - t0
print0(f"trained vocab {tokenizer.get_vocab_size():,} in {train_seconds:.1f}s")
if tokenizer.get_vocab_size() != args.vocab_size:
    raise errors.UserError(f"the corpus only supports {tokenizer.get_vocab_size()} tokens, not --vocab-size {args.vocab_size}")
tokenizer.save(out_dir)
data_source = read_data_source(data_dir)  # which corpus the merges came from, saved next to the tokenizer
with open(os.path.join(out_dir, NOTE), "w") as f:
    json.dump({**data_source, "max_chars": args.max_chars}, f, indent=1)
print0(f"saved tokenizer to {out_dir} (data: {data_source['dataset'] or 'local folder'} in {data_source['dir']})")

sample = "Hello world! The year is 2026; looped transformers think in latent space. <|bos|> ünïcödé 🤖"
assert tokenizer.decode(tokenizer.encode(sample)) == sample, "round trip failed"

token_bytes = tokenizer.token_bytes().float()
regular = token_bytes[token_bytes > 0]  # special tokens have 0 bytes
get_report().log(section="Tokenizer training", data=[
    vars(args),
    {"data dir": data_dir, "data source": data_source["dataset"] or "local folder", "vocab size": tokenizer.get_vocab_size(), "special tokens": int((token_bytes == 0).sum()),
     "training time (s)": train_seconds, "token bytes min": int(regular.min()), "token bytes max": int(regular.max()),
     "token bytes mean": regular.mean().item()},
])
