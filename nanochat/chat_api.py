"""
The chat web server's request contract, worker pool and reply stream (scripts/chat_web.py
holds the routes and the command line).

    POST /chat/completions  {"messages": [{"role": "user", "content": "hi"}, ...],
                             "temperature": 0.6, "top_k": 50, "max_tokens": 256,
                             "recur": 4, "adaptive": 0.3, "seed": 1}     (all but messages optional)
    -> text/event-stream:   data: {"token": "Hel", "depth": 4, "type": "text", "part": 0}
                            data: {"token": "lo", "depth": 2, "type": "text", "part": 0}
                            data: {"token": "6*7", "depth": 4, "type": "python", "part": 1}
                            data: {"token": "42", "depth": 3, "type": "python_output", "part": 2}
                            data: {"done": true, "mean_depth": 3.0, "tokens": 9, "r": 4}
       or, if generation fails midway: data: {"error": "..."}
    POST /chat/completions  {"text": "The river ... | q", "adaptive": 0.3, ...}   text mode, for a base model:
                             the text itself is continued (BOS, no chat template). With adaptive exit the
                             prompt is read one token at a time with the exit on, and the stream opens with
                            data: {"prompt": [{"token": "The", "depth": null}, {"token": " river", "depth": 2}, ...]}
                             each prompt token with the iterations behind its prediction (the first has
                             none: it follows BOS, which is read at the full r).
An assistant message's content is a string or the list of typed parts the stream gave
({"type": "python", "text": "6*7"}, ...), so a tool call goes back to the model as it was written.

Bad input raises RequestError(status, field, message): 400 for a wrong type or value (JSON
nested too deeply included), 413 for input over a size limit (the body is capped while it is
read, before parsing). The server turns it into {"error": "<field>: <message>"}. A temperature
below engine.GREEDY_BELOW samples greedily.
"""

import asyncio
import contextlib
import json
import random
import threading
import types
from dataclasses import dataclass, field

from nanochat.kv_cache import DEFAULT_EXIT_CRITERION
from nanochat.reply import PART_TYPES, ReplyDecoder
from nanochat.scheduler import Scheduler

MAX_MESSAGES = 500                # messages per request
MAX_MESSAGE_CHARS = 8000          # characters per message
MAX_TOTAL_CHARS = 32000           # characters over the whole conversation
MAX_BODY_BYTES = 512 * 1024       # request body (32000 characters JSON-escaped fit with room)
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_K_RANGE = (1, 200)
TOP_P_RANGE = (1e-6, 1.0)
MAX_TOKENS_RANGE = (1, 4096)
RECUR_RANGE = (1, 64)
ADAPTIVE_RANGE = (0.0, 10.0)      # exit threshold of the server's criterion; 0 == fixed r
FIELDS = ("messages", "text", "temperature", "top_k", "top_p", "max_tokens", "recur", "adaptive", "seed", "presence_penalty",
          "frequency_penalty")
PENALTY_RANGE = (-2.0, 2.0)       # OpenAI's


class RequestError(ValueError):
    def __init__(self, status, field, message):
        super().__init__(f"{field}: {message}")
        self.status, self.field = status, field


@dataclass
class ChatRequest:
    messages: list | None   # a chat, or None in text mode
    temperature: float
    top_k: int
    max_tokens: int
    recur: int
    adaptive: float | None  # None = fixed r
    seed: int
    n: int = 1              # replies (rows) sampled from the one prompt
    top_p: float = 1.0      # nucleus sampling (1 = off)
    presence_penalty: float = 0.0   # OpenAI's penalties on tokens already in the reply
    frequency_penalty: float = 0.0
    logprobs: int | None = None     # None, or top alternatives per token's logprob (Step.logprobs)
    text: str | None = None         # text mode: continue this text (no chat template)
    read_depths: bool = False       # read the prompt with the exit on and report its depths (Step.prompt_depths)


