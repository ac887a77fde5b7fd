"""
The OpenAI-compatible chat API, served by scripts/chat_web.py under /v1 next to the page's own
endpoint, so OpenAI clients (the official `openai` package, curl, chat front-ends) can talk to a
looped model:

    GET  /v1/models                  the one model this server holds: {"object": "list", "data": [{"id": ...}]}
    GET  /v1/models/{id}
    POST /v1/chat/completions        {"model": id, "messages": [...], "stream": false, "temperature": 1.0,
                                      "top_p": 1, "max_tokens" (or "max_completion_tokens"), "n": 1,
                                      "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
                                      "stop": str | [str], "seed": int, "stream_options": {"include_usage": bool},
                                      extensions: "top_k", "recur" (loop iterations per token),
                                      "adaptive" (exit threshold of chat_web's --exit-criterion: the
                                      state's relative change, 0.3, or KL in nats; recur is then the cap)}
    POST /v1/completions             text in, text out, with echo and logprobs (nanochat/completions_api.py)

Differences from OpenAI, each one explicit:
- Sampling is temperature, top_p (nucleus), presence_penalty and frequency_penalty (on the
  reply's own tokens, as OpenAI's) and the extension top_k; seed -1 means no seed.
- Messages: an optional leading system (or developer) message, then user/assistant, ending with
  user; consecutive messages of one role are joined, and a later system message reads as the
  user's. Content is a string or a list of {"type": "text", "text"} parts; an assistant
  message may also hold the reply's {"type": "python" | "python_output"} parts (nanochat/reply.py).
- The model's python tool runs on the server: a reply's tool call and its output appear in its
  content as ```python and ```output blocks.
- Extensions in the reply: each choice has "depths" (the loop iterations run for each completion
  token, streamed with the chunk that carries its text); "recurrence" says the r and threshold used.
- Unknown fields are refused (400) rather than ignored, except a few that cannot change the reply
  (user, metadata, store, ...); tools, tool_choice, response_format and logit_bias are accepted
  at the values clients send when they mean "none" (NEUTRAL). logprobs / top_logprobs (0..20)
  give each reply token's logprob under the model (before temperature and penalties) with its
  top alternatives, in OpenAI's {"content": [{token, logprob, bytes, top_logprobs}]}, streamed too. Tool calls: the model's
  own python tool runs on the server (below); a client's own `tools` cannot be offered to the
  model (it was trained on its python tool only), so a non-empty list is refused with 400.
Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 bad request (a
prompt too long for the model: code "context_length_exceeded"), 401 missing or wrong API key,
404 unknown model or endpoint, 405 wrong method, 413 body or message over a size limit, 415 a
body that is not application/json, 500
generation failed, 503 a reply that needs more KV cache than the server's budget even alone.
Generation goes through WorkerPool.generate (nanochat/chat_api.py) and nothing else.
"""

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from nanochat.chat_api import (MAX_MESSAGE_CHARS, GenerationError, RequestError, check_capacity, parse_body, read_body,
                               render_prompt, validate_request)
from nanochat import completions_api
from nanochat.reply import PART_TYPES, ReplyDecoder
from nanochat.tokenizer import MESSAGE_JOIN

MAX_N = 8                 # replies per request
DISCONNECT_POLL = 0.25    # seconds between checks that a non-streamed request's client is still there
MAX_STOPS, MAX_STOP_CHARS = 4, 100
IGNORED = ("user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key")  # no effect on the reply
# accepted at these values (or null) only: what clients send by default when they mean "nothing"
NEUTRAL = {
           "tools": ([],), "tool_choice": ("none", "auto"), "parallel_tool_calls": (True, False),
           "response_format": ({"type": "text"},), "logit_bias": ({},), "reasoning_effort": ()}
KNOWN = ("model", "messages", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens",
         "max_completion_tokens", "n", "stop", "seed", "recur", "adaptive", "presence_penalty", "frequency_penalty",
         "logprobs", "top_logprobs")
MAX_TOP_LOGPROBS = 20  # as OpenAI's
FENCES = {"python": "```python\n", "python_output": "```output\n"}
STATUS_TYPES = {500: "server_error", 503: "server_error"}  # every other status is the client's: "invalid_request_error"


def error_response(status, message, param=None, code=None):
    return JSONResponse({"error": {"message": message, "type": STATUS_TYPES.get(status, "invalid_request_error"),
                                   "param": param, "code": code}}, status_code=status)


