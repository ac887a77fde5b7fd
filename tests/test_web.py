"""chat_web: the API's input limits (each bad input -> its 4xx naming the field, the server still
serving), the reply stream, the worker pool under concurrent requests, a failing generation, and
the page in real headless Chromium against a uvicorn server on a tiny saved checkpoint."""

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from nanochat import chat_api
from nanochat.chat_api import RequestError, Worker, read_body
from nanochat.checkpoint_manager import save_checkpoint
from nanochat.execution import sandbox_mode
from scripts.chat_web import create_app, defaults_from, load_workers, parser
from tests.test_engine import chat_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
HELLO = [{"role": "user", "content": "hello there"}]


def save_tiny_checkpoint(tokenizer, base_dir):
    """$NANOCHAT_BASE_DIR with the tokenizer and a tiny random SFT checkpoint (eval_r 3)."""
    tokenizer.save(os.path.join(base_dir, "tokenizer"))
    model = chat_model()
    meta = {"model_config": dataclasses.asdict(model.config), "eval_r": 3}
    save_checkpoint(os.path.join(base_dir, "chatsft_checkpoints", "tiny"), 7, model.state_dict(), {}, {}, meta)
    return base_dir


@pytest.fixture
def base_dir(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    return save_tiny_checkpoint(tokenizer, tmp_path)


@pytest.fixture
def app(base_dir):
    """The app as the command line builds it: load_workers from the checkpoint, defaults from the flags."""
    args = parser.parse_args(["--device-type", "cpu", "--max-new-tokens", "8"])
    workers, meta = load_workers(args)
    return create_app(workers, defaults_from(args, meta))


def events(text):
    """The JSON payloads of an SSE body, in order."""
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            out.append(json.loads(block[len("data: "):]))
    return out


def long_chat(n):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(n)]


