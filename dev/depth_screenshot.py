"""
The product view of where a model spends its depth: chat_web serves a base checkpoint (text mode),
headless Chromium sends a paragraph followed by a pointer-chase problem with adaptive exit on,
and the page, the prompt's tokens and the continuation shaded by their iterations, is saved as a
PNG. Prints the depths the page recorded: the answer token's (the continuation's first) against
the median of the paragraph's tokens.

    python -m dev.depth_screenshot --model-tag mix_s42 --data-dir out/mix/data --depth 8 --out mix_page.png

Needs Debian's chromium and playwright (pip install -e '.[dev]'), as tests/test_web.py does.
"""

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
PARAGRAPH = ("The river rose in the night and the town woke to water in the streets. By morning the bridge was "
             "gone, and the people on the far bank waited for the boats.")


@contextlib.contextmanager
def serving(flags):
    """`python -m scripts.chat_web FLAGS` on a free local port; yields its URL once ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "--host", "127.0.0.1", "--port", str(port),
                             *flags], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"chat_web exited: {proc.stdout.read()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).json()["ready"]:
                    break
            if time.time() > deadline:
                raise SystemExit("chat_web did not start within 5 minutes")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description="Screenshot of chat_web's depth shading on text + a deep problem")
    parser.add_argument("--model-tag", required=True, help="base checkpoint folder")
    parser.add_argument("--data-dir", required=True, help="folder with test_d<depth>.jsonl (spaced surface)")
    parser.add_argument("--depth", type=int, default=8, help="the problem's depth")
    parser.add_argument("--index", type=int, default=0, help="which problem of that depth")
    parser.add_argument("--recur", type=int, default=32, help="the cap of adaptive exit")
    parser.add_argument("--threshold", type=str, default="", help="exit threshold (empty = the page's suggestion)")
    parser.add_argument("--max-tokens", type=int, default=3, help="continuation tokens")
    parser.add_argument("--out", required=True, help="PNG path")
    args = parser.parse_args()
    with open(os.path.join(args.data_dir, f"test_d{args.depth}.jsonl")) as f:
        problem = [json.loads(line) for line in f][args.index]
    text = PARAGRAPH + "\n" + problem["prompt"]
    from playwright.sync_api import sync_playwright
    flags = ["--source", "base", "--model-tag", args.model_tag, "--device-type", "cpu", "--temperature", "0",
             "--max-new-tokens", str(args.max_tokens), "--recur", str(args.recur)]
    with serving(flags) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 520})
        page.goto(url)
        page.wait_for_function(f"document.getElementById('recur').value === '{args.recur}'")  # /config was read
        page.select_option("#mode", "adaptive")
        if args.threshold:
            page.fill("#adaptive", args.threshold)
        page.fill("#input", text)
        page.click("#send")
        page.wait_for_selector(".msg.assistant .meta:has-text('mean depth')", timeout=600_000)
        page.screenshot(path=args.out, full_page=True)
        prompt = [(t.inner_text(), t.get_attribute("data-depth")) for t in page.locator(".msg.user .tok").all()]
        reply = [(t.inner_text(), t.get_attribute("data-depth")) for t in page.locator(".msg.assistant .tok").all()]
        browser.close()
    text_depths = []
    for tok, depth in prompt:  # the paragraph's tokens: those before the line break
        if "\n" in tok:
            break
        if depth is not None:
            text_depths.append(int(depth))
    answer, answer_depth = reply[0][0], int(reply[0][1])
    median = statistics.median(text_depths)
    print(f"problem depth {args.depth}, answer {problem['answer']!r}: the page shows {answer!r} "
          f"({'right' if answer.startswith(problem['answer']) else 'wrong'}) at depth {answer_depth}; "
          f"paragraph tokens: median depth {median:g}, mean {statistics.mean(text_depths):.2f} over "
          f"{len(text_depths)} tokens; answer / median {answer_depth / median:.1f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