@dataclass
class Options:
    """What the OpenAI layer does with a reply (the rest is a chat_api.ChatRequest)."""
    stream: bool
    include_usage: bool
    stops: list
    max_tokens_given: bool


def _text_of(content, field):
    """A user/system content: a string, or a list of text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError(400, field, "expected a string or a list of {\"type\": \"text\", \"text\": ...} parts "
                                   "(images and other parts are not supported)")


NULLABLE = ("tool_calls", "refusal", "annotations", "audio", "function_call")  # a model_dump()'d reply sends them null


def _messages(messages):
    """OpenAI messages -> (chat_api's {role, content} list, the client's index of each). A leading
    system/developer message stays "system" (the tokenizer folds it into the first user message);
    a later one is read as the user's (RAG front-ends put context there); consecutive messages of
    one role are joined with a blank line (two user turns in a row); text parts are joined."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages", "expected a non-empty list of {role, content}")
    out, where = [], []
    for i, m in enumerate(messages):
        field = f"messages[{i}]"
        extra = set(m) - {"role", "content", "name"} if isinstance(m, dict) else set()
        if (not isinstance(m, dict) or "role" not in m or "content" not in m
                or any(k not in NULLABLE or m[k] is not None for k in extra)):
            raise RequestError(400, field, "expected an object with 'role' and 'content' (and optionally 'name')")
        role = "system" if m["role"] == "developer" else m["role"]
        if role == "assistant" and isinstance(m["content"], list) and any(
                isinstance(p, dict) and p.get("type") in PART_TYPES[1:] for p in m["content"]):
            content = m["content"]  # a reply with its tool calls, as the stream gave it
        elif role == "assistant" and m["content"] is None:
            content = ""  # a reply that was only tool calls (none here) or a refusal
        else:
            content = _text_of(m["content"], f"{field}.content") if role in ("user", "system", "assistant") else None
        if role == "system" and i > 0:
            role = "user"
        if out and out[-1]["role"] == role and role != "system":
            out[-1]["content"] = _join(out[-1]["content"], content)
            continue
        out.append({"role": role, "content": content})
        where.append(i)
    return out, where


def _join(a, b):
    """Two contents of one role as one: strings with a blank line between, else the parts in order
    (the exported chat template joins them the same way: nanochat.tokenizer.chat_template)."""
    if isinstance(a, str) and isinstance(b, str):
        return f"{a}{MESSAGE_JOIN}{b}" if a and b else a or b
    parts = lambda c: [{"type": "text", "text": c}] if isinstance(c, str) else list(c)  # noqa: E731
    return parts(a) + [{"type": "text", "text": MESSAGE_JOIN}] + parts(b)


def parse_request(body, defaults, model_id):
    """Parsed JSON -> (chat_api.ChatRequest, Options); RequestError (400, or 404 for another model)."""
    _check_fields(body, KNOWN, NEUTRAL, model_id)
    given = {k: v for k, v in body.items() if v is not None}  # null means "the default", as OpenAI reads it
    req = _chat_request(*_messages(body.get("messages")), given, defaults)
    req.n, opts = _options(given)
    req.logprobs = _logprobs(given)
    return req, opts


def _logprobs(given):
    """logprobs (bool) and top_logprobs (0..20, only with logprobs) -> None or the top count."""
    asked, top = given.get("logprobs", False), given.get("top_logprobs")
    if not isinstance(asked, bool):
        raise RequestError(400, "logprobs", "expected true or false")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise RequestError(400, "top_logprobs", f"expected an integer in [0, {MAX_TOP_LOGPROBS}]")
    if top and not asked:
        raise RequestError(400, "top_logprobs", "only with logprobs: true")
    return (top or 0) if asked else None


def logprob_entries(tokenizer, tokens, logprobs):
    """OpenAI's chat logprobs content for tokens and their Step.logprobs entries."""
    def entry(token, lp):
        text = tokenizer.token_text(token)
        return {"token": text, "logprob": lp, "bytes": list(tokenizer.token_raw(token))}
    return [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in top]} for t, (lp, top) in zip(tokens, logprobs)]


