"""
Serve a model to the browser: a chat page with per-token recurrence depth, and a streaming API.

    python -m scripts.chat_web                                   # latest SFT model, http://127.0.0.1:8000
    python -m scripts.chat_web --num-gpus 8 --recur 8            # one worker (model replica) per GPU, each
                                                                 # decoding its chats together (nanochat/scheduler.py)
    python -m scripts.chat_web --max-batch 1                     # each worker serves one request at a time
    python -m scripts.chat_web --source base --model-tag s20 --device-type cpu   # a base model: the page
                                                                 # continues text, its prompt shaded too
    NANOCHAT_API_KEY=$(openssl rand -hex 16) python -m scripts.chat_web --host 0.0.0.0   # reachable from others

Endpoints (request schema and limits: nanochat/chat_api.py):
    GET  /                   the page (nanochat/ui.html, self-contained, works offline)
    POST /chat/completions   stream a reply as server-sent events; a chat, or a text to continue (API key, if set)
    GET  /config             the server's defaults and limits (the page reads them)
    GET  /health             {"ready": bool, "workers": [{device, busy, healthy, last_error}], "sandbox": mode};
                             503 while no worker is healthy (its last generation failed)
    GET  /stats              workers busy/free, requests served/failed/rejected   (API key, if set)
    GET  /v1/models, POST /v1/chat/completions   the OpenAI-compatible API (nanochat/openai_api.py;
                             API key, if set): the official `openai` client works with base_url=<server>/v1
It binds 127.0.0.1 by default (this machine only). With an API key (--api-key or the
NANOCHAT_API_KEY environment variable, which keeps it out of `ps`), those endpoints need the
header `Authorization: Bearer <key>`; the page asks for the key once and keeps it in the browser.
The model's python tool calls run in the sandbox (nanochat/execution.py); its mode is printed at start.
"""

import argparse
import hmac
import json
import os
import sys

import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from nanochat import chat_api, errors, http_guard, openai_api
from nanochat.chat_api import RequestError, Worker, WorkerPool, parse_body, read_body, render_prompt, validate_request
from nanochat.checkpoint_manager import find_checkpoint_dir, load_model
from nanochat.common import autodetect_device_type, compute_init
from nanochat.execution import describe_sandbox, sandbox_mode
from nanochat.kv_cache import DEFAULT_EXIT_CRITERION, EXIT_CRITERIA, SUGGESTED_THRESHOLD
from nanochat.recurrence import resolve_r

parser = argparse.ArgumentParser(description="Chat with a model in the browser")
parser.add_argument("--source", type=str, default="sft",
                    help="which stage's checkpoints: base | sft | rl, or a folder written by scripts/export_hf.py")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
parser.add_argument("--step", type=int, default=-1, help="checkpoint step (-1 = the latest)")
parser.add_argument("--host", type=str, default="127.0.0.1",
                    help="address to bind (0.0.0.0 = every interface: set an API key first)")
parser.add_argument("--port", type=int, default=8000, help="port to bind")
parser.add_argument("--num-gpus", type=int, default=-1, help="workers, one per GPU (-1 = all visible GPUs; 1 on CPU/MPS)")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (empty = autodetect)")
parser.add_argument("--recur", type=int, default=-1, help="default loop iterations per token (-1 = the checkpoint's eval r)")
parser.add_argument("--max-new-tokens", type=int, default=512, help="default most tokens per reply")
parser.add_argument("--temperature", type=float, default=0.8, help="default sampling temperature (0 = greedy)")
parser.add_argument("--top-k", type=int, default=50, help="default top-k")
parser.add_argument("--max-batch", type=int, default=16,
                    help="replies each worker decodes together (continuous batching; 1 = one request at a time)")
parser.add_argument("--exit-criterion", type=str, default=DEFAULT_EXIT_CRITERION, choices=EXIT_CRITERIA,
                    help="how a request's `adaptive` threshold stops a token's loop: state (relative change of the "
                         "recurrent state, 0.3 suggested), kl (nats between successive predictions, 1e-3) or "
                         "state+kl (either, KL every other iteration at threshold / 300; 0.3)")
parser.add_argument("--cache-mode", type=str, default="exact", choices=["exact", "shared"],
                    help="KV cache across recurrences: exact (the trained function) or shared (memory independent of r)")
parser.add_argument("--cache-memory", type=str, default="0.25",
                    help="KV cache budget of each worker: a fraction of its device's memory (0.25), or a size (512M, "
                         "40G); a request that would pass it waits, one that never fits gets 503")