BAD_REQUESTS = [  # (body, status, text the error must contain)
    ({}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": HELLO + [{"role": "user", "content": "again"}]}, 400, "messages[1].role"),
    ({"messages": HELLO + [{"role": "assistant", "content": "hi"}]}, 400, "end with a user message"),
    ({"messages": [{"role": "system", "content": "be nice"}] + HELLO}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x" * 8001}]}, 413, "messages[0].content"),
    ({"messages": long_chat(501)}, 413, "messages"),
    ({"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 7000} for i in range(5)]},
     413, "characters in all"),
    ({"messages": [{"role": "user", "content": "the loop " * 200}]}, 413, "positions"),  # prompt + max_tokens > context
    ({"messages": HELLO, "max_tokens": 400}, 413, "positions"),
    ({"messages": HELLO, "temperature": 2.5}, 400, "temperature"),
    ({"messages": HELLO, "temperature": -0.1}, 400, "temperature"),
    ({"messages": HELLO, "temperature": "hot"}, 400, "temperature"),
    ({"messages": HELLO, "top_k": 0}, 400, "top_k"),
    ({"messages": HELLO, "top_k": 201}, 400, "top_k"),
    ({"messages": HELLO, "top_k": 5.5}, 400, "top_k"),
    ({"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": HELLO, "max_tokens": 5000}, 400, "max_tokens"),
    ({"messages": HELLO, "recur": 0}, 400, "recur"),
    ({"messages": HELLO, "recur": 65}, 400, "recur"),
    ({"messages": HELLO, "recur": True}, 400, "recur"),
    ({"messages": HELLO, "adaptive": -1}, 400, "adaptive"),
    ({"messages": HELLO, "topk": 5}, 400, "topk"),
    ([1, 2], 400, "body"),
    ({"text": ""}, 400, "text"),
    ({"text": 5}, 400, "text"),
    ({"text": "hi", "messages": HELLO}, 400, "not both"),
    ({"text": "x" * 32001}, 413, "text"),
    ({"text": "the loop " * 200}, 413, "text is"),  # prompt + max_tokens > positions
]


def test_validation_rejects_each_bad_input_and_keeps_serving(app):
    with TestClient(app) as client:
        for body, status, field in BAD_REQUESTS:
            res = client.post("/chat/completions", json=body)
            assert res.status_code == status, (body, res.status_code, res.text)
            assert field in res.json()["error"], (body, res.json())
        res = client.post("/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert res.status_code == 400 and res.json()["error"].startswith("body:")
        health = client.get("/health").json()
        assert health["ready"] is True and health["sandbox"] == sandbox_mode()[0]
        assert health["workers"] == [{"device": "cpu", "busy": False, "healthy": True, "last_error": ""}]
        ok = client.post("/chat/completions", json={"messages": HELLO, "max_tokens": 4, "seed": 1})
        assert ok.status_code == 200 and events(ok.text)[-1]["done"]
        stats = client.get("/stats").json()
        assert stats["requests_rejected"] == len(BAD_REQUESTS) + 1 and stats["requests_served"] == 1
        assert stats["free"] == 1 and stats["busy"] == 0


def test_stream_order_depths_and_page(app):
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "looped nanochat" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # self-contained: nothing fetched from elsewhere
        config = client.get("/config").json()
        assert config["defaults"] == {"temperature": 0.8, "top_k": 50, "max_tokens": 8, "recur": 3}
        # the serving default exit (BENCHMARKS, "Adaptive exit criteria") and its suggested threshold, for the page
        assert (config["exit_criterion"], config["adaptive"]) == ("state+kl", 0.3)
        assert app.state.pool.workers[0].scheduler.exit_criterion == "state+kl"
        body = {"messages": HELLO + [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}],
                "temperature": 0, "max_tokens": 6}
        with client.stream("POST", "/chat/completions", json=body) as res:
            assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
            evs = events(res.read().decode())
        *tokens, done = evs
        assert tokens and all(set(e) == {"token", "depth", "type", "part"} and e["depth"] == 3
                              for e in tokens)  # fixed r = eval_r
        assert done["done"] is True and done["r"] == 3 and done["mean_depth"] == 3.0 and 1 <= done["tokens"] <= 6
        # greedy is deterministic; adaptive exit reports depths within [1, r] and their mean
        again = events(client.post("/chat/completions", json=body).text)
        assert again == evs
        adaptive = events(client.post("/chat/completions", json={**body, "recur": 6, "adaptive": 10.0}).text)
        depths = [e["depth"] for e in adaptive[:-1]]
        assert adaptive[-1]["r"] == 6 and all(1 <= d <= 6 for d in depths)
        assert min(depths) < 6  # a threshold of 10 nats stops early (only the prefill's token runs all 6)
        assert 1 <= adaptive[-1]["mean_depth"] < 6


def test_text_mode_continues_the_text_and_reads_its_depths(app, tokenizer):
    """{"text": ...}: the text after BOS, no chat template; with adaptive exit the stream opens with
    every prompt token and the iterations behind its prediction (None for the first, after BOS),
    then the reply, whose first token's depth is the exit's at the prompt's last position."""
    text = "The river rose in the night and the town woke"
    ids = tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())
    with TestClient(app) as client:
        assert client.get("/config").json()["mode"] == "chat"  # create_app's default; chat_web gives base models "text"
        body = {"text": text, "temperature": 0, "max_tokens": 4, "recur": 6, "adaptive": 10.0}
        first, *rest = events(client.post("/chat/completions", json=body).text)
        assert [p["token"] for p in first["prompt"]] == [tokenizer.decode([t]) for t in ids[1:]]
        depths = [p["depth"] for p in first["prompt"]]
        assert depths[0] is None and all(1 <= d <= 6 for d in depths[1:]) and min(depths[1:]) < 6
        assert rest[-1]["done"] and all(1 <= e["depth"] <= 6 for e in rest[:-1])
        fixed = events(client.post("/chat/completions", json={**body, "adaptive": None}).text)
        assert "prompt" not in fixed[0] and all(e["depth"] == 6 for e in fixed[:-1])  # fixed r: no prompt reading


def test_failed_generation_emits_error_and_frees_the_worker(app, monkeypatch):
    with TestClient(app) as client:
        model = app.state.pool.workers[0].model

        def boom(*a, **kw):
            raise RuntimeError("simulated device failure")
        monkeypatch.setattr(model, "forward", boom)
        evs = events(client.post("/chat/completions", json={"messages": HELLO}).text)
        assert evs == [{"error": "generation failed: RuntimeError: simulated device failure"}]
        health = client.get("/health")  # its only worker just failed: not ready, and why
        assert health.status_code == 503 and health.json()["ready"] is False
        assert health.json()["workers"][0]["last_error"] == evs[0]["error"]
        monkeypatch.undo()
        stats = client.get("/stats").json()
        assert stats["requests_failed"] == 1 and stats["free"] == 1
        assert events(client.post("/chat/completions", json={"messages": HELLO, "max_tokens": 3}).text)[-1]["done"]
        assert client.get("/health").json()["ready"] is True  # a good generation: healthy again


def test_hostile_bodies_get_4xx_and_tiny_temperatures_are_greedy(app):
    with TestClient(app) as client:
        for raw in (b"[" * 100000 + b"]" * 100000, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
            res = client.post("/chat/completions", content=raw, headers={"Content-Type": "application/json"})
            assert res.status_code == 400 and res.json()["error"] == "body: JSON nested too deeply", res.text
        res = client.post("/chat/completions", json={"messages": HELLO, "temperature": "x" * 100000})
        assert res.status_code == 400 and len(res.json()["error"]) < 200
        greedy = events(client.post("/chat/completions", json={"messages": HELLO, "temperature": 0}).text)
        for t in (1e-45, 5e-324, 1e-4):
            res = client.post("/chat/completions", json={"messages": HELLO, "temperature": t, "seed": 5})
            assert res.status_code == 200 and events(res.text) == greedy, t
        big = client.post("/chat/completions", content=b" " * (60 * 1024 ** 2), headers={"Content-Type": "application/json"})
        assert big.status_code == 413 and big.json()["error"].startswith("body: 62914560 bytes, at most")
        assert client.get("/health").json()["ready"]


def test_body_is_capped_while_it_is_read():
    """Without a Content-Length (chunked upload), reading stops one chunk past the cap."""
    sent = []

    class Upload:
        headers = {"content-type": "application/json"}

        async def stream(self):
            while True:  # endless: a reader that waits for the end would never return
                sent.append(1)
                yield b"x" * 65536

    with pytest.raises(RequestError) as e:
        asyncio.run(read_body(Upload()))
    assert e.value.status == 413 and len(sent) == chat_api.MAX_BODY_BYTES // 65536 + 1


def test_api_key_and_default_bind_address(base_dir, tokenizer):
    assert parser.parse_args([]).host == "127.0.0.1"
    app = create_app([Worker(chat_model(), tokenizer, "cpu")], dict(temperature=0.0, top_k=50, max_tokens=3, recur=2),
                     api_key="s3cret")
    with TestClient(app) as client:
        body = {"messages": HELLO}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            res = client.post("/chat/completions", json=body, headers=headers)
            assert res.status_code == 401 and "API key" in res.json()["error"]
        assert client.get("/stats").status_code == 401
        assert client.get("/health").status_code == 200 and client.get("/config").json()["auth"] is True
        ok = client.post("/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and events(ok.text)[-1]["done"]
        assert client.get("/stats", headers={"Authorization": "Bearer s3cret"}).json()["requests_served"] == 1


def test_worker_pool_under_20_concurrent_requests(base_dir, tokenizer):
    """Two CPU workers (two replicas) behind the queue: every request answered, none lost."""
    workers = [Worker(chat_model(), tokenizer, "cpu") for _ in range(2)]
    app = create_app(workers, dict(temperature=1.0, top_k=50, max_tokens=6, recur=2))
    pool = app.state.pool
    answered, busy_seen = [], set()

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            async def one(i):
                res = await client.post("/chat/completions", json={"messages": [{"role": "user", "content": f"q{i}"}],
                                                                   "seed": i})
                answered.append(i)
                return res

            async def watch():
                while len(answered) < 20:
                    s = pool.stats()
                    assert s["busy"] + s["free"] == 2, s
                    busy_seen.add(s["busy"])
                    await asyncio.sleep(0.002)
            results = await asyncio.gather(*(one(i) for i in range(20)), watch())
            return results[:20], (await client.get("/stats")).json()
    results, stats = asyncio.run(main())
    assert all(r.status_code == 200 and events(r.text)[-1]["done"] for r in results)
    assert stats["requests_served"] == 20 and stats["requests_failed"] == 0
    assert stats["busy"] == 0 and stats["free"] == 2
    assert 2 in busy_seen and sorted(answered) == list(range(20))  # both workers were used at once


# -----------------------------------------------------------------------------
# the page in a real browser

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def chat_web_server(base_dir, *flags, open_files=None, started=None):
    """`python -m scripts.chat_web` in a subprocess on a free port of 127.0.0.1, serving the
    checkpoints under base_dir; yields its URL once /health says ready. open_files: its
    RLIMIT_NOFILE, soft and hard; started(proc) is called with the server's process."""
    port = free_port()
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir), "OMP_NUM_THREADS": "1"}
    log = open(os.path.join(base_dir, "server.log"), "w")
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))) if open_files else None
    proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "--device-type", "cpu", "--host", "127.0.0.1",
                             "--port", str(port), *flags], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=limit)
    url = f"http://127.0.0.1:{port}"
    if started:
        started(proc)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, open(log.name).read()
            try:
                if httpx.get(url + "/health", timeout=1).json()["ready"]:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not start:\n" + open(log.name).read()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@contextlib.contextmanager