def _check_fields(body, known, neutral_values, model_id):
    """A JSON object of known, ignored or neutral fields, naming this server's model (404 for
    another); a seed of -1 (some clients' "no seed") is dropped in place."""
    if not isinstance(body, dict):
        raise RequestError(400, "body", "expected a JSON object")
    for field in body:
        if field not in known + IGNORED + tuple(neutral_values):
            raise RequestError(400, field, "unrecognized request argument")
    for field, neutral in neutral_values.items():
        if body.get(field) is not None and body[field] not in neutral:
            allowed = " or ".join(json.dumps(v) for v in neutral)
            raise RequestError(400, field, f"not supported: only {allowed + ' (or null)' if allowed else 'null'}")
    if "model" not in body:
        raise RequestError(400, "model", "required: the id that GET /v1/models lists")
    if body["model"] != model_id:
        raise RequestError(404, "model", f"the model {body['model']!r} does not exist: this server has {model_id!r}")
    if body.get("seed") == -1:
        del body["seed"]


def _chat_request(messages, where, given, defaults):
    """chat_api's checks and defaults (the page's endpoint runs the same), with a system message in
    front; where[j]: the client's index of messages[j], for the errors."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    native = {"messages": messages[len(system):]}
    for ours, theirs in (("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"), ("recur", "recur"),
                         ("adaptive", "adaptive"), ("seed", "seed"), ("max_tokens", "max_completion_tokens"),
                         ("max_tokens", "max_tokens"), ("presence_penalty", "presence_penalty"),
                         ("frequency_penalty", "frequency_penalty")):
        if theirs in given:
            native[ours] = given[theirs]
    try:
        req = validate_request(native, defaults)
    except RequestError as e:  # the client's indices: the system message, and messages joined
        if e.field.startswith("messages["):
            i = int(e.field[len("messages["):].split("]")[0])
            raise RequestError(e.status, f"messages[{where[i + len(system)]}]" + e.field.split("]", 1)[1],
                               str(e).split(": ", 1)[1]) from None
        raise
    if system:
        if not system[0]["content"].strip() or len(system[0]["content"]) > MAX_MESSAGE_CHARS:
            raise RequestError(400 if not system[0]["content"].strip() else 413, "messages[0].content",
                               f"a system message must hold 1 to {MAX_MESSAGE_CHARS} characters")
        req.messages = system + req.messages
    return req


def _n_and_stops(given):
    n = given.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise RequestError(400, "n", f"expected an integer in [1, {MAX_N}], got {n!r}"[:120])
    stops = given.get("stop", [])
    stops = [stops] if isinstance(stops, str) else stops
    if (not isinstance(stops, list) or len(stops) > MAX_STOPS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)):
        raise RequestError(400, "stop", f"expected a string or a list of at most {MAX_STOPS} non-empty strings "
                                        f"of at most {MAX_STOP_CHARS} characters")
    return n, stops


def _options(given):
    """(n, Options) from the fields that shape the reply rather than the sampling."""
    n, stops = _n_and_stops(given)
    stream = given.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream", "expected true or false")
    stream_options = given.get("stream_options", {})
    if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"} or not isinstance(
            stream_options.get("include_usage", False), bool):
        raise RequestError(400, "stream_options", "expected {\"include_usage\": true | false}")
    if stream_options and not stream:
        raise RequestError(400, "stream_options", "only allowed with stream: true")
    return n, Options(stream, stream_options.get("include_usage", False), stops,
                      "max_tokens" in given or "max_completion_tokens" in given)


class Choice:
    """One reply (row) as it streams: tokens -> content text with tool blocks fenced, held back
    while its end could be the start of a stop string, cut at the first stop string."""

    def __init__(self, tokenizer, stops):
        self.decoder, self.stops = ReplyDecoder(tokenizer), stops
        self.kind, self.part, self.content, self.sent = "text", -1, "", 0
        self.unsent, self.finish_reason = [], None  # (token, depth, logprob entry or None) not yet sent

    def _add(self, kind, text, part):
        if kind != self.kind or (kind != "text" and part != self.part):
            if self.kind != "text":  # close the block
                self.content += ("" if self.content.endswith("\n") else "\n") + "```\n"
            if kind != "text":
                self.content += ("" if not self.content or self.content.endswith("\n") else "\n") + FENCES[kind]
            self.kind = kind
        self.part = part
        self.content += text

    def _release(self, final):
        """(text, its tokens as (token, depth, logprob)) that may go out now; at a stop string, the
        reply ends there."""
        start = max(0, self.sent - max((len(s) for s in self.stops), default=0))
        hits = [p for p in (self.content.find(s, start) for s in self.stops) if p >= 0]
        end = len(self.content)
        if hits:
            self.content = self.content[:min(hits)]
            end, self.finish_reason = len(self.content), "stop"
        elif not final:  # keep back an ending that may grow into a stop string
            for s in self.stops:
                for k in range(min(len(s) - 1, len(self.content)), 0, -1):
                    if self.content.endswith(s[:k]):
                        end = min(end, len(self.content) - k)
                        break
        text, self.sent = self.content[self.sent:end], max(self.sent, end)
        tokens, self.unsent = (self.unsent, []) if text or final or hits else ([], self.unsent)
        return text, tokens

    def feed(self, token, depth, logprob=None):
        """-> (text, its tokens, finish_reason or None), or None while nothing can go out."""
        self.unsent.append((token, depth, logprob))
        for piece in self.decoder.feed(token):
            self._add(*piece)
        text, tokens = self._release(final=False)
        return (text, tokens, self.finish_reason) if text or self.finish_reason else None

    def end(self, reason):
        """The row stopped (reason "stop" or "length"): the rest, an open tool block closed."""
        for piece in self.decoder.finish():
            self._add(*piece)
        self._add("text", "", self.part)
        text, tokens = self._release(final=True)
        self.finish_reason = self.finish_reason or reason
        return text, tokens, self.finish_reason


async def choice_events(pool, ids, req, stops, tokenizer):
    """(index, text, depths, finish_reason or None, logprobs content or None) as the replies grow:
    the one stream both the streamed and the whole response are made of, so the two carry the
    same text. logprobs: OpenAI's entries for the tokens whose text this event carries."""
    choices = [Choice(tokenizer, stops) for _ in range(req.n)]
    steps = pool.generate(ids, req)

    def event(i, text, tokens, reason):
        entries = None
        if req.logprobs is not None:
            entries = logprob_entries(tokenizer, [t for t, _, lp in tokens if lp], [lp for _, _, lp in tokens if lp])
        return i, text, [d for _, d, _ in tokens], reason, entries

    try:
        async for step in steps:
            for i, choice in enumerate(choices):
                if choice.finish_reason is None:
                    out = (choice.end("stop") if step.done[i] else
                           choice.feed(step.tokens[i], step.depths[i], step.logprobs[i] if step.logprobs else None))
                    if out is not None:
                        yield event(i, *out)
            if all(c.finish_reason for c in choices):
                break
        for i, choice in enumerate(choices):
            if choice.finish_reason is None:
                yield event(i, *choice.end("length"))
    finally:
        await steps.aclose()