parser.add_argument("--allowed-hosts", type=str, default="",
                    help="Host header values answered, comma-separated, besides localhost and --host (guards against "
                         "DNS rebinding; '*' = any)")
parser.add_argument("--cors-origins", type=str, default="",
                    help="web origins (https://app.example) whose pages may call this server, comma-separated "
                         "(default none: a page of another site cannot)")
parser.add_argument("--header-timeout", type=float, default=10.0,
                    help="seconds a connection has to send each request's line and headers, then it is closed")
parser.add_argument("--max-connections", type=int, default=512,
                    help="open connections at most; past it, requests get 503 (keep it under `ulimit -n`)")
parser.add_argument("--api-key", type=str, default=os.environ.get("NANOCHAT_API_KEY", ""),
                    help="shared secret for /chat/completions and /stats (default $NANOCHAT_API_KEY; empty = none)")

UI_HTML = os.path.join(os.path.dirname(chat_api.__file__), "ui.html")


def cache_budget(memory, device):
    """--cache-memory as bytes: a size with M or G, else that fraction of the device's memory (a
    GPU's, or the machine's RAM for cpu and mps)."""
    units = {"M": 2**20, "G": 2**30}
    try:
        value = float(memory[:-1] if memory[-1:].upper() in units else memory)
    except ValueError:
        value = -1.0
    if memory[-1:].upper() in units and value > 0:
        return int(value * units[memory[-1:].upper()])
    if not 0 < value <= 1:
        raise errors.UserError(f"--cache-memory={memory}: expected a fraction in (0, 1] of the device's memory, "
                               f"or a size like 512M or 40G")
    if device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(value * total)


def load_workers(args):
    """One Worker per GPU (or a single one on CPU/MPS), each with its own copy of the model.
    Returns (workers, meta)."""
    device_type = args.device_type or autodetect_device_type()
    compute_init(device_type)
    if args.max_batch < 1:
        raise errors.UserError(f"--max-batch={args.max_batch}: expected >= 1")
    if device_type == "cuda":
        n = torch.cuda.device_count() if args.num_gpus < 1 else args.num_gpus
        if n > torch.cuda.device_count():
            raise errors.UserError(f"--num-gpus={n}: only {torch.cuda.device_count()} CUDA devices visible")
        devices = [f"cuda:{i}" for i in range(n)]
    else:
        devices = [device_type]
    workers, meta = [], None
    for device in devices:
        model, tokenizer, meta = load_model(args.source, args.model_tag or None, None if args.step < 0 else args.step,
                                            torch.device(device))
        budget = cache_budget(args.cache_memory, device)
        workers.append(Worker(model, tokenizer, device, max_rows=args.max_batch, cache_mode=args.cache_mode,
                              cache_budget=budget, exit_criterion=args.exit_criterion))
        print(f"worker {len(workers) - 1}: {args.source} step {meta['step']} on {device}, KV cache budget "
              f"{budget / 2**30:.2f} GiB", flush=True)
    return workers, meta


def defaults_from(args, meta):
    """The request defaults, each checked against the request limits so a bad flag fails at start."""
    recur = resolve_r(meta["model_config"]["arch"], meta, args.recur)
    defaults = dict(temperature=args.temperature, top_k=args.top_k, max_tokens=args.max_new_tokens, recur=recur)
    validate_request({"messages": [{"role": "user", "content": "x"}]}, defaults)
    return defaults


def model_id(args, meta):
    """The name /v1/models gives the served checkpoint: nanochat-<source>-<tag>-<step>, or for an
    exported folder nanochat-<folder name>."""
    if os.path.isdir(args.source):
        return f"nanochat-{os.path.basename(os.path.normpath(args.source))}"
    tag = os.path.basename(find_checkpoint_dir(args.source, args.model_tag or None))
    return f"nanochat-{args.source}-{tag}-{meta['step']}"


def allowed_hosts(host, extra):
    """The Host header values the server answers: localhost's names, the bound address unless it
    is every interface, and --allowed-hosts. A page on another site that re-points its own name at
    this machine (DNS rebinding) sends its name and is refused."""
    hosts = ["localhost", "127.0.0.1", "[::1]"] + [h.strip() for h in extra.split(",") if h.strip()]
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host)
    return sorted(set(hosts))