def in_process_server(app):
    """uvicorn on a thread of this process, for apps over hand-made workers; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(tokenizer, tmp_path_factory):
    """The server (started once for the module's tests), serving the tiny checkpoint."""
    base_dir = save_tiny_checkpoint(tokenizer, tmp_path_factory.mktemp("served"))
    with chat_web_server(base_dir, "--max-new-tokens", "24", "--recur", "4") as url:
        yield url


def test_real_server_streams_and_survives_a_client_that_leaves(server):
    """Over a real socket: events arrive one by one; a client that hangs up mid-reply stops the
    generation and its worker returns to the pool."""
    body = {"messages": HELLO, "max_tokens": 250, "temperature": 1.0, "seed": 3}
    before = httpx.get(server + "/stats").json()
    with httpx.stream("POST", server + "/chat/completions", json=body, timeout=60) as res:
        assert res.status_code == 200
        first = json.loads(next(line for line in res.iter_lines() if line)[len("data: "):])
        assert set(first) == {"token", "depth", "type", "part"}  # then hang up, mid-reply
    deadline = time.time() + 30
    while (stats := httpx.get(server + "/stats").json())["free"] != 1:
        assert time.time() < deadline, stats
        time.sleep(0.05)
    assert stats["requests_disconnected"] == before["requests_disconnected"] + 1  # abandoned, not completed
    assert stats["requests_served"] == before["requests_served"] and stats["requests_failed"] == before["requests_failed"]
    evs = events(httpx.post(server + "/chat/completions", json={**body, "max_tokens": 5}, timeout=60).text)
    assert evs[-1]["done"] and httpx.get(server + "/stats").json()["requests_served"] == before["requests_served"] + 1


def test_non_streamed_request_stops_when_its_client_leaves(server):
    """/v1/chat/completions without stream: a client that hangs up before the reply is whole
    cancels its rows (the worker is free long before the reply would have ended)."""
    body = json.dumps({"model": "nanochat-sft-tiny-7", "messages": HELLO, "max_tokens": 280, "recur": 64, "n": 4,
                       "temperature": 1.0}).encode()
    before = httpx.get(server + "/stats").json()
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.time() + 30
        while httpx.get(server + "/stats").json()["free"] != 0:  # generating
            assert time.time() < deadline
            time.sleep(0.05)
    left = time.time()
    while (stats := httpx.get(server + "/stats").json())["free"] != 1:
        assert time.time() < left + 10, stats
        time.sleep(0.05)
    assert stats["requests_disconnected"] == before["requests_disconnected"] + 1
    assert stats["requests_served"] == before["requests_served"]


def test_page_in_headless_chromium(server, tmp_path):
    if not os.path.exists(CHROMIUM):  # a skip with its reason, except where .ci/run asks for the browser
        why = f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium chromium-driver)"
        if os.environ.get("NANOCHAT_REQUIRE_CHROMIUM") == "1":
            pytest.fail(why + "; NANOCHAT_REQUIRE_CHROMIUM=1 (.ci/run) requires it")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright
    shot = os.path.join(tmp_path, "chat_web.png")
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(  # a fresh profile: no first-run state, no sync
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            viewport={"width": 1100, "height": 700},
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server)
            page.wait_for_function("document.getElementById('recur').value === '4'")  # /config was read
            page.select_option("#mode", "adaptive")
            page.fill("#adaptive", "0.5")
            page.fill("#input", "What does the loop think about?")
            page.click("#send")
            page.wait_for_selector(".msg.assistant .meta:has-text('mean depth')", timeout=60_000)
            assert page.locator(".msg.user .content").inner_text() == "What does the loop think about?"
            toks = page.locator(".msg.assistant .tok")
            assert toks.count() >= 1 and page.locator(".msg.assistant .content").inner_text().strip()
            depth = int(toks.first.get_attribute("data-depth"))
            assert 1 <= depth <= 4 and toks.first.get_attribute("title") == f"depth {depth} of 4"
            assert "background: rgba(" in toks.first.get_attribute("style")  # shaded by depth
            assert page.locator(".msg.assistant .error").count() == 0 and not errors, errors
            page.screenshot(path=shot, full_page=True)
            # regenerate replaces the reply; the conversation stays user, assistant
            page.click(".msg.assistant .role button:has-text('regenerate')")
            page.wait_for_selector(".msg.assistant .meta:has-text('mean depth')", timeout=60_000)
            assert page.locator(".msg").count() == 2
            # edit the user message: the conversation restarts from it
            page.click(".msg.user .role button:has-text('edit')")
            page.fill(".msg.user textarea", "Edited question")
            page.click(".msg.user button:has-text('save & send')")
            page.wait_for_selector(".msg.assistant .meta:has-text('mean depth')", timeout=60_000)
            assert page.locator(".msg").count() == 2
            assert page.locator(".msg.user .content").inner_text() == "Edited question"
            # a request the server rejects shows its error, naming the field
            page.fill("#top_k", "500")
            page.fill("#input", "again")
            page.click("#send")
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "top_k" in page.inner_text("#status")
            # text mode: the text is continued, and under adaptive exit its own tokens are shaded too
            page.fill("#top_k", "50")
            page.select_option("#kind", "text")
            assert page.locator(".msg").count() == 0  # a new mode starts empty
            page.fill("#input", "The river rose in the night")
            page.click("#send")
            page.wait_for_selector(".msg.assistant .meta:has-text('mean depth')", timeout=60_000)
            prompt = page.locator(".msg.user .tok")
            assert page.locator(".msg.user .role").inner_text().startswith("Text")
            assert prompt.count() >= 5 and prompt.first.get_attribute("data-depth") is None
            assert all(1 <= int(prompt.nth(i).get_attribute("data-depth")) <= 4 for i in range(1, prompt.count()))
            assert page.locator(".msg.user .content").inner_text() == "The river rose in the night"
            page.screenshot(path=os.path.join(tmp_path, "chat_web_text.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert os.path.getsize(shot) > 10_000
    if os.environ.get("NANOCHAT_TEST_ARTIFACTS"):
        os.makedirs(os.environ["NANOCHAT_TEST_ARTIFACTS"], exist_ok=True)
        for path in (shot, os.path.join(tmp_path, "chat_web_text.png")):
            shutil.copy(path, os.environ["NANOCHAT_TEST_ARTIFACTS"])


def test_one_worker_batches_concurrent_chats(base_dir, tokenizer):
    """Six greedy chats at once on one worker share its decode steps, and each reply is the one
    the same request gets alone."""
    worker = Worker(chat_model(), tokenizer, "cpu", max_rows=4)
    app = create_app([worker], dict(temperature=0.0, top_k=50, max_tokens=10, recur=2))
    bodies = [{"messages": [{"role": "user", "content": "q" * (1 + 7 * i)}], "recur": 1 + i % 3} for i in range(6)]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            together = await asyncio.gather(*(client.post("/chat/completions", json=b) for b in bodies))
            steps, rows = worker.scheduler.steps, worker.scheduler.decode_rows
            alone = [await client.post("/chat/completions", json=b) for b in bodies]
            return together, alone, rows / steps
    together, alone, mean_batch = asyncio.run(main())
    assert [events(r.text) for r in together] == [events(r.text) for r in alone]
    assert all(events(r.text)[-1]["tokens"] > 0 for r in together) and mean_batch > 2


def test_worker_steps_reproduce_the_engine_and_the_seed(tokenizer):
    """One row at a seed is the Engine's sampled reply at that seed (tokens and depths); n rows
    come back the same for the same seed, and row 0 is the n = 1 reply."""
    from nanochat.engine import Engine
    model = chat_model()
    worker = Worker(model, tokenizer, "cpu", max_rows=4)
    try:
        req = chat_api.ChatRequest(HELLO, 1.0, 50, max_tokens=10, recur=3, adaptive=None, seed=11, n=1)
        ids = tokenizer.render_for_completion({"messages": HELLO + [{"role": "assistant", "content": ""}]})
        ours = list(worker.steps(ids, req, threading.Event()))
        theirs = list(Engine(model, tokenizer, r=3).generate(ids, max_tokens=10, temperature=1.0, top_k=50, seed=11))
        assert [s.tokens for s in ours] == [s.tokens for s in theirs]
        assert [s.depths for s in ours] == [s.depths for s in theirs]
        req.n = 3
        first, again = (list(worker.steps(ids, req, threading.Event())) for _ in range(2))
        assert [s.tokens for s in first] == [s.tokens for s in again]
        assert [s.tokens[0] for s in first] == [s.tokens[0] for s in ours]
        assert len({tuple(s.tokens[b] for s in first) for b in range(3)}) == 3  # distinct seeds, distinct replies
    finally:
        worker.scheduler.stop()


def test_kv_cache_budget_refuses_what_never_fits_and_stats_report_it(tokenizer):
    """A request whose KV cache would pass the worker's budget even alone gets 503 on both chat
    routes, with the reason; one that fits is served; /stats reports the cache's bytes and budget."""
    from nanochat.kv_cache import KVCache
    model = chat_model()
    budget = KVCache.bytes_for(model, 1, 64, 4)
    worker = Worker(model, tokenizer, "cpu", max_rows=2, cache_budget=budget)
    try:
        with TestClient(create_app([worker], dict(temperature=0.0, top_k=50, max_tokens=10, recur=2))) as client:
            big = {"messages": HELLO, "recur": 64, "max_tokens": 40}
            native = client.post("/chat/completions", json=big)
            openai = client.post("/v1/chat/completions", json={**big, "model": "nanochat"})
            for response in (native, openai):
                assert response.status_code == 503 and "over this server's budget" in response.text, response.text
            ok = client.post("/v1/chat/completions", json={"messages": HELLO, "model": "nanochat", "max_tokens": 5})
            assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
            stats = client.get("/stats").json()
            assert stats["kv_cache_budget_bytes"] == [budget] and 0 < stats["kv_cache_bytes"][0] <= budget
    finally:
        worker.scheduler.stop()


def test_cache_memory_flag():
    from scripts.chat_web import cache_budget
    assert cache_budget("2G", "cpu") == 2 * 2**30 and cache_budget("512m", "cpu") == 2**29
    assert 0 < cache_budget("0.25", "cpu") == pytest.approx(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4, 1)
    for bad in ("0", "2", "lots", "-1G"):
        with pytest.raises(Exception, match="--cache-memory"):
            cache_budget(bad, "cpu")


def test_cross_site_and_rebinding_are_refused(server):
    """A page of another site cannot drive the server: a text/plain or form POST (which a browser
    sends without asking) gets 415, a Host the server does not answer to (DNS rebinding) gets 400,
    and without --cors-origins a preflight gets no CORS grant. No docs page is served."""
    chat = {"messages": HELLO, "max_tokens": 2}
    for path in ("/chat/completions", "/v1/chat/completions"):
        plain = httpx.post(server + path, content=json.dumps({**chat, "model": "nanochat-sft-tiny-7"}),
                           headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
        assert plain.status_code == 415 and "application/json" in plain.text
    rebound = httpx.get(server + "/stats", headers={"Host": "rebind.evil.example"})
    assert rebound.status_code == 400
    preflight = httpx.options(server + "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    for docs in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(server + docs).status_code == 404
    slash = httpx.post(server + "/v1/chat/completions/", json={**chat, "model": "nanochat-sft-tiny-7"}, timeout=60)
    assert slash.status_code == 200 and slash.json()["object"] == "chat.completion"


def test_cors_origins_and_allowed_hosts(base_dir):
    from scripts.chat_web import allowed_hosts
    assert allowed_hosts("0.0.0.0", "chat.example, 10.0.0.5") == ["10.0.0.5", "127.0.0.1", "[::1]", "chat.example",
                                                                 "localhost"]
    assert "192.168.1.9" in allowed_hosts("192.168.1.9", "")
    args = parser.parse_args(["--device-type", "cpu", "--max-new-tokens", "8"])
    workers, meta = load_workers(args)
    app = create_app(workers, defaults_from(args, meta), hosts=["testserver"], cors_origins=["https://app.example"])
    try:
        with TestClient(app) as client:
            ok = client.options("/v1/chat/completions", headers={"Origin": "https://app.example",
                                                                 "Access-Control-Request-Method": "POST",
                                                                 "Access-Control-Request-Headers": "content-type"})
            assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
            other = client.options("/v1/chat/completions", headers={"Origin": "https://evil.example",
                                                                    "Access-Control-Request-Method": "POST"})
            assert "access-control-allow-origin" not in other.headers
    finally:
        for w in workers:
            w.scheduler.stop()


def test_default_max_tokens_is_cut_to_the_positions_left(tokenizer):
    """A native request without max_tokens on a model whose positions are fewer than the default
    (here 320 < 512) is served with what the prompt leaves, not refused."""
    worker = Worker(chat_model(), tokenizer, "cpu", max_rows=2)
    try:
        app = create_app([worker], dict(temperature=0.0, top_k=50, max_tokens=512, recur=2))
        with TestClient(app) as client:
            res = client.post("/chat/completions", json={"messages": HELLO})
            assert res.status_code == 200 and events(res.text)[-1]["done"]
    finally:
        worker.scheduler.stop()


def test_slow_clients_are_cut_off_and_a_full_fd_table_logs_one_line(tokenizer, tmp_path):
    """Connections that never finish their headers (silent, or trickling a byte at a time) are
    closed after --header-timeout; more of them than the server has file descriptors cost one
    log line per burst, not a traceback each, and /health answers once they are gone."""
    base_dir = save_tiny_checkpoint(tokenizer, tmp_path)
    with chat_web_server(base_dir, "--header-timeout", "1", "--max-connections", "60", open_files=96) as url:
        port = int(url.rsplit(":", 1)[1])
        clients = []
        for i in range(150):
            c = socket.create_connection(("127.0.0.1", port))
            if i % 2:
                c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
            clients.append(c)
        closed, deadline = set(), time.time() + 20
        while len(closed) < len(clients) and time.time() < deadline:
            for i, c in enumerate(clients):
                if i in closed:
                    continue
                try:
                    if i % 2:
                        c.send(b"X")  # a trickle: a byte now and then keeps no connection alive
                    c.setblocking(False)
                    if c.recv(1024) == b"":
                        closed.add(i)
                except BlockingIOError:
                    pass
                except OSError:  # reset or broken: closed by the server
                    closed.add(i)
            time.sleep(0.3)
        assert len(closed) == len(clients), f"{len(clients) - len(closed)} slow connections still open"
        assert httpx.get(url + "/health", timeout=5).json()["ready"]
        for c in clients:
            c.close()
    log = (base_dir / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert 1 <= log.count("cannot accept connections") <= 3, log[-3000:]
    assert "request heads within 1 s" in log and "open-file limit 96" in log


def test_bad_connection_flags_are_one_line(tmp_path):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "scripts.chat_web", "--header-timeout", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--header-timeout 0 / --max-connections 512: both must be positive" in proc.stderr


def memory_kib(pid, field):
    """VmRSS (now) or VmHWM (the peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


async def cap_burst(url, also=()):
    """Four replies at recur 64 (the cap) at once, two of them to the end of the 320-token context,
    with `also`'s (path, body) requests sent alongside first; -> the responses in that order."""
    bodies = [{"messages": HELLO, "recur": 64, "max_tokens": 300 if i < 2 else 150, "temperature": 1.0, "seed": i}
              for i in range(4)]
    async with httpx.AsyncClient(timeout=600) as client:
        return await asyncio.gather(*(client.post(url + path, json=body) for path, body in also),
                                    *(client.post(url + "/chat/completions", json=body) for body in bodies))


def test_a_burst_at_the_recurrence_cap_stays_within_the_cache_budget(tokenizer, tmp_path):
    """Replies at recur 64 (the cap) running to the context's end: those that fit the 16 MiB budget
    alone are served, taking turns (all complete), one that never fits gets 503, and the server's
    peak RSS grows by less than twice the budget (a resize holds the old and the new cache for a
    moment); without a budget the same burst grows it by ~107 MiB (dev/cache_burst.py --cache-memory 1G)."""
    base_dir = save_tiny_checkpoint(tokenizer, tmp_path)
    procs = []
    with chat_web_server(base_dir, "--cache-memory", "16M", "--max-batch", "8", started=procs.append) as url:
        pid = procs[0].pid
        httpx.post(url + "/chat/completions", json={"messages": HELLO, "max_tokens": 2}, timeout=60)  # warm
        before = memory_kib(pid, "VmRSS")

        never = {"model": "nanochat-sft-tiny-7", "n": 2, "messages": HELLO, "recur": 64, "max_tokens": 300}
        never, *served = asyncio.run(cap_burst(url, [("/v1/chat/completions", never)]))
        assert never.status_code == 503 and "budget" in never.text
        assert all(r.status_code == 200 and events(r.text)[-1]["done"] for r in served)
        grown = (memory_kib(pid, "VmHWM") - before) / 1024
        stats = httpx.get(url + "/stats").json()
        print(f"peak RSS grew by {grown:.1f} MiB; cache now {stats['kv_cache_bytes'][0] / 2**20:.1f} MiB")
        assert grown < 2 * 16 + 4, f"the server's peak RSS grew by {grown:.1f} MiB over a 16 MiB cache budget"
        assert stats["kv_cache_bytes"][0] <= 16 * 2**20


def test_depth_screenshot_tool(tokenizer, tmp_path):
    """dev/depth_screenshot.py end to end on a tiny base checkpoint: chat_web in text mode, Chromium
    sending a paragraph and a pointer-chase problem under adaptive exit, the PNG and the depths
    the page recorded (the learned contrast needs a trained model: README's figure)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found")
    import random

    from tasks.pointer_chase import eval_problem
    tokenizer.save(os.path.join(tmp_path, "tokenizer"))
    model = chat_model()
    meta = {"model_config": dataclasses.asdict(model.config), "eval_r": 3}
    save_checkpoint(os.path.join(tmp_path, "base_checkpoints", "tiny"), 5, model.state_dict(), {}, {}, meta)
    with open(tmp_path / "test_d8.jsonl", "w") as f:
        f.write(json.dumps(eval_problem(random.Random(0), 8, surface="spaced")) + "\n")
    out = tmp_path / "page.png"
    proc = subprocess.run([sys.executable, "-m", "dev.depth_screenshot", "--model-tag", "tiny", "--data-dir",
                           str(tmp_path), "--recur", "4", "--threshold", "10", "--out", str(out)], cwd=REPO,
                          env={**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "problem depth 8" in proc.stdout and "answer / median" in proc.stdout and out.stat().st_size > 10_000