def router(pool, tokenizer, model, model_id, defaults, authorized):
    """The /v1 routes over a WorkerPool. authorized(request) -> bool (the server's API key check)."""
    api = APIRouter(prefix="/v1")
    created = int(time.time())
    model_card = {"id": model_id, "object": "model", "created": created, "owned_by": "nanochat"}

    def reject(status, message, param=None, code=None):
        pool.rejected += 1
        return error_response(status, message, param, code)

    def refuse(error, context_field=None):
        """A RequestError as OpenAI's error: a prompt past the model's positions is 400
        context_length_exceeded (on context_field, else the error's), another model 404 model_not_found."""
        if error.status == 413 and "positions" in str(error):
            return reject(400, str(error), context_field or error.field, "context_length_exceeded")
        return reject(error.status, str(error), error.field, "model_not_found" if error.status == 404 else None)

    def denied(request):
        if authorized(request):
            return None
        return reject(401, "this server needs its API key (header 'Authorization: Bearer <key>')", code="invalid_api_key")

    @api.get("/models")
    async def models(request: Request):
        return denied(request) or {"object": "list", "data": [model_card]}

    @api.get("/models/{name:path}")
    async def one_model(name: str, request: Request):
        if no := denied(request):
            return no
        if name != model_id:
            return reject(404, f"the model {name!r} does not exist: this server has {model_id!r}", "model",
                          "model_not_found")
        return model_card

    @api.post("/chat/completions")
    async def chat_completions(request: Request):
        if no := denied(request):
            return no
        try:
            req, opts = parse_request(parse_body(await read_body(request)), defaults, model_id)
            ids = render_prompt(tokenizer, req, model, None if opts.max_tokens_given else defaults["max_tokens"])
            check_capacity(pool, req, ids)
        except RequestError as e:
            return refuse(e, "messages")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id,
                "recurrence": {"recur": req.recur, "adaptive": req.adaptive}}
        events = choice_events(pool, ids, req, opts.stops, tokenizer)
        if opts.stream:
            return StreamingResponse(sse(pool, head, events, req.n, len(ids), opts.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await whole(pool, head, events, req.n, len(ids), request)

    scoring_lock = asyncio.Lock()

    @api.post("/completions")
    async def completions(request: Request):
        if no := denied(request):
            return no
        try:
            body = parse_body(await read_body(request))
            _check_fields(body, completions_api.KNOWN, completions_api.NEUTRAL, model_id)
            job = completions_api.parse(body, defaults, tokenizer, model, _n_and_stops)
            for ids in job.prompts:
                check_capacity(pool, job.req, ids)
        except RequestError as e:
            return refuse(e)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id,
                "recurrence": {"recur": job.req.recur, "adaptive": job.req.adaptive}}
        task = asyncio.ensure_future(completions_api.respond(pool, model, tokenizer, job, head, scoring_lock))
        return await _until_done(pool, task, request)

    @api.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown(path: str, request: Request):
        allowed = {"models": "GET", "chat/completions": "POST", "completions": "POST"}.get(path.strip("/"))
        if allowed == request.method:  # the route with a trailing slash
            route = {"models": models, "chat/completions": chat_completions, "completions": completions}
            return await route[path.strip("/")](request)
        if allowed:
            return reject(405, f"{request.method} /v1/{path}: use {allowed}", code="method_not_allowed")
        return reject(404, f"unknown endpoint {request.method} /v1/{path} (this server has GET /v1/models, "
                           f"POST /v1/chat/completions and POST /v1/completions)", code="unknown_url")

    return api


async def whole(pool, head, events, n, prompt_tokens, request):
    """The non-streamed response: the same events as the stream, joined per choice. A client that
    leaves before the end (checked every DISCONNECT_POLL seconds) cancels its rows."""
    texts, depths, reasons, logprobs = [""] * n, [[] for _ in range(n)], [None] * n, [None] * n

    async def collect():
        async for i, text, d, reason, entries in events:
            texts[i] += text
            depths[i] += d
            reasons[i] = reason or reasons[i]
            if entries is not None:
                logprobs[i] = (logprobs[i] or []) + entries
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "finish_reason": reasons[i],
                    "logprobs": None if logprobs[i] is None else {"content": logprobs[i], "refusal": None},
                    "depths": depths[i]} for i in range(n)]
        return {**head, "object": "chat.completion", "choices": choices, "usage": usage(prompt_tokens, depths)}

    try:
        return await _until_done(pool, asyncio.ensure_future(collect()), request)
    finally:
        await events.aclose()


