"""
The decode loop: every reply is written here, whether it is one of many chats on a server
(continuous batching: requests join and leave the running batch between steps) or a batch of
samples for an eval or RL (nanochat/engine.py runs a Scheduler of its own, stepped in its
thread). Picking tokens, stopping, tool calls and the KV cache live in this file only.

    sched = Scheduler(model, tokenizer, max_rows=16).start()   # a thread steps the batch
    req = sched.submit(prompt_ids, n=2, r=4, max_tokens=256, temperature=0.8, top_k=None, seed=0,
                       exit_threshold=None)                     # None = fixed r; else adaptive exit, r the cap
    for step in req:                                            # blocks while the replies are written
        step.tokens    # one token per row (n rows per prompt, prompt-major)
        step.sampled   # per row: True if sampled, False if forced (tool output)
        step.depths    # per row: loop iterations of the forward that gave this token
        step.done      # per row: finished at or before this step (its token is not part of the reply)
        step.prompt_depths  # first step only, with read_depths=True: per row, the iterations behind each
                            # prompt token's prediction (the prompt read one token at a time, exit on)

A request is one prompt (or several) and n replies to each: its rows. Each row has its own
generator (row 0 seeded with `seed`, the others with seeds drawn from it), so a seed
reproduces every reply and row 0 of n is the reply of n = 1. The rows live in one KVCache of
up to max_rows rows. One step:
1. waiting requests take free rows, all of a request's at once, in order. The cache is resized
   to hold them (rows, iterations in the exact mode, positions) within the memory budget: a
   request that would take it past waits for rows to leave, one that can never fit fails
   (CacheBudgetError). Rows and positions grow by doubling, so chats arriving one after another
   reallocate the cache a few times, not once each; when the batch has been empty for
   GIVE_BACK_AFTER seconds the cache shrinks back (a chat's next request, or the next burst,
   finds it still the size it was). Cancelled requests leave;
2. one prefill forward over the rows still reading their prompt, each feeding up to
   prefill_chunk more prompt tokens (padded to the longest chunk; the padding is never
   attended to and is overwritten later), so a long prompt delays the running rows by one
   chunk per step at most. Only one row per prompt reads it; when it is read, its cache row
   is copied into the prompt's other rows (n samples, one prefill);
3. every row holding fresh logits picks its next token with its own generator, temperature
   and top_k (a forced tool-output token wins) and advances its Reply; a row stops at
   <|assistant_end|> or <|bos|> (the step shows that token, marked done) or at max_tokens;
   a finished python block runs on a thread pool and the row sits out of the batch until the
   output is back, so a slow tool call never stalls the others;
4. one decode forward over the rows with a token to feed, one token each: each row stops at
   its own r (KVCache.select caps) and exits early at its own threshold (the criterion runs
   only when some row asked for it; threshold 0 never stops a token).
Before each forward its rows are moved to a contiguous range of the cache (KVCache.move_rows;
rows rarely move, since the order is kept from step to step).

Each row's cache entries depend on that row alone (KVCache's rule for rows that stop
early), so a reply does not depend on what else is in the batch: exactly in the exact cache
mode (up to float rounding of a different batch shape); in the shared mode, prompts longer
than prefill_chunk see their earlier chunks' final-iteration entries (tests/test_scheduler.py).
"""

import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanochat.kv_cache import EXIT_CRITERIA, KVCache
from nanochat.python_tool import run_python

PAD_ID = 0              # fills the short rows of a prefill chunk; never attended to
IDLE_WAIT = 0.005       # seconds the loop sleeps when every row waits on a tool call
POLL = 0.05             # seconds a reader waits between looks at its `until` event
GIVE_BACK_AFTER = 2.0   # seconds the batch stays empty before the cache shrinks to one row at r 1
GREEDY_BELOW = 1e-3     # temperatures under this sample greedily (logits / 1e-45 overflow to inf, then nan)


