"""
The server's peak RSS under a burst of replies at the recurrence cap: chat_web on a tiny random
checkpoint (the tests' own) with a given --cache-memory, four replies at recur 64 at once (two
of them to the end of the 320-token context), peak RSS (VmHWM) against RSS before the burst.
The four replies of tests/test_web.py's budget test, here also without a budget.

    python -m dev.cache_burst --cache-memory 16M
    python -m dev.cache_burst --cache-memory 1G      # effectively unbounded
"""

import argparse
import asyncio
import tempfile

import httpx

from nanochat.dataset import iter_texts, list_parquet_files
from nanochat.tokenizer import Tokenizer
from tests.conftest import SAMPLE_DATA_DIR
from tests.test_web import HELLO, cap_burst, chat_web_server, memory_kib, save_tiny_checkpoint

parser = argparse.ArgumentParser(description="Peak server RSS under a burst at the recurrence cap")
parser.add_argument("--cache-memory", type=str, default="16M", help="chat_web --cache-memory")
args = parser.parse_args()

tokenizer = Tokenizer.train_from_iterator(iter([t[:20000] for t in iter_texts(list_parquet_files(SAMPLE_DATA_DIR)[:1])]),
                                          512)
with tempfile.TemporaryDirectory() as base:
    save_tiny_checkpoint(tokenizer, base)
    procs = []
    with chat_web_server(base, "--cache-memory", args.cache_memory, "--max-batch", "8", started=procs.append) as url:
        pid = procs[0].pid
        httpx.post(url + "/chat/completions", json={"messages": HELLO, "max_tokens": 2}, timeout=60)  # warm
        before = memory_kib(pid, "VmRSS")

        replies = asyncio.run(cap_burst(url))
        print(f"--cache-memory {args.cache_memory}: replies {[r.status_code for r in replies]}, RSS before "
              f"{before / 1024:.1f} MiB, peak RSS grew by {(memory_kib(pid, 'VmHWM') - before) / 1024:.1f} MiB")