async def _until_done(pool, task, request):
    """The result of a non-streamed reply's task; a client that leaves first (checked every
    DISCONNECT_POLL seconds) cancels it, which takes its rows out of the batch. The outcome is
    counted."""
    try:
        while not task.done():
            await asyncio.wait([task], timeout=DISCONNECT_POLL)
            if not task.done() and await request.is_disconnected():
                task.cancel()  # unwinds the events, whose pool.generate takes the rows out of the batch
                await asyncio.gather(task, return_exceptions=True)
                pool.count(False, gone=True)
                return error_response(499, "the client closed the request")
        result = task.result()
    except GenerationError as e:
        pool.count(False)
        return error_response(500, str(e))
    pool.count(True)
    return result


async def sse(pool, head, events, n, prompt_tokens, include_usage):
    """The streamed response as server-sent events, as OpenAI sends them: a role chunk per choice,
    content chunks (each with the depths of its tokens), a finish chunk per choice, the usage
    chunk if asked for, then [DONE]. A generation that fails midway ends with an error event."""
    def chunk(choices, **extra):
        return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": choices, **extra}) + "\n\n"

    def choice(i, delta, reason=None, depths=(), entries=None):
        return {"index": i, "delta": delta, "finish_reason": reason, "depths": list(depths),
                "logprobs": None if entries is None else {"content": entries, "refusal": None}}

    depths = [[] for _ in range(n)]
    with pool.counting() as outcome:
        try:
            for i in range(n):
                yield chunk([choice(i, {"role": "assistant", "content": ""})])
            async for i, text, d, reason, entries in events:
                depths[i] += d
                if text:
                    yield chunk([choice(i, {"content": text}, depths=d, entries=entries)])
                if reason:
                    yield chunk([choice(i, {}, reason, () if text else d, None if text else entries)])
            if include_usage:
                yield chunk([], usage=usage(prompt_tokens, depths))
            yield "data: [DONE]\n\n"
            outcome.ok = True
        except GenerationError as e:
            yield "data: " + json.dumps({"error": {"message": str(e), "type": "server_error", "param": None,
                                                   "code": None}}) + "\n\n"
        finally:
            await events.aclose()


def usage(prompt_tokens, depths):
    completion = sum(len(d) for d in depths)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
