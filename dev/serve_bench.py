"""
Serving benchmark against live chat_web servers on 127.0.0.1: aggregate decode tok/s and
p50/p95 time to first token at several numbers of concurrent chats, fixed r and adaptive exit,
for the continuous-batching server (--max-batch N) side by side with the one-request-per-worker
server (--max-batch 1), both started by this script from the same checkpoint and measured in
one run, interleaved, so a change in the machine's load hits both alike.

    NANOCHAT_BASE_DIR=/tmp/serve_toy python dev/serve_bench.py --source base --model-tag s2
    git worktree add /tmp/before REV && python dev/serve_bench.py --baseline /tmp/before   # a change, before/after
    python dev/serve_bench.py --concurrency 1,8 --repeats 2 --requests-per-chat 2   # quicker

Each chat is a bounded loop: `--requests-per-chat` requests one after another, each a different
prompt (different lengths), temperature 1 with its own seed, `--max-tokens` new tokens at most.
A round runs C chats at once; aggregate tok/s = reply tokens of the round / its wall time
(prefills included); time to first token = request sent -> first token event. Prints one line
per round and a markdown table of medians with the spread (min-max) over --repeats.

By default a round's chats start together, so their first prompts are read in one prefill and the
p95 time to first token is that first wave's. `--stagger S` starts chat c at c * S seconds instead:
chats arriving one after another, each prompt read beside the others' decoding (aggregate tok/s
then counts the ramp as well, so read throughput from a run without it).
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the loop state iterates over latent tokens and the model thinks again before it answers".split()

parser = argparse.ArgumentParser(description="Benchmark chat_web with and without continuous batching")
parser.add_argument("--source", type=str, default="base", help="checkpoint stage served (chat_web --source)")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
parser.add_argument("--concurrency", type=str, default="1,4,8,16", help="concurrent chats per round, comma-separated")
parser.add_argument("--max-batch", type=int, default=16, help="the batching server's --max-batch")
parser.add_argument("--recur", type=int, default=4, help="r (fixed), and the cap under adaptive exit")
parser.add_argument("--adaptive", type=float, default=0.3,
                    help="exit threshold of the adaptive rounds, for chat_web's default criterion (-1 = skip them)")
parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per reply at most")
parser.add_argument("--requests-per-chat", type=int, default=3, help="requests each chat sends, one after another")
parser.add_argument("--repeats", type=int, default=3, help="rounds per setting (spread = min-max over them)")
parser.add_argument("--stagger", type=float, default=0.0,
                    help="seconds between the starts of a round's chats (0 = all at once)")
parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (OMP_NUM_THREADS)")
parser.add_argument("--baseline", type=str, default="",
                    help="a checkout of another revision (git worktree add DIR REV): its server, at the same --max-batch, "
                         "replaces the one-request-per-worker server, for a before/after of a change")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, max_batch, repo=REPO):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "scripts.chat_web", "--device-type", "cpu", "--source", args.source, "--port",
           str(port), "--max-batch", str(max_batch), "--recur", str(args.recur)]
    if args.model_tag:
        cmd += ["--model-tag", args.model_tag]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server (--max-batch {max_batch}) exited:\n{proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).json()["ready"]:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise SystemExit(f"error: the server (--max-batch {max_batch}) did not start in 120 s")
        time.sleep(0.2)


def prompt(chat, i):
    n = 4 + (7 * chat + 13 * i) % 40  # 4..43 words: prompts of different lengths
    return " ".join(WORDS[(chat + i + k) % len(WORDS)] for k in range(n))


async def one_request(client, url, body):
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", url + "/chat/completions", json=body) as res:
        assert res.status_code == 200, res.status_code
        async for line in res.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                raise RuntimeError(event["error"])
            if "token" in event and ttft is None:
                ttft = time.perf_counter() - t0
            if event.get("done"):
                tokens = event["tokens"]
    return ttft, tokens


async def round_(url, args, chats, adaptive, seed0):
    async with httpx.AsyncClient(timeout=600) as client:
        async def chat(c):
            await asyncio.sleep(c * args.stagger)
            out = []
            for i in range(args.requests_per_chat):
                body = {"messages": [{"role": "user", "content": prompt(c, i)}], "max_tokens": args.max_tokens,
                        "temperature": 1.0, "recur": args.recur, "seed": seed0 + 1000 * c + i}
                if adaptive is not None:
                    body["adaptive"] = adaptive
                out.append(await one_request(client, url, body))
            return out
        t0 = time.perf_counter()
        results = [x for xs in await asyncio.gather(*(chat(c) for c in range(chats))) for x in xs]
        wall = time.perf_counter() - t0
    ttfts = sorted(t for t, _ in results if t is not None)
    tokens = sum(n for _, n in results)
    pct = lambda q: ttfts[min(len(ttfts) - 1, round(q * (len(ttfts) - 1)))]
    return dict(tok_s=tokens / wall, p50=pct(0.5), p95=pct(0.95), tokens=tokens, wall=wall)


def main():
    args = parser.parse_args()
    if not args.stagger >= 0:
        raise SystemExit(f"error: --stagger {args.stagger}: expected seconds >= 0")
    print(f"arguments: {vars(args)}", flush=True)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    modes = [("fixed", None)] + ([("adaptive", args.adaptive)] if args.adaptive >= 0 else [])
    other = (("baseline", start_server(args, args.max_batch, os.path.abspath(args.baseline))) if args.baseline
             else ("one-per-worker", start_server(args, 1)))
    servers = {"batched": start_server(args, args.max_batch), other[0]: other[1]}
    results = {}
    try:
        for name, (_, url) in servers.items():  # warm up: first calls allocate and fill caches
            asyncio.run(round_(url, args, 2, None, 0))
        for rep in range(args.repeats):
            for chats in concurrency:
                for mode, adaptive in modes:
                    order = list(servers.items())  # each repeat the other server goes first: no order bias
                    for name, (_, url) in (order if rep % 2 == 0 else order[::-1]):
                        res = asyncio.run(round_(url, args, chats, adaptive, seed0=rep))
                        results.setdefault((mode, chats, name), []).append(res)
                        print(f"repeat {rep} | {mode:8s} | {chats:2d} chats | {name:14s} | {res['tok_s']:7.1f} tok/s | "
                              f"TTFT p50 {1000 * res['p50']:7.1f} ms p95 {1000 * res['p95']:7.1f} ms | "
                              f"{res['tokens']} tokens in {res['wall']:.1f} s", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    spread = lambda xs, f="{:.1f}": f"{f.format(statistics.median(xs))} ({f.format(min(xs))}-{f.format(max(xs))})"
    print("\n| mode | chats | server | aggregate tok/s | x 1 chat | TTFT p50 ms | TTFT p95 ms | p95 / solo p95 |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, _ in modes:
        for name in servers:
            solo = results[(mode, concurrency[0], name)]
            solo_tok = statistics.median(r["tok_s"] for r in solo)
            solo_p95 = statistics.median(r["p95"] for r in solo)
            for chats in concurrency:
                rs = results[(mode, chats, name)]
                tok = [r["tok_s"] for r in rs]
                print(f"| {mode} | {chats} | {name} | {spread(tok)} | {statistics.median(tok) / solo_tok:.2f} | "
                      f"{spread([1000 * r['p50'] for r in rs])} | {spread([1000 * r['p95'] for r in rs])} | "
                      f"{statistics.median(r['p95'] for r in rs) / solo_p95:.2f} |")


if __name__ == "__main__":
    main()