def create_app(workers, defaults, api_key="", model_name="nanochat", hosts=("*",), cors_origins=(), mode="chat"):
    """The FastAPI app over a list of Workers (all holding the same model) and request defaults;
    with an api_key, the chat, stats and /v1 endpoints need `Authorization: Bearer <api_key>`.
    model_name: the model's id in the OpenAI-compatible API. hosts: the Host header values answered
    (allowed_hosts; "*" = any). cors_origins: web origins whose pages may call it. mode: what the
    page starts in, "chat" or "text" (a base model's text continued, its prompt shaded too). No docs page is
    served (it would load scripts from a CDN, and show the API without the key)."""
    app = FastAPI(title="looped nanochat", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    pool = WorkerPool(workers)
    app.state.pool, app.state.model_name = pool, model_name
    model, tokenizer, criterion = workers[0].model, workers[0].tokenizer, workers[0].exit_criterion
    with open(UI_HTML, encoding="utf-8") as f:
        page = f.read()

    def reject(status, message):
        pool.rejected += 1
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/")
    async def index():
        return HTMLResponse(page)

    def authorized(request):
        given = request.headers.get("authorization", "")
        return not api_key or hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    def unauthorized(request):
        if authorized(request):
            return None
        return reject(401, "authorization: this server needs its API key (header 'Authorization: Bearer <key>')")

    @app.get("/health")
    async def health():
        state = {**pool.health(), "sandbox": sandbox_mode()[0]}
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    @app.get("/stats")
    async def stats(request: Request):
        return unauthorized(request) or pool.stats()

    @app.get("/config")
    async def config():
        cfg = model.config
        return {"defaults": defaults, "arch": cfg.arch, "n_embd": cfg.n_embd, "context": cfg.sequence_len,
                "positions": model.rotary_len,  # the hard limit on prompt + reply; `context` is what it trained on
                "limits": {"max_messages": chat_api.MAX_MESSAGES, "max_message_chars": chat_api.MAX_MESSAGE_CHARS,
                           "max_total_chars": chat_api.MAX_TOTAL_CHARS, "temperature": chat_api.TEMPERATURE_RANGE,
                           "top_k": chat_api.TOP_K_RANGE, "max_tokens": chat_api.MAX_TOKENS_RANGE,
                           "recur": chat_api.RECUR_RANGE, "adaptive": chat_api.ADAPTIVE_RANGE},
                "exit_criterion": criterion, "adaptive": SUGGESTED_THRESHOLD[criterion],
                "auth": bool(api_key), "mode": mode}

    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        if denied := unauthorized(request):
            return denied
        try:
            body = parse_body(await read_body(request))
            req = validate_request(body, defaults)
            given = isinstance(body, dict) and body.get("max_tokens") is not None
            ids = render_prompt(tokenizer, req, model, None if given else defaults["max_tokens"])
            chat_api.check_capacity(pool, req, ids)
        except RequestError as e:
            return reject(e.status, str(e))

        async def stream():
            async for event in chat_api.events(pool, ids, req, tokenizer):
                yield f"data: {json.dumps(event)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(openai_api.router(pool, tokenizer, model, model_name, defaults, authorized))
    return app


if __name__ == "__main__":
    args = parser.parse_args()
    print(f"arguments: {vars(args) | {'api_key': '<set>' if args.api_key else ''}}", flush=True)
    print(describe_sandbox(), flush=True)
    try:
        if args.header_timeout <= 0 or args.max_connections < 1:
            raise ValueError(f"--header-timeout {args.header_timeout:g} / --max-connections {args.max_connections}: "
                             f"both must be positive (e.g. --header-timeout 10 --max-connections 512)")
        workers, meta = load_workers(args)
        hosts = ["*"] if args.allowed_hosts.strip() == "*" else allowed_hosts(args.host, args.allowed_hosts)
        origins = [o.strip() for o in args.cors_origins.split(",") if o.strip()]
        mode = "text" if args.source == "base" else "chat"  # a base model was never taught the chat template
        app = create_app(workers, defaults_from(args, meta), args.api_key, model_id(args, meta), hosts, origins, mode)
    except (FileNotFoundError, ValueError) as e:  # a missing checkpoint or a bad flag: one line, exit code 2
        print(errors.report(e), file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    print(f"serving on http://{args.host}:{args.port} with {len(workers)} worker(s)"
          + (", API key required" if args.api_key else ", no API key")
          + f"; OpenAI-compatible API at http://{args.host}:{args.port}/v1, model {app.state.model_name!r}", flush=True)
    print(f"answering Host: {', '.join(hosts)}" + (f"; pages of {', '.join(origins)} may call it" if origins else ""),
          flush=True)
    http_guard.serve(app, args.host, args.port, args.header_timeout, args.max_connections)