async def read_body(request, limit=MAX_BODY_BYTES):
    """The raw body, read chunk by chunk and abandoned (413) as soon as it passes `limit`, so an
    oversized upload is never held in memory; a declared Content-Length over it is refused unread.
    Only `Content-Type: application/json` is read (415 otherwise): a page of another site can send
    a text/plain or form POST without asking, but not a JSON one (the browser asks first, CORS)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise RequestError(415, "body", f"Content-Type {media or '(none)'}: send application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body", f"{int(declared)} bytes, at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, "body", f"more than {limit} bytes")
    return bytes(body)


def parse_body(raw):
    """JSON -> Python, with every failure a 400 (nesting past Python's recursion limit included)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise RequestError(400, "body", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, "body", f"not valid JSON ({e})") from None


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(body, field, lo, hi, integer, default):
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise RequestError(400, field, f"expected {'an integer' if integer else 'a number'}, got {_short(value)}")
    if not lo <= value <= hi:
        raise RequestError(400, field, f"{value} is out of range [{lo}, {hi}]")
    return value


def content_chars(content, role, field):
    """The length of a message's content: a string, or (assistant only) a list of parts
    {"type": "text" | "python" | "python_output", "text": str}, as nanochat/reply.py gives them."""
    if isinstance(content, str):
        return len(content)
    if role != "assistant" or not isinstance(content, list):
        raise RequestError(400, field, "expected a string" + (" or a list of parts" if role == "assistant" else ""))
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and set(part) == {"type", "text"} and part["type"] in PART_TYPES
                and isinstance(part["text"], str)):
            raise RequestError(400, f"{field}[{j}]", f"expected {{type, text}} with type one of {', '.join(PART_TYPES)}")
    return sum(len(part["text"]) for part in content)