def sample_next_token(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """(B, V) fp32 logits -> (B,) token ids, every row with the same settings and generator.
    temperature 0 (or under GREEDY_BELOW) is argmax; top_k samples among the k most likely tokens;
    top_p (nucleus) among the most likely tokens whose probabilities first reach p (the most likely
    always stays); rng is a torch.Generator on the logits' device."""
    B = logits.size(0)
    return sample_rows(logits, [rng] * B, [temperature] * B, [top_k] * B, [top_p] * B)


def sample_rows(logits, rngs, temperatures, top_ks, top_ps):
    """(B, V) fp32 logits and each row's generator and settings -> (B,) token ids, with one top-k and
    one softmax for the whole batch. A row draws one uniform number from its own generator and inverts
    the CDF of its kept tokens in vocabulary order, so its token depends on its logits and seed, not on
    the rows beside it; a greedy row draws nothing."""
    B, V = logits.shape
    greedy = [t < GREEDY_BELOW for t in temperatures]
    if all(greedy):
        return logits.argmax(dim=-1)
    ks = [min(k, V) if k is not None and k > 0 else V for k in top_ks]
    ps = [p if p is not None and p < 1 else 1.0 for p in top_ps]
    device = logits.device
    temps = torch.tensor([1.0 if g else t for g, t in zip(greedy, temperatures)], device=device)
    scaled = logits / temps.unsqueeze(1)
    if min(ks) < V or min(ps) < 1:  # the kept tokens: rank < k, then the nucleus among them
        values, ids = torch.topk(scaled, max(ks), dim=-1)
        keep = torch.arange(values.size(1), device=device) < torch.tensor(ks, device=device).unsqueeze(1)
        if min(ps) < 1:
            probs = F.softmax(values.masked_fill(~keep, float("-inf")), dim=-1)
            before = probs.cumsum(dim=-1) - probs  # the mass of the tokens more likely than each
            keep &= before < torch.tensor(ps, device=device).unsqueeze(1)
        kept = torch.zeros_like(scaled, dtype=torch.bool).scatter_(1, ids, keep)
        scaled = scaled.masked_fill(~kept, float("-inf"))
    cdf = F.softmax(scaled, dim=-1).cumsum(dim=-1)
    u = torch.stack([torch.zeros((), device=device) if g else torch.rand((), generator=rng, device=device)
                     for g, rng in zip(greedy, rngs)])
    # the first token whose cumulative mass passes u of the row's total: never a dropped token (should
    # u * total round up to the total, the last kept token: the first where the CDF reaches it)
    total = cdf[:, -1:]
    last = (cdf < total).sum(dim=-1, keepdim=True)
    drawn = torch.minimum(torch.searchsorted(cdf, u.unsqueeze(1) * total, right=True), last).squeeze(1)
    if any(greedy):
        drawn = torch.where(torch.tensor(greedy, device=device), logits.argmax(dim=-1), drawn)
    return drawn


@dataclass
class Step:
    tokens: list
    sampled: list
    depths: list
    done: list
    logprobs: list = None  # per row, when the request asked: (logprob, [(id, logprob), ...] top ones) or None
    prompt_depths: list = None  # first Step of a read_depths request: per row, iterations at prompt positions 0..L-2


class ChatTokens:
    """The special token ids the reply loop reads."""
    def __init__(self, tokenizer):
        special = tokenizer.encode_special
        self.end = special("<|assistant_end|>")
        self.stop = {self.end, tokenizer.get_bos_token_id()}
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")


class Reply:
    """One reply's tool state machine: feed it each token; a finished python block comes back
    as its code ids, and `force` queues the tool's output."""
    def __init__(self, chat_tokens):
        self.ids, self.forced, self.code, self.in_python, self.done = chat_tokens, deque(), [], False, False

    def next_token(self, sampled):
        """(token, was_sampled): a pending forced token wins over the sampled one."""
        return (self.forced.popleft(), False) if self.forced else (sampled, True)

    def feed(self, token, was_sampled):
        """Advance on the chosen token. Returns the code ids when it closes a python block, else None."""
        ids = self.ids
        if was_sampled and token in ids.stop:
            self.done = True
        elif token == ids.python_start:
            self.in_python, self.code = True, []
        elif token == ids.python_end and self.in_python:
            self.in_python = False
            return self.code
        elif self.in_python:
            self.code.append(token)
        return None

    def force(self, output_ids):
        self.forced.extend([self.ids.output_start, *output_ids, self.ids.output_end])


class CacheBudgetError(RuntimeError):
    """A request that cannot fit the scheduler's KV cache budget even alone."""


class Request:
    """The replies to one submission: prompts x n rows. Iterate it (or `steps(until)`) for Steps
    as they come; the iteration ends when every row has ended and raises if generation failed.
    The scheduler puts each row's tokens as they are picked; a Step goes out once every row
    has its next token or has ended (an ended row shows `filler`, marked done)."""

    def __init__(self, prompts, n, r, max_tokens, temperature, top_k, seed, exit_threshold, filler, top_p=None,
                 presence_penalty=0.0, frequency_penalty=0.0, logprobs=None, read_depths=False):
        self.prompts, self.n, self.r, self.max_tokens, self.top_p = prompts, n, r, max_tokens, top_p
        self.logprobs = logprobs  # None, or how many top alternatives each token's logprob comes with
        self.presence_penalty, self.frequency_penalty = presence_penalty, frequency_penalty
        self.temperature, self.top_k, self.exit_threshold, self.filler = temperature, top_k, exit_threshold, filler
        self.size = len(prompts) * n
        self.length = max(len(p) for p in prompts) + max_tokens  # positions a row of it may fill
        draw = random.Random(seed)
        self.seeds = [seed] + [draw.getrandbits(63) for _ in range(self.size - 1)]
        self._events = [deque() for _ in range(self.size)]  # per row: (token, depth, sampled, done, logprob)
        self._ended = [False] * self.size                    # the row has put its last event
        self._depths = [r] * self.size                       # the depth an ended row keeps showing
        self._cond = threading.Condition()
        self.cancelled, self.finished, self.error = False, False, None
        self.rows_left = self.size  # rows still in the scheduler (it closes the request at 0)
        # read_depths: each row's iterations at its prompt positions, set before its first token is put
        self.read_depths = [None] * self.size if read_depths else None

    def cancel(self):
        """Stop: the rows leave the batch at the next step, and a reader's iteration ends."""
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()

    # the scheduler's side

    def _put(self, b, token, depth, sampled, done, last, logprob=None):
        with self._cond:
            self._events[b].append((token, depth, sampled, done, logprob))
            self._ended[b] = self._ended[b] or last
            self._cond.notify_all()

    def _close(self, error=None):
        with self._cond:
            self.finished, self.error = True, error
            self._ended = [True] * self.size
            self._cond.notify_all()

    # the reader's side

    def poll(self):
        """The next Step if every row has its next token or has ended; None if not yet, or if
        the request is over (`over`). Raises the generation's error."""
        with self._cond:
            return self._column()

    @property
    def over(self):
        with self._cond:
            return self.cancelled or (all(self._ended) and not any(self._events))

    def _column(self):
        if self.error is not None:
            raise self.error
        if self.cancelled or not any(self._events) or any(not q and not e for q, e in zip(self._events, self._ended)):
            return None
        step = Step([], [], [], [], [] if self.logprobs is not None else None)
        if self.read_depths is not None:  # the first Step carries them (every row has read its prompt)
            step.prompt_depths, self.read_depths = self.read_depths, None
        for b, q in enumerate(self._events):
            token, depth, sampled, done, logprob = q.popleft() if q else (self.filler, self._depths[b], False, True, None)
            self._depths[b] = depth
            step.tokens.append(token)
            step.depths.append(depth)
            step.sampled.append(sampled)
            step.done.append(done)
            if step.logprobs is not None:
                step.logprobs.append(logprob)
        return step

    def steps(self, until=None):
        """Steps as they come (blocking); ends early when `until` (a threading.Event) is set."""
        while True:
            with self._cond:
                while (step := self._column()) is None and not self.over:
                    if until is not None and until.is_set():
                        return
                    self._cond.wait(POLL if until is not None else None)
            if step is None:
                return
            yield step

    def __iter__(self):
        return self.steps()


class _Row:
    """One reply's place in the batch: the prompt still to read (one row per prompt reads it,
    its `followers` copy the result), or the logits to pick from, or the token to feed next."""

    def __init__(self, req, b, chat_tokens, device):
        self.req, self.b, self.reply, self.count = req, b, Reply(chat_tokens), 0
        prompt = list(req.prompts[b // req.n])
        # under adaptive exit the prompt's last token is decoded with the exit on, not prefilled at
        # the full r, so the first reply token's depth is the exit's own (as for every later token);
        # with read_depths every token after the first is, one per step, and its depth kept
        held = 0
        if req.exit_threshold is not None and len(prompt) > 1:
            held = len(prompt) - 1 if req.read_depths is not None else 1
        self.held = deque(prompt[len(prompt) - held:]) if held else None
        self.read = [req.r] if req.read_depths is not None else None  # position 0 is prefilled at the full r
        self.pending = prompt[:len(prompt) - held] if b % req.n == 0 else []
        self.followers = []
        self.rng = torch.Generator(device=device).manual_seed(req.seeds[b])
        self.logits = self.input = self.tool = None
        self.depth = req.r
        self.counts = None  # (1, V) times each token occurred in the reply, kept only under a penalty

    def feed_held(self):
        """The next held prompt token becomes the input; with the last one the depths read so far
        (every prompt position but the last, whose depth is the first reply token's) are published."""
        self.input = self.held.popleft()
        if not self.held and self.read is not None:
            self.req.read_depths[self.b] = self.read

    def penalized(self, logits):
        """The logits less the request's presence and frequency penalties for this reply's tokens."""
        if self.counts is None:
            return logits
        return logits - self.req.presence_penalty * (self.counts > 0) - self.req.frequency_penalty * self.counts

    def saw(self, token, vocab):
        if self.req.presence_penalty or self.req.frequency_penalty:
            if self.counts is None:
                self.counts = torch.zeros(1, vocab, device=self.rng.device)
            self.counts[0, token] += 1

    @property
    def threshold(self):
        return self.req.exit_threshold or 0.0


def _doubled(need, have, most):
    """A cache dimension that must hold `need`: twice `have` (at most `most`) when it must grow."""
    return min(most, max(need, 2 * have)) if need > have else have


class Scheduler:
    def __init__(self, model, tokenizer, max_rows=16, prefill_chunk=256, cache_mode="exact", max_len=256,
                 tool=run_python, tool_threads=4, exit_criterion="kl", warm_start=False, cache_budget=None):
        """max_rows: replies decoded together (more wait in a queue). prefill_chunk: prompt tokens
        per row per step. max_len: positions per row allocated at first (the cache doubles them on
        demand up to the model's rotary table; small, because every reallocation zeroes and copies
        rows x positions: growing 4 -> 8 rows took ~80 ms at 1024 positions, ~20 ms at 256).
        tool: code (str) -> output (str), or None to disable tool use. exit_criterion (one of
        EXIT_CRITERIA): how a request with an exit_threshold stops early. warm_start: a decoded
        token starts from the previous token's final state (KVCache). cache_budget: bytes the KV cache may hold (None = no limit): a request that
        would take it past waits for rows to leave, one that can never fit fails with
        CacheBudgetError (`admissible` tells beforehand)."""
        if not (isinstance(max_rows, int) and max_rows >= 1 and isinstance(prefill_chunk, int) and prefill_chunk >= 1):
            raise ValueError(f"Scheduler: max_rows={max_rows!r}, prefill_chunk={prefill_chunk!r}: expected ints >= 1")
        self.model, self.tokenizer, self.tool = model, tokenizer, tool
        self.max_rows, self.prefill_chunk, self.looped = max_rows, prefill_chunk, model.config.arch != "gpt"
        self.exit_criterion, self.warm_start = exit_criterion, warm_start
        self.device = model.lm_head.weight.device
        self.initial_len, self.cache_budget = min(max_len, model.rotary_len), cache_budget
        if cache_budget is not None:  # the idle cache (one row at r 1) fits the budget as well
            per_position = KVCache.bytes_for(model, 1, 1, 1, cache_mode)
            self.initial_len = max(1, min(self.initial_len, cache_budget // per_position))
        if exit_criterion not in EXIT_CRITERIA:
            raise ValueError(f"exit_criterion={exit_criterion!r}: expected one of {EXIT_CRITERIA}")
        self.cache = KVCache(model, 1, self.initial_len, max_r=1, mode=cache_mode,
                             warm_start=warm_start)  # validates the options; rows are added on demand
        self.chat_tokens = ChatTokens(tokenizer)
        self.rows = [None] * max_rows  # cache row -> _Row
        self.waiting = deque()
        self.cond = threading.Condition()
        self.tools = None  # the tool thread pool, made at the first tool call
        self.tool_threads = tool_threads
        self.thread, self.stopping = None, False
        self.idle_since = None  # when the batch last emptied, while the cache still holds its size
        self.steps = self.decode_rows = 0  # decode forwards, and rows summed over them (mean batch)

    # -------------------------------------------------------------------------
    # the client side (any thread)

    def submit(self, tokens, n=1, r=4, max_tokens=256, temperature=1.0, top_k=None, seed=42, exit_threshold=None,
               top_p=None, presence_penalty=0.0, frequency_penalty=0.0, logprobs=None, read_depths=False):
        """tokens: one prompt (a list of ids) or several (a list of such lists); n replies to each.
        presence_penalty / frequency_penalty (OpenAI's): each token already in the reply has its
        logit lowered by presence_penalty once and by frequency_penalty per time it occurred.
        logprobs (None or 0..20): each Step also carries every row's token logprob under the model
        (its own distribution, before temperature, penalties, top_k and top_p) and that many top
        alternatives. read_depths (with an exit_threshold): each prompt is read one token at a time
        with the exit on, as its reply will be, and the first Step carries the iterations behind
        every prompt token's prediction (Step.prompt_depths; slower: one step per prompt token)."""
        prompts = [tokens] if tokens and isinstance(tokens, list) and isinstance(tokens[0], int) else tokens
        if not (isinstance(prompts, list) and prompts and
                all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts)):
            raise ValueError("submit: tokens must be a non-empty list of ids, or a list of such lists")
        if not all(isinstance(v, int) and v >= 1 for v in (n, r, max_tokens)):
            raise ValueError(f"submit: n={n!r}, r={r!r}, max_tokens={max_tokens!r}: expected ints >= 1")
        if len(prompts) * n > self.max_rows:
            raise ValueError(f"submit: {len(prompts)} prompt(s) x n={n} replies > max_rows={self.max_rows} of this "
                             f"scheduler")
        if not self.looped and (r != 1 or exit_threshold is not None):
            raise ValueError("submit: arch='gpt' has no loop: r must be 1 and exit_threshold None")
        longest = max(len(p) for p in prompts)
        if longest + max_tokens > self.model.rotary_len:
            raise ValueError(f"submit: {longest} prompt + {max_tokens} new tokens > {self.model.rotary_len} positions")
        if temperature < 0 or (exit_threshold is not None and not exit_threshold >= 0):
            raise ValueError(f"submit: temperature={temperature}, exit_threshold={exit_threshold}: expected >= 0")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"submit: top_p={top_p}: expected 0 < top_p <= 1")
        if not all(-2 <= p <= 2 for p in (presence_penalty, frequency_penalty)):
            raise ValueError(f"submit: presence_penalty={presence_penalty}, frequency_penalty={frequency_penalty}: "
                             f"expected values in [-2, 2]")
        if read_depths and exit_threshold is None:
            raise ValueError("submit: read_depths needs an exit_threshold (the depths of a fixed r are all r)")
        if logprobs is not None and not (isinstance(logprobs, int) and 0 <= logprobs <= 20):
            raise ValueError(f"submit: logprobs={logprobs!r}: expected None or an int in [0, 20]")
        req = Request(prompts, n, r, max_tokens, temperature, top_k, seed, exit_threshold, self.chat_tokens.end, top_p,
                      presence_penalty, frequency_penalty, logprobs, read_depths)
        with self.cond:
            self.waiting.append(req)
            self.cond.notify()
        return req

    def admissible(self, n_rows, r, length):
        """None if a request of n_rows replies at r, needing `length` positions, fits the cache
        budget on its own; else why not (one line)."""
        need = KVCache.bytes_for(self.model, n_rows, length, r, self.cache.mode)
        if self.cache_budget is None or need <= self.cache_budget:
            return None
        return (f"the reply needs {need / 2**30:.2f} GiB of KV cache ({n_rows} row(s) x {length} positions x r {r}), "
                f"over this server's budget of {self.cache_budget / 2**30:.2f} GiB: lower recur, max_tokens or n")

    def _fits(self, rows, r, length):
        if self.cache_budget is None:
            return True
        return KVCache.bytes_for(self.model, rows, length, r, self.cache.mode) <= self.cache_budget

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
        if self.tools is not None:
            self.tools.shutdown(wait=False, cancel_futures=True)

    def _loop(self):
        while True:
            with self.cond:
                while not self.stopping and not self.waiting and all(row is None for row in self.rows):
                    if self.idle_since is None:
                        self.cond.wait()
                    elif (left := self.idle_since + GIVE_BACK_AFTER - time.monotonic()) > 0:
                        self.cond.wait(left)
                    else:
                        self._give_back()
                if self.stopping:
                    return
            try:
                if not self.step():
                    with self.cond:
                        self.cond.wait(IDLE_WAIT)  # every row waits on a tool call
            except Exception as e:  # a bug or device error fails the requests in flight, not the server
                self._fail_all(e)

    def run(self):
        """Step until every submitted request is finished, then shrink the cache (tests and
        benchmarks without the thread)."""
        while self.waiting or any(row is not None for row in self.rows):
            if not self.step():
                threading.Event().wait(IDLE_WAIT)
        self._give_back()

    def _give_back(self):
        self.cache.resize(1, 1, self.initial_len)
        self.idle_since = None

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
        self._pick([row for row in self._live() if row.logits is not None])  # a prompt just read included
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
        # every request admitted in this step first, then one resize for all of them: a resize
        # allocates, zeroes and copies the whole cache, and once per request of a burst it cost more
        # than the burst's prefill
        placed, size = [], (self.cache.batch_size, self.cache.max_r, self.cache.max_len)
        with self.cond:
            while self.waiting:
                req = self.waiting[0]
                free = [b for b, row in enumerate(self.rows) if row is None]
                if not req.cancelled and len(free) < req.size:
                    break
                if req.cancelled:
                    self.waiting.popleft()._close()
                    continue
                # the cache for the live rows and these, the first that fits the budget: doubled where it
                # must grow (a ramp of chats arriving one by one reallocates log2 times, not once each),
                # as it is (or will be), only what they need (rows that left give theirs back); else
                # wait, or fail alone
                live = self._live()
                need = (max([b for b, row in enumerate(self.rows) if row is not None] + free[:req.size]) + 1,
                        max([row.req.r for row in live] + [req.r]),
                        max([row.req.length for row in live] + [req.length]))
                kept = tuple(max(a, b) for a, b in zip(size, need))
                doubled = (_doubled(need[0], size[0], self.max_rows), kept[1],
                           _doubled(need[2], size[2], self.model.rotary_len))
                grown = next((s for s in (doubled, kept, need) if self._fits(*s)), None)
                if grown is None:
                    if live:
                        break  # waits for rows to leave
                    self.waiting.popleft()._close(CacheBudgetError(self.admissible(req.size, req.r, req.length)))
                    continue
                self.waiting.popleft()
                size = grown
                leaders = {}
                for b in range(req.size):
                    slot, row = self.rows.index(None), _Row(req, b, self.chat_tokens, self.device)
                    self.rows[slot] = row
                    placed.append(slot)
                    if b % req.n == 0:
                        leaders[b] = row
                    else:
                        leaders[b - b % req.n].followers.append(row)
        self.cache.resize(*size)
        for slot in placed:
            self.cache.lengths[slot] = 0
        if placed:
            self.idle_since = None

    def _pick(self, rows):
        """Choose each row's next token from its logits (at most two syncs: the greedy rows, the sampled ones)."""
        ready = []
        for row in rows:
            if row.tool is not None:
                if not row.tool.done():
                    continue
                row.reply.force(self.tokenizer.encode(row.tool.result()))
                row.tool = None
            ready.append(row)
        if not ready:
            return
        # greedy rows without penalties (evals, RL's references, benchmarks): one argmax for all of
        # them; the others in one batched draw, each row from its own generator, so a seed reproduces its row alone
        greedy = [row.req.temperature < GREEDY_BELOW and row.counts is None for row in ready]
        picked = {}
        if any(greedy):
            rows = [row for row, g in zip(ready, greedy) if g]
            picked.update(zip(map(id, rows), torch.cat([row.logits for row in rows]).argmax(dim=-1).tolist()))
        if not all(greedy):
            rows = [row for row, g in zip(ready, greedy) if not g]
            drawn = sample_rows(torch.cat([row.penalized(row.logits) for row in rows]), [row.rng for row in rows],
                                *zip(*((row.req.temperature, row.req.top_k, row.req.top_p) for row in rows))).tolist()
            picked.update(zip(map(id, rows), drawn))
        for row in ready:
            self._advance(row, picked[id(row)])

    def _advance(self, row, sampled):
        req = row.req
        token, was_sampled = row.reply.next_token(sampled)
        code = row.reply.feed(token, was_sampled)
        row.saw(token, row.logits.size(-1))
        logprob = None
        if req.logprobs is not None:  # the model's own distribution at this position (a forced token's too)
            logp = F.log_softmax(row.logits[0].float(), dim=-1)
            top = logp.topk(req.logprobs) if req.logprobs else None
            logprob = (logp[token].item(), list(zip(top.indices.tolist(), top.values.tolist())) if top else [])
        row.logits = None
        row.count += 1
        last = row.reply.done or row.count == req.max_tokens
        req._put(row.b, token, row.depth, was_sampled, row.reply.done, last, logprob)
        if last:
            return self._finish(self.rows.index(row))
        if code is not None and self.tool is not None:
            if self.tools is None:
                self.tools = ThreadPoolExecutor(self.tool_threads, thread_name_prefix="tool")
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
            if group and max(end, L) + T > self.cache.max_len:  # what a padded chunk may fill
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

    def _forward(self, ids, lo, rows, decode, at=None):
        caps = [row.req.r for row in rows]
        r = max(caps)
        thresholds = [row.threshold for row in rows] if decode else None
        criterion = self.exit_criterion if decode and any(t > 0 for t in thresholds) else None
        self.cache.select(lo, lo + len(rows), caps=caps if min(caps) < r else None, exit_criterion=criterion,
                          thresholds=thresholds if criterion else None)
        self.cache.warm_start = self.warm_start and decode  # a prompt starts as in training
        return self.model(ids, r=r, kv_cache=self.cache, logits_at=at)

    def _decode(self, rows):
        ids = torch.tensor([[row.input] for row in rows], dtype=torch.long, device=self.device)  # (d, 1)
        logits = self._forward(ids, 0, rows, decode=True)[:, -1]  # (d, V)
        depths = self.cache.depth[:, -1].tolist()
        for b, row in enumerate(rows):
            if row.held:  # it read a held prompt token: keep its depth, feed the next one
                if row.read is not None:
                    row.read.append(depths[b])
                row.feed_held()
            else:
                row.logits, row.depth, row.input = logits[b:b + 1], depths[b], None
        self.steps += 1
        self.decode_rows += len(rows)

    def _prefill(self, rows, lo):
        chunks = [row.pending[:self.prefill_chunk] for row in rows]
        T = max(len(c) for c in chunks)
        ids = torch.tensor([c + [PAD_ID] * (T - len(c)) for c in chunks], dtype=torch.long, device=self.device)
        starts = self.cache.lengths[lo:lo + len(rows)]
        last = torch.tensor([len(c) - 1 for c in chunks], device=self.device)
        logits = self._forward(ids, lo, rows, decode=False, at=last)  # (p, 1, V): the head at each chunk's end only
        for b, (row, chunk) in enumerate(zip(rows, chunks)):
            self.cache.lengths[lo + b] = starts[b] + len(chunk)  # drop the padding
            row.pending = row.pending[len(chunk):]
            if not row.pending:
                if row.followers:  # the prompt's other replies start from this prefill
                    self.cache.move_rows([lo + b] * len(row.followers), [self.rows.index(f) for f in row.followers])
                for reader in [row] + row.followers:
                    if reader.held is not None:  # its held prompt tokens go in with the next decodes
                        reader.feed_held()
                    else:
                        reader.logits, reader.depth = logits[b:b + 1, 0], row.req.r

    def _finish(self, b):
        row, self.rows[b] = self.rows[b], None
        if row.tool is not None:
            row.tool.cancel()
        row.req.rows_left -= 1
        if row.req.rows_left == 0:
            row.req._close()
        if not self._live():  # the batch is empty: the loop gives the memory back if it stays so
            self.idle_since = time.monotonic()

    def _fail_all(self, error):
        for b, row in enumerate(self.rows):
            if row is not None:
                self.rows[b] = None
                row.req._close(error)
        self.idle_since = time.monotonic()
