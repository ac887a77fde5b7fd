"""
A sampling profile of a live chat_web server under C concurrent chats, to see what limits
serving on CPU beyond the model's forward (dev/serve_profile.py times the scheduler alone):
py-spy (`pip install py-spy`; needs ptrace, e.g. root) samples every thread of the server
while dev/serve_bench.py's chat loops run against it, and the samples are sorted into the
scheduler's phases, the request threads, the HTTP event loop and the rest.

    NANOCHAT_BASE_DIR=/work/exp/iso python -m dev.serve_pyspy --source base --model-tag loop_s42 --chats 8

Shares are of the samples where a thread was working: py-spy leaves idle threads out, and the
samples of threads blocked in a wait it still reports (a lock wait with a timeout) are dropped
here by their innermost frame.
"""

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

from dev.serve_bench import round_, start_server

parser = argparse.ArgumentParser(description="py-spy profile of chat_web under concurrent chats")
parser.add_argument("--source", type=str, default="base", help="checkpoint stage served")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
parser.add_argument("--chats", type=int, default=8, help="concurrent chats")
parser.add_argument("--seconds", type=int, default=15, help="sampling time")
parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
parser.add_argument("--recur", type=int, default=4, help="r of every request")
parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per reply at most")
parser.add_argument("--requests-per-chat", type=int, default=3, help="requests each chat sends per round")

# (phase, the frame that marks it), first match wins, checked from the leaf up the stack
PHASES = [("scheduler: prefill forward", "_prefill"), ("scheduler: decode forward", "_decode"),
          ("scheduler: pick tokens", "_pick"), ("scheduler: move rows", "_arrange"),
          ("scheduler: admit", "_admit"), ("request threads (Worker.steps)", "steps"),
          ("HTTP event loop (SSE, JSON, reply decoding)", "run_forever")]


WAITS = {"Condition.wait", "Event.wait", "EpollSelector.select", "Thread.join"}  # blocked, not working


def classify(stack):
    if stack.split(";")[-1].split(" (")[0] in WAITS:
        return "waiting"  # py-spy counts a wait with a timeout (queue.get(timeout=...)) as running
    functions = [frame.split(" (")[0].rpartition(".")[2] for frame in stack.split(";")]  # "Class.method (file:line)"
    for name, marker in PHASES:
        if marker in functions:
            return name
    return "other"


def main():
    args = parser.parse_args()
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        raise SystemExit("error: py-spy is not installed: pip install py-spy")
    args.adaptive = None
    proc, url = start_server(args, args.max_batch)
    out = os.path.join(tempfile.gettempdir(), "serve_pyspy.txt")
    stop = threading.Event()

    def load():
        while not stop.is_set():
            asyncio.run(round_(url, args, args.chats, None, seed0=int(time.time())))

    try:
        asyncio.run(round_(url, args, 2, None, 0))  # warm up
        client = threading.Thread(target=load, daemon=True)
        client.start()
        time.sleep(1)
        subprocess.run([spy, "record", "--pid", str(proc.pid), "--duration", str(args.seconds), "--rate", "200",
                        "--format", "raw", "--output", out, "--nonblocking"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop.set()
        client.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    counts = Counter()
    with open(out) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            counts[classify(stack)] += int(n)
    waiting = counts.pop("waiting", 0)
    total = sum(counts.values())
    print(f"{total} samples over {args.seconds} s at 200 Hz ({total / (200 * args.seconds):.2f} busy threads on "
          f"average), {args.chats} chats, server --max-batch {args.max_batch}, {args.threads} torch threads; "
          f"{waiting} more samples were threads blocked in a wait, left out\n")
    print("| where | share of busy samples |")
    print("|---|---|")
    for name, _ in PHASES + [("other", None)]:
        print(f"| {name} | {100 * counts[name] / total:.1f} % |")
    print(f"\nraw stacks: {out}")


if __name__ == "__main__":
    main()