def validate_request(body, defaults):
    """body: the parsed JSON. defaults: dict of temperature, top_k, max_tokens, recur."""
    if not isinstance(body, dict):
        raise RequestError(400, "body", "expected a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(400, _short(unknown[0]), f"unknown field (expected some of {', '.join(FIELDS)})")
    if "text" in body:
        return _text_request(body, defaults)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages", "expected a non-empty list of {role, content}")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(413, "messages", f"{len(messages)} messages, at most {MAX_MESSAGES}")
    total = 0
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise RequestError(400, f"messages[{i}]", "expected an object with exactly 'role' and 'content'")
        if m["role"] != expected:
            raise RequestError(400, f"messages[{i}].role", f"{_short(m['role'])}: roles alternate user/assistant, "
                                                            f"starting with user, so expected {expected!r}")
        chars = content_chars(m["content"], expected, f"messages[{i}].content")
        if expected == "user" and not m["content"].strip():
            raise RequestError(400, f"messages[{i}].content", "a user message must not be empty")
        if chars > MAX_MESSAGE_CHARS:
            raise RequestError(413, f"messages[{i}].content",
                               f"{chars} characters, at most {MAX_MESSAGE_CHARS} per message")
        total += chars
    if messages[-1]["role"] != "user":
        raise RequestError(400, "messages", "the conversation must end with a user message")
    if total > MAX_TOTAL_CHARS:
        raise RequestError(413, "messages", f"{total} characters in all, at most {MAX_TOTAL_CHARS}")
    return ChatRequest(messages=messages, **sampling_fields(body, defaults))


def _text_request(body, defaults):
    """Text mode: one string to continue, without a chat; under adaptive exit its depths are read."""
    text = body["text"]
    if "messages" in body:
        raise RequestError(400, "text", "give either messages (a chat) or text (continued as it is), not both")
    if not isinstance(text, str) or not text.strip():
        raise RequestError(400, "text", "expected a non-empty string")
    if len(text) > MAX_TOTAL_CHARS:
        raise RequestError(413, "text", f"{len(text)} characters, at most {MAX_TOTAL_CHARS}")
    fields = sampling_fields(body, defaults)
    return ChatRequest(messages=None, text=text, read_depths=fields["adaptive"] is not None, **fields)


def sampling_fields(body, defaults, max_tokens_range=MAX_TOKENS_RANGE):
    """The ChatRequest fields besides the messages (temperature, top_k, top_p, max_tokens, recur,
    adaptive, seed), checked against their ranges, with the server's defaults."""
    adaptive = body.get("adaptive")
    return dict(
        temperature=float(_number(body, "temperature", *TEMPERATURE_RANGE, False, defaults["temperature"])),
        top_k=_number(body, "top_k", *TOP_K_RANGE, True, defaults["top_k"]),
        max_tokens=_number(body, "max_tokens", *max_tokens_range, True, defaults["max_tokens"]),
        recur=_number(body, "recur", *RECUR_RANGE, True, defaults["recur"]),
        adaptive=None if adaptive is None else float(_number(body, "adaptive", *ADAPTIVE_RANGE, False, None)),
        seed=_number(body, "seed", 0, 2**63 - 1, True, random.getrandbits(32)),
        top_p=float(_number(body, "top_p", *TOP_P_RANGE, False, 1.0)),
        presence_penalty=float(_number(body, "presence_penalty", *PENALTY_RANGE, False, 0.0)),
        frequency_penalty=float(_number(body, "frequency_penalty", *PENALTY_RANGE, False, 0.0)),
    )


def render_prompt(tokenizer, req, model, default_max_tokens=None):
    """The prompt ids (ending in <|assistant_start|>), after the checks that need the model: 413 if
    prompt + max_tokens exceeds its positions, 400 for adaptive exit on a model without a loop
    (whose requests run at recur 1, as the Engine does). default_max_tokens: the client gave no
    max_tokens, so req.max_tokens becomes this default cut to the positions the prompt leaves."""
    if model.config.arch == "gpt":
        if req.adaptive is not None:
            raise RequestError(400, "adaptive", "this model (arch 'gpt') has no loop to exit early from")
        req.recur = 1
    if req.text is not None:
        ids, field, what = tokenizer.encode(req.text, prepend=tokenizer.get_bos_token_id()), "text", "the text"
    else:
        ids = tokenizer.render_for_completion({"messages": req.messages + [{"role": "assistant", "content": ""}]})
        field, what = "messages", "the conversation"
    if default_max_tokens is not None:
        req.max_tokens = max(1, min(default_max_tokens, model.rotary_len - len(ids)))
    if len(ids) + req.max_tokens > model.rotary_len:
        raise RequestError(413, field, f"{what} is {len(ids)} tokens; with max_tokens="
                                       f"{req.max_tokens} that exceeds the model's {model.rotary_len} positions")
    return ids


def check_capacity(pool, req, ids):
    """After render_prompt and the final max_tokens: 400 if n replies cannot be decoded together on
    any worker, 503 if the request needs more KV cache than a worker's budget even alone (it would
    never start; a request that merely has to wait for others is queued instead)."""
    if req.n > pool.max_rows:
        raise RequestError(400, "n", f"this server decodes at most {pool.max_rows} replies at once "
                                     f"(chat_web --max-batch); got n={req.n}")
    why = pool.admissible(req.n, req.recur, len(ids) + req.max_tokens)
    if why:
        raise RequestError(503, "recur", why)


class GenerationError(RuntimeError):
    """A generation failed on its worker (device error, bug); the message says how."""


@dataclass
class Worker:
    """One model replica on one device. Its requests are decoded together by a scheduler.Scheduler
    (max_rows replies at once, more wait for a row; max_rows=1 serves one reply at a time)."""
    model: object
    tokenizer: object
    device: str
    max_rows: int = 16
    cache_mode: str = "exact"
    cache_budget: int = None  # bytes its KV cache may hold (None = no limit)
    exit_criterion: str = DEFAULT_EXIT_CRITERION  # how a request's `adaptive` threshold stops a token: kv_cache.EXIT_CRITERIA
    healthy: bool = True     # False while its last generation failed (device error, bug): /health says so
    last_error: str = ""
    scheduler: Scheduler = field(init=False, repr=False)

    def __post_init__(self):
        self.scheduler = Scheduler(self.model, self.tokenizer, max_rows=self.max_rows, cache_mode=self.cache_mode,
                                   cache_budget=self.cache_budget, exit_criterion=self.exit_criterion).start()

    def steps(self, ids, req, stop):
        """Steps for one request (req.n rows) until every row is done, max_tokens, or `stop` is
        set (sync: runs on a thread); the request leaves the batch after."""
        request = self.scheduler.submit(ids, n=req.n, r=req.recur, max_tokens=req.max_tokens,  # recur: 1 without a loop
                                        temperature=req.temperature, top_k=req.top_k, seed=req.seed,
                                        exit_threshold=req.adaptive, top_p=req.top_p,
                                        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                                        logprobs=req.logprobs, read_depths=req.read_depths)
        try:
            yield from request.steps(until=stop)
        finally:
            request.cancel()


class WorkerPool:
    """Each request goes to the worker with the fewest requests in flight, whose scheduler
    decodes it together with the others.

    `generate(ids, req)` is the one way the HTTP layer (this file's `events` for the page, and
    nanochat/openai_api.py) reaches the model: an async iterator of engine Steps, one token per
    row (req.n rows) per step."""

    def __init__(self, workers):
        self.workers = list(workers)
        self.in_flight = {id(w): 0 for w in self.workers}
        self.served = self.failed = self.rejected = self.disconnected = 0

    @property
    def max_rows(self):
        """The most replies one request may ask for: they are decoded together on one worker."""
        return max(w.max_rows for w in self.workers)

    def admissible(self, n_rows, r, length):
        """None if some worker can take the request within its KV cache budget, else why not."""
        reasons = [w.scheduler.admissible(n_rows, r, length) for w in self.workers if w.max_rows >= n_rows]
        return None if not reasons or None in reasons else reasons[0]

    def health(self):
        """Ready while at least one worker's last generation did not fail; each worker's state."""
        workers = [{"device": w.device, "busy": self.in_flight[id(w)] > 0, "healthy": w.healthy,
                    "last_error": w.last_error} for w in self.workers]
        return {"ready": any(w.healthy for w in self.workers), "workers": workers}

    def stats(self):
        """busy/free: workers with/without requests in flight; served: replies sent to the end;
        failed: generation errors; disconnected: replies whose client left first (their rows are
        cancelled); rejected: 4xx and 503 (counted by the server)."""
        busy = sum(n > 0 for n in self.in_flight.values())
        return {"workers": len(self.workers), "busy": busy, "free": len(self.workers) - busy,
                "requests_in_flight": sum(self.in_flight.values()),
                "requests_served": self.served, "requests_failed": self.failed, "requests_rejected": self.rejected,
                "requests_disconnected": self.disconnected,
                "devices": [w.device for w in self.workers],
                "kv_cache_bytes": [w.scheduler.cache.nbytes for w in self.workers],
                "kv_cache_budget_bytes": [w.cache_budget for w in self.workers]}

    @contextlib.contextmanager
    def counting(self):
        """Count the outcome of the reply sent inside: served if the code set `outcome.ok`,
        disconnected if the client left (the stream was closed under it), else failed."""
        outcome, gone = types.SimpleNamespace(ok=False), False
        try:
            yield outcome
        except (asyncio.CancelledError, GeneratorExit):
            gone = True
            raise
        finally:
            self.count(outcome.ok, gone)

    def count(self, ok, gone=False):
        """A reply's outcome, counted by whoever sends it (only it knows if the client got it all):
        served, failed (a generation error), or gone (the client left before the end)."""
        self.disconnected += gone
        self.served += ok and not gone
        self.failed += not ok and not gone

    async def generate(self, ids, req):
        """Async iterator of engine Steps for one request. The least-loaded worker takes it; a thread
        reads its scheduler's tokens, so the event loop keeps serving /health and other requests.
        Raises GenerationError if the generation fails. A consumer that stops early (closing the
        iterator: a client gone, a stop string met) sets `stop`, which takes the request out of
        the batch; it counts as in flight until its thread has ended."""
        loop, steps, stop = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()
        worker = min((w for w in self.workers if w.max_rows >= req.n), key=lambda w: self.in_flight[id(w)])
        self.in_flight[id(worker)] += 1

        def call(fn, *args):
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop has closed (server shutting down)
                pass

        def finish(error):
            if error is not None or not stop.is_set():
                worker.healthy, worker.last_error = error is None, error or ""
            self.in_flight[id(worker)] -= 1
            steps.put_nowait(GenerationError(error) if error else None)

        def run():
            error = None
            try:
                for step in worker.steps(ids, req, stop):
                    call(steps.put_nowait, step)
            except Exception as e:  # a failed request must not take the worker or the server down
                error = f"generation failed: {type(e).__name__}: {e}"
            finally:
                call(finish, error)

        threading.Thread(target=run, daemon=True, name=f"generate-{worker.device}").start()
        try:
            while (item := await steps.get()) is not None:
                if isinstance(item, GenerationError):
                    raise item
                yield item
        finally:
            stop.set()


async def events(pool, ids, req, tokenizer):
    """The page's event stream (module docstring) for one reply: row 0 of pool.generate, each
    piece typed (text, python, python_output) and numbered by part."""
    decoder, depths = ReplyDecoder(tokenizer), []

    def pieces(found, depth):
        return [{"token": text, "depth": depth, "type": kind, "part": part} for kind, text, part in found]

    steps = pool.generate(ids, req)
    with pool.counting() as outcome:
        try:
            async for step in steps:
                if step.prompt_depths is not None:  # text mode, adaptive: position j - 1 predicted token j
                    yield {"prompt": [{"token": tokenizer.decode([t]), "depth": d} for t, d in
                                      zip(ids[1:], [None] + step.prompt_depths[0][1:])]}
                if step.done[0]:
                    break
                depths.append(step.depths[0])
                for event in pieces(decoder.feed(step.tokens[0]), depths[-1]):
                    yield event
            for event in pieces(decoder.finish(), depths[-1] if depths else 0):
                yield event
            yield {"done": True, "mean_depth": sum(depths) / len(depths) if depths else 0.0, "tokens": len(depths),
                   "r": req.recur}
            outcome.ok = True
        except GenerationError as e:
            yield {"error": str(e)}
        finally:
            await steps.aclose()
