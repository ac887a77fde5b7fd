"""
Continuous batching: many replies decoded together on one device, requests joining and
leaving the running batch between steps, each row with its own r, adaptive exit, sampling,
stop conditions and tool calls. scripts/chat_web.py runs one Scheduler per device.

    sched = Scheduler(model, tokenizer, max_rows=16).start()   # a thread steps the batch
    req = sched.submit(prompt_ids, r=4, max_tokens=256, temperature=0.0, top_k=None, seed=0,
                       exit_threshold=None)                     # None = fixed r; else KL exit, r the cap
    for token, depth, sampled in req:                           # blocks while the reply is written
        ...

The rows live in one KVCache of max_rows rows. One step:
1. waiting requests take free rows (the exact cache grows its max_r or length when a request
   needs more); cancelled requests leave theirs;
2. one prefill forward over the rows still reading their prompt, each feeding up to
   prefill_chunk more prompt tokens (padded to the longest chunk; the padding is never
   attended to and is overwritten later), so a long prompt delays the running rows by one
   chunk per step at most;
3. every row holding fresh logits (a prompt just read included) picks its next token with
   its own generator, temperature and top_k (a forced tool-output token wins, as in Engine)
   and advances its Reply; a finished python block runs on a thread pool and the row sits
   out of the batch until the output is back, so a slow tool call never stalls the others;
4. one decode forward over the rows with a token to feed, one token each: each row stops at
   its own r (KVCache.select caps) and exits early at its own threshold ("kl" runs only when
   some row asked for it, threshold 0 elsewhere, which never stops a token).
Before each forward its rows are moved to a contiguous range of the cache (KVCache.move_rows;
rows rarely move, since the order is kept from step to step).

Each row's cache entries depend on that row alone (KVCache's rule for rows that stop
early), so a reply is the one Engine gives the same request alone: exactly in the exact
cache mode (up to float rounding of a different batch shape); in the shared mode, prompts
longer than prefill_chunk see their earlier chunks' final-iteration entries (tests/test_scheduler.py).
"""

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch

from nanochat.engine import ChatTokens, Reply, run_python, sample_next_token
from nanochat.kv_cache import KVCache

PAD_ID = 0              # fills the short rows of a prefill chunk; never attended to
IDLE_WAIT = 0.005       # seconds the loop sleeps when every row waits on a tool call


class Request:
    """One reply being written. Iterate it for (token, depth, sampled) as they come; the
    iteration ends when the reply does and raises if generation failed. cancel() frees the row."""

    def __init__(self, tokens, r, max_tokens, temperature, top_k, seed, exit_threshold):
        self.tokens, self.r, self.max_tokens = tokens, r, max_tokens
        self.temperature, self.top_k, self.seed, self.exit_threshold = temperature, top_k, seed, exit_threshold
        self.events, self.cancelled, self.finished = queue.Queue(), False, False

    def cancel(self):
        self.cancelled = True

    def __iter__(self):
        while (event := self.events.get()) is not None:
            if isinstance(event, Exception):
                raise event
            yield event


class _Row:
    """A request's place in the batch: the prompt still to read, or the logits to pick from,
    or the token to feed next."""

    def __init__(self, req, chat_tokens, device):
        self.req, self.reply, self.pending, self.count = req, Reply(chat_tokens), list(req.tokens), 0
        self.rng = torch.Generator(device=device).manual_seed(req.seed)
        self.logits = self.input = self.tool = None
        self.depth = req.r

    @property
    def threshold(self):
        return self.req.exit_threshold or 0.0


class Scheduler:
    def __init__(self, model, tokenizer, max_rows=16, prefill_chunk=256, cache_mode="exact", max_len=1024,
                 tool=run_python, tool_threads=4):
        """max_rows: replies decoded together (more wait in a queue). prefill_chunk: prompt tokens
        per row per step. max_len: positions per row allocated at first (grows on demand up to the
        model's rotary table). tool: code (str) -> output (str), or None to disable tool use."""
        if not (isinstance(max_rows, int) and max_rows >= 1 and isinstance(prefill_chunk, int) and prefill_chunk >= 1):
            raise ValueError(f"Scheduler: max_rows={max_rows!r}, prefill_chunk={prefill_chunk!r}: expected ints >= 1")
        self.model, self.tokenizer, self.tool = model, tokenizer, tool
        self.max_rows, self.prefill_chunk, self.looped = max_rows, prefill_chunk, model.config.arch != "gpt"
        self.device = model.lm_head.weight.device
        self.cache = KVCache(model, max_rows, min(max_len, model.rotary_len), max_r=1, mode=cache_mode)
        self.chat_tokens = ChatTokens(tokenizer)
        self.rows = [None] * max_rows  # cache row -> _Row
        self.waiting = deque()
        self.cond = threading.Condition()
        self.tools = ThreadPoolExecutor(tool_threads, thread_name_prefix="tool") if tool is not None else None
        self.thread, self.stopping = None, False
        self.steps = self.decode_rows = 0  # decode forwards, and rows summed over them (mean batch)

    # -------------------------------------------------------------------------
    # the client side (any thread)

    def submit(self, tokens, r=4, max_tokens=256, temperature=1.0, top_k=None, seed=42, exit_threshold=None):
        if not (isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens)):
            raise ValueError("submit: tokens must be a non-empty list of ids")
        if not (isinstance(max_tokens, int) and max_tokens >= 1 and isinstance(r, int) and r >= 1):
            raise ValueError(f"submit: r={r!r}, max_tokens={max_tokens!r}: expected ints >= 1")
        if not self.looped and (r != 1 or exit_threshold is not None):
            raise ValueError("submit: arch='gpt' has no loop: r must be 1 and exit_threshold None")
        if len(tokens) + max_tokens > self.model.rotary_len:
            raise ValueError(f"submit: {len(tokens)} prompt + {max_tokens} new tokens > {self.model.rotary_len} positions")
        if temperature < 0 or (exit_threshold is not None and not exit_threshold >= 0):
            raise ValueError(f"submit: temperature={temperature}, exit_threshold={exit_threshold}: expected >= 0")
        req = Request(tokens, r, max_tokens, temperature, top_k, seed, exit_threshold)
        with self.cond:
            self.waiting.append(req)
            self.cond.notify()
        return req

    def load(self):
        """Requests in the batch or waiting for a row."""
        return sum(row is not None for row in self.rows) + len(self.waiting)

    def start(self):
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"scheduler-{self.device}")
        self.thread.start()
        return self

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join()

    def _loop(self):
        while True:
            with self.cond:
                while not self.stopping and not self.waiting and all(row is None for row in self.rows):
                    self.cond.wait()
                if self.stopping:
                    return
            try:
                if not self.step():
                    with self.cond:
                        self.cond.wait(IDLE_WAIT)  # every row waits on a tool call
            except Exception as e:  # a bug or device error fails the requests in flight, not the server
                self._fail_all(e)

    def run(self):
        """Step until every submitted request is finished (tests and benchmarks without the thread)."""
        while self.waiting or any(row is not None for row in self.rows):
            if not self.step():
                threading.Event().wait(IDLE_WAIT)

    # -------------------------------------------------------------------------
    # one step (the scheduler's thread)

    @torch.inference_mode()
    def step(self):
        """Admit, prefill, pick tokens, decode. False if no forward ran."""
        self._admit()
        prefill = self._prefill_group()
        if prefill:
            others = [row for row in self._live() if not any(row is p for p in prefill)]
            self._arrange(others + prefill)
            self._prefill(prefill, len(others))
        for row in self._live():
            if row.logits is not None:
                self._pick(row)  # a prompt read this step gets its first token now, and joins the decode
        decode = [row for row in self._live() if row.input is not None]
        if decode:
            self._arrange(decode + [row for row in self._live() if row.input is None])
            self._decode(decode)
        return bool(decode or prefill)

    def _live(self):
        return [row for row in self.rows if row is not None]

    def _admit(self):
        for b, row in enumerate(self.rows):
            if row is not None and row.req.cancelled:
                self._finish(b)
        with self.cond:
            while self.waiting and None in self.rows:
                req = self.waiting.popleft()
                if req.cancelled:
                    self._close(req)
                    continue
                self.cache.grow(max_r=req.r, max_len=len(req.tokens) + req.max_tokens)
                b = self.rows.index(None)
                self.rows[b], self.cache.lengths[b] = _Row(req, self.chat_tokens, self.device), 0

    def _pick(self, row):
        """Choose the row's next token from its logits (sampled as Engine samples a batch of one)."""
        if row.tool is not None:
            if not row.tool.done():
                return
            row.reply.force(self.tokenizer.encode(row.tool.result()))
            row.tool = None
        req = row.req
        sampled = sample_next_token(row.logits, row.rng, req.temperature, req.top_k).item()
        token, was_sampled = row.reply.next_token(sampled)
        code = row.reply.feed(token, was_sampled)
        row.logits = None
        if row.reply.done:
            return self._finish(self.rows.index(row))
        req.events.put((token, row.depth, was_sampled))
        row.count += 1
        if row.count == req.max_tokens:
            return self._finish(self.rows.index(row))
        if code is not None and self.tools is not None:
            row.tool = self.tools.submit(self._run_tool, code)
        row.input = token

    def _run_tool(self, code):
        try:
            return self.tool(self.tokenizer.decode(code))
        except Exception as e:  # the tool's failure is the model's to read, as a sandbox error would be
            return f"{type(e).__name__}: {e}"

    def _prefill_group(self):
        """Rows still reading their prompt whose next chunks fit the positions together."""
        group, end = [], 0
        for row in sorted((row for row in self.rows if row is not None and row.pending),
                          key=lambda row: self.cache.lengths[self.rows.index(row)]):
            T = max([min(len(g.pending), self.prefill_chunk) for g in group + [row]])
            L = self.cache.lengths[self.rows.index(row)]
            if group and max(end, L) + T > self.model.rotary_len:
                break
            group.append(row)
            end = max(end, L)
        return group

    def _arrange(self, order):
        """Move rows so that `order` occupies cache rows 0..len(order)-1."""
        src, dst = [], []
        for b, row in enumerate(order):
            old = self.rows.index(row)
            if old != b:
                src.append(old)
                dst.append(b)
        self.cache.move_rows(src, dst)
        self.rows = order + [None] * (self.max_rows - len(order))

    def _forward(self, ids, lo, rows, decode):
        caps = [row.req.r for row in rows]
        r = max(caps)
        thresholds = [row.threshold for row in rows] if decode else None
        criterion = "kl" if decode and any(t > 0 for t in thresholds) else None
        self.cache.select(lo, lo + len(rows), caps=caps if min(caps) < r else None, exit_criterion=criterion,
                          thresholds=thresholds if criterion else None)
        self.cache.grow(max_len=max(self.cache.lengths[lo:lo + len(rows)]) + ids.size(1))
        return self.model(ids, r=r, kv_cache=self.cache)

    def _decode(self, rows):
        ids = torch.tensor([[row.input] for row in rows], dtype=torch.long, device=self.device)  # (d, 1)
        logits = self._forward(ids, 0, rows, decode=True)[:, -1]  # (d, V)
        depths = self.cache.depth[:, -1].tolist()
        for b, row in enumerate(rows):
            row.logits, row.depth, row.input = logits[b:b + 1], depths[b], None
        self.steps += 1
        self.decode_rows += len(rows)

    def _prefill(self, rows, lo):
        chunks = [row.pending[:self.prefill_chunk] for row in rows]
        T = max(len(c) for c in chunks)
        ids = torch.tensor([c + [PAD_ID] * (T - len(c)) for c in chunks], dtype=torch.long, device=self.device)
        starts = self.cache.lengths[lo:lo + len(rows)]
        logits = self._forward(ids, lo, rows, decode=False)  # (p, T, V)
        for b, (row, chunk) in enumerate(zip(rows, chunks)):
            self.cache.lengths[lo + b] = starts[b] + len(chunk)  # drop the padding
            row.pending = row.pending[len(chunk):]
            if not row.pending:
                row.logits, row.depth = logits[b:b + 1, len(chunk) - 1], row.req.r

    def _finish(self, b):
        row, self.rows[b] = self.rows[b], None
        if row.tool is not None:
            row.tool.cancel()
        self._close(row.req)

    def _close(self, req, error=None):
        req.finished = True
        if error is not None:
            req.events.put(error)
        req.events.put(None)

    def _fail_all(self, error):
        for b, row in enumerate(self.rows):
            if row is not None:
                self.rows[b] = None
                self._close(row.req, error)
