"""Continuous batching (nanochat/scheduler.py): with requests of different lengths, r, exit
thresholds and sampling settings joining and leaving one batch, each reply equals the one the
Engine gives that request alone, tool calls and early stops included; a slow tool call does
not stall the other rows; cancelled requests free their rows."""

import threading
import time

import pytest
import torch

from nanochat.engine import Engine
from nanochat.gpt import GPT
from nanochat.kv_cache import KVCache
from nanochat.scheduler import Request, Scheduler
from tests.test_engine import looped, max_err, tokens
from tests.test_gpt import build, tiny

TOOL_AT, STOP_AT = 12, 30  # absolute positions where the scripted model writes a python block, and stops


class ScriptedTools(GPT):
    """A real tiny looped GPT whose logits get a large bonus for a scripted token at some absolute
    positions: a python block from position TOOL_AT, <|assistant_end|> at STOP_AT. Replies whose
    prompts start early enough call the tool and stop early; the rest run to max_tokens."""

    def forward(self, idx, r=None, bptt_k=None, generator=None, kv_cache=None, logits_at=None):
        start = torch.tensor(kv_cache.lengths[kv_cache.rows])[:, None]  # (B, 1) before this forward
        logits = super().forward(idx, r, bptt_k, generator, kv_cache, logits_at)
        at = torch.arange(idx.size(1))[None] if logits_at is None else logits_at[:, None]  # the positions logits hold
        nxt = self.script[start + at + 1]  # the token each of them predicts
        bonus = torch.nn.functional.one_hot(nxt.clamp_min(0), logits.size(-1)) * (nxt >= 0)[..., None]
        return logits + 50.0 * bonus


def scripted_model(tokenizer):
    special = tokenizer.encode_special
    model = build(tiny(value_embeds=True, n_kv_head=2, n_recur=3, window_pattern="SSL", vocab_size=512),
                  perturb_inject=True)
    model.__class__ = ScriptedTools
    block = [special("<|python_start|>"), *tokenizer.encode("6*7"), special("<|python_end|>")]
    model.script = torch.full((model.rotary_len + 1,), -1)
    model.script[TOOL_AT:TOOL_AT + len(block)] = torch.tensor(block)
    model.script[STOP_AT] = special("<|assistant_end|>")
    return model


def fake_tool(code):
    return f"ran {code}"


# prompt length, r, max_tokens, temperature, seed: prompts over prefill_chunk=8 are read in chunks
REQUESTS = [(3, 1, 40, 0.0, 0), (5, 2, 16, 0.0, 1), (9, 3, 25, 0.9, 2), (14, 4, 6, 0.0, 3),
            (20, 2, 30, 0.0, 4), (26, 3, 18, 1.2, 5), (33, 1, 10, 0.0, 6), (41, 4, 22, 0.0, 7)]


def reply(steps, b=0):
    """Row b's reply from a request's Steps: (tokens, depths, sampled), the stop token left out."""
    kept = [s for s in steps if not s.done[b]]
    return [s.tokens[b] for s in kept], [s.depths[b] for s in kept], [s.sampled[b] for s in kept]


def solo(model, tokenizer, prompt, r, max_tokens, temperature, seed, adaptive, cache_mode):
    """The request alone: an Engine call (a scheduler of its own with this one request)."""
    engine = Engine(model, tokenizer, r=r, cache_mode=cache_mode, exit_criterion="kl" if adaptive else None,
                    exit_threshold=0.0, tool=fake_tool)
    return reply(engine.generate(prompt, max_tokens=max_tokens, temperature=temperature, top_k=20, seed=seed))


@pytest.mark.parametrize("adaptive,cache_mode,chunk", [(False, "exact", 8), (True, "exact", 8), (False, "shared", 64)])
def test_concurrent_replies_equal_solo(tokenizer, adaptive, cache_mode, chunk):
    """8 requests, 6 rows: 4 arrive at once, 4 join while those decode (r grows the cache), some
    wait for a row; each reply (tokens, depths, sampled-or-forced) equals the request alone."""
    model = scripted_model(tokenizer)
    prompts = [tokens(1, n, seed=10 + i)[0].tolist() for i, (n, *_) in enumerate(REQUESTS)]
    sched = Scheduler(model, tokenizer, max_rows=6, prefill_chunk=chunk, cache_mode=cache_mode, max_len=16,
                      tool=fake_tool)
    submit = lambda i: sched.submit(prompts[i], r=REQUESTS[i][1], max_tokens=REQUESTS[i][2],
                                    temperature=REQUESTS[i][3], top_k=20, seed=REQUESTS[i][4],
                                    exit_threshold=0.0 if adaptive else None)
    peak, resize = {"r": 0, "len": 0}, sched.cache.resize
    def watched(batch_size=None, max_r=None, max_len=None):
        peak["r"], peak["len"] = max(peak["r"], max_r or 0), max(peak["len"], max_len or 0)
        resize(batch_size, max_r, max_len)
    sched.cache.resize = watched
    reqs = [submit(i) for i in (0, 1, 6, 3)]
    for _ in range(4):
        sched.step()
    reqs += [submit(i) for i in (2, 4, 5, 7)]
    sched.run()
    order = [0, 1, 6, 3, 2, 4, 5, 7]
    calls = stops = 0
    for i, req in zip(order, reqs):
        got = reply(list(req))
        expected = solo(model, tokenizer, prompts[i], *REQUESTS[i][1:], adaptive, cache_mode)
        assert got[0] == expected[0], (i, adaptive, cache_mode)
        assert got[1] == expected[1], i
        assert got[2] == expected[2], i
        calls += not all(expected[2])
        stops += len(got[0]) < REQUESTS[i][2]
    assert calls >= 3 and stops >= 2, (calls, stops)  # tool calls and early stops were exercised
    assert peak["r"] == 4 and peak["len"] > 16  # it grew
    assert all(row is None for row in sched.rows) and not sched.waiting
    assert (sched.cache.batch_size, sched.cache.max_r, sched.cache.max_len) == (1, 1, 16)  # and gave it back
    assert sched.decode_rows / sched.steps > 2  # rows really shared the decode forwards


def test_slow_tool_call_does_not_stall_the_batch(tokenizer):
    model = scripted_model(tokenizer)
    release, calls = threading.Event(), []

    def slow_tool(code):
        calls.append(code)
        release.wait(30)
        return "done"

    sched = Scheduler(model, tokenizer, max_rows=4, tool=slow_tool)
    waits = sched.submit(tokens(1, 4)[0].tolist(), r=2, max_tokens=30, temperature=0)   # reaches the python block
    other = sched.submit(tokens(1, 40, seed=1)[0].tolist(), r=2, max_tokens=25, temperature=0)  # starts past it
    while not other.finished:
        sched.step()
    assert calls and not waits.finished and len(reply(list(other))[0]) == 25
    release.set()
    sched.run()
    assert tokenizer.decode(reply(list(waits))[0]).count("<|output_start|>done<|output_end|>") == 1


def test_cancelled_requests_leave_and_free_their_rows(tokenizer):
    model = looped(vocab_size=512)
    sched = Scheduler(model, tokenizer, max_rows=2, tool=None)
    a, b, c = (sched.submit(tokens(1, 5, seed=s)[0].tolist(), r=2, max_tokens=50, temperature=0) for s in range(3))
    sched.step()
    sched.step()
    assert sched.rows.count(None) == 0 and list(sched.waiting) == [c] and not c.finished
    a.cancel()
    sched.step()
    assert a.finished and sched.rows.count(None) == 0 and not sched.waiting  # c took a's row
    b.cancel()
    c.cancel()
    sched.run()
    assert sched.rows.count(None) == 2 and all(req.finished and req.over for req in (a, b, c))


def test_background_thread_serves_and_rejects_bad_input(tokenizer):
    model = looped(vocab_size=512)
    sched = Scheduler(model, tokenizer, max_rows=4, tool=None).start()
    try:
        reqs = [sched.submit(tokens(1, 3 + s, seed=s)[0].tolist(), r=2, max_tokens=8, temperature=0) for s in range(5)]
        replies = [reply(list(req)) for req in reqs]
        for s, got in enumerate(replies):
            assert got[0] == solo(model, tokenizer, tokens(1, 3 + s, seed=s)[0].tolist(), 2, 8, 0.0, 0, False, "exact")[0]
        with pytest.raises(ValueError, match="tokens"):
            sched.submit([], r=2)
        with pytest.raises(ValueError, match="positions"):
            sched.submit([1, 2], max_tokens=model.rotary_len)
        with pytest.raises(ValueError, match="max_rows"):
            Scheduler(model, tokenizer, max_rows=0)
    finally:
        sched.stop()


@torch.no_grad()
def test_cache_move_rows_and_grow_keep_decoding_exact():
    """Rows moved and a cache grown (more iterations, more positions) between decode steps."""
    model = looped(init_state="randn")
    idx = tokens(3, 20)
    full = model(idx, r=3)
    cache = KVCache(model, 4, 10, max_r=2)
    cache.select(1, 4)
    model(idx[:, :6], r=2, kv_cache=cache)  # rows 1..3 at r=2, cap 2
    cache.resize(max_r=3, max_len=20)
    cache.move_rows([1, 2, 3], [2, 3, 0])  # a permutation: rows now 2, 3, 0 hold sequences 0, 1, 2
    assert cache.max_r == 3 and cache.max_len == 20 and [cache.lengths[b] for b in (0, 2, 3)] == [6, 6, 6]
    # the first 6 tokens ran 2 iterations, so compare with the decode of a cache filled the same way
    ref = KVCache(model, 3, 20, max_r=3)
    ref.select(0, 3, caps=[2, 2, 2])
    model(idx[:, :6], r=2, kv_cache=ref)
    ref.select(0, 3)
    expected = torch.cat([model(idx[:, t:t + 1], r=3, kv_cache=ref) for t in range(6, 20)], dim=1)
    cache.select(2, 4)
    got01 = []
    for t in range(6, 20):
        cache.select(2, 4)
        got01.append(model(idx[:2, t:t + 1], r=3, kv_cache=cache))
        cache.select(0, 1)
        got01.append(model(idx[2:, t:t + 1], r=3, kv_cache=cache))
    got = torch.cat([torch.cat([got01[2 * k], got01[2 * k + 1]]) for k in range(14)], dim=1)
    assert max_err(got, expected) < 1e-5
    assert max_err(expected[:, -1], full[:, -1]) > 1e-4  # the r=2 prefix matters: the check is not vacuous


def test_request_assembles_rows_that_end_apart():
    """A request's Steps: one token per row; a row that has ended shows the filler, marked done,
    from then on; the Steps end when every row has, a row's error is raised, and a reader's
    `until` event ends the iteration early."""
    req = Request([[1, 2]], 3, 4, 4, 1.0, None, 3, None, filler=99)
    for b, events in enumerate([[(5, 2, True, False, False), (6, 3, False, True, True)],
                                [(7, 4, True, True, True)],
                                [(8, 1, True, False, False), (9, 2, True, False, False), (10, 3, True, False, False),
                                 (11, 4, True, False, True)]]):
        for event in events:
            req._put(b, *event)
    assert req.poll().tokens == [5, 7, 8]
    steps = list(req)
    assert [s.tokens for s in steps] == [[6, 99, 9], [99, 99, 10], [99, 99, 11]]
    assert [s.done for s in steps] == [[True, True, False], [True, True, False], [True, True, False]]
    assert [s.depths for s in steps] == [[3, 4, 2], [3, 4, 3], [3, 4, 4]] and req.over
    assert len(set(req.seeds)) == 3 and req.seeds[0] == 3  # row 0 keeps the seed, the others are drawn from it
    failed = Request([[1]], 1, 1, 4, 1.0, None, 0, None, filler=99)
    failed._put(0, 5, 1, True, False, False)
    failed._close(RuntimeError("device lost"))
    with pytest.raises(RuntimeError, match="device lost"):
        list(failed)
    waiting, stop = Request([[1]], 1, 1, 4, 1.0, None, 0, None, filler=99), threading.Event()
    stop.set()
    assert list(waiting.steps(until=stop)) == []


def test_n_replies_share_one_prefill_and_row_0_is_the_single_reply(tokenizer):
    """n rows of one prompt: one row reads the prompt and the others copy its cache; each row
    samples with its own seed, so row 0 is the n = 1 reply and the rows differ."""
    model = looped(vocab_size=512)
    sched = Scheduler(model, tokenizer, max_rows=4, tool=None)
    prompt = tokens(1, 9)[0].tolist()
    three = sched.submit(prompt, n=3, r=2, max_tokens=8, temperature=1.0, seed=5)
    one = sched.submit(prompt, n=1, r=2, max_tokens=8, temperature=1.0, seed=5)
    forwards = []
    real = sched._forward
    sched._forward = lambda ids, lo, rows, decode, at=None: (forwards.append((tuple(ids.shape), decode))
                                                             or real(ids, lo, rows, decode, at))
    sched.step()  # the prompt read by 2 rows (one per request), then one token decoded by all 4
    assert forwards == [((2, 9), False), ((4, 1), True)] and sched.cache.lengths[:4] == [10] * 4
    sched.run()
    steps = list(three)
    assert reply(steps, 0) == reply(list(one))
    assert len({tuple(reply(steps, b)[0]) for b in range(3)}) == 3
    with pytest.raises(ValueError, match="max_rows"):
        sched.submit(prompt, n=5)


def watch_resizes(sched):
    """A list that gets (reallocated, rows, bytes) after each of the scheduler's cache resizes."""
    calls, resize = [], sched.cache.resize
    def watched(batch_size=None, max_r=None, max_len=None):
        before = sched.cache.kv
        resize(batch_size, max_r, max_len)
        calls.append((sched.cache.kv is not before, sched.cache.batch_size, sched.cache.nbytes))
    sched.cache.resize = watched
    return calls


def test_cache_budget_admits_waits_refuses_and_shrinks(tokenizer):
    """Under a KV cache budget of two rows at r 2: two requests decode together, a third waits for
    a row to leave and still completes, one that can never fit fails with one clear line (and
    `admissible` says so beforehand), the cache never exceeds the budget and shrinks after."""
    from nanochat.scheduler import CacheBudgetError
    model = looped(vocab_size=512)
    length = 6 + 10
    budget = KVCache.bytes_for(model, 2, length, 2)
    sched = Scheduler(model, tokenizer, max_rows=4, tool=None, max_len=8, cache_budget=budget)
    resizes = watch_resizes(sched)
    reqs = [sched.submit(tokens(1, 6, seed=s)[0].tolist(), r=2, max_tokens=10, temperature=0) for s in range(3)]
    sched.step()
    assert sum(row is not None for row in sched.rows) == 2 and len(sched.waiting) == 1  # the third waits
    sched.run()
    for s, req in enumerate(reqs):
        assert reply(list(req))[0] == solo(model, tokenizer, tokens(1, 6, seed=s)[0].tolist(), 2, 10, 0.0, 0, False,
                                           "exact")[0]
    assert max(n for _, _, n in resizes) <= budget and sched.cache.nbytes < budget / 4  # within the budget, and given back after
    assert sched.admissible(1, 8, length) and "over this server's budget" in sched.admissible(1, 8, length)
    assert sched.admissible(2, 2, length) is None
    big = sched.submit(tokens(1, 6)[0].tolist(), r=8, max_tokens=10, temperature=0)
    sched.run()
    with pytest.raises(CacheBudgetError, match="lower recur, max_tokens or n"):
        list(big)


def test_a_burst_grows_the_cache_once(tokenizer):
    """Requests that arrive together are admitted in one step with one reallocation of the cache
    (one per request cost more than their prefill), and still decode as each would alone."""
    model = looped(vocab_size=512)
    sched = Scheduler(model, tokenizer, max_rows=4, tool=None, max_len=8)
    resizes = watch_resizes(sched)
    prompts = [tokens(1, 5 + s, seed=s)[0].tolist() for s in range(3)]
    reqs = [sched.submit(p, r=2, max_tokens=6, temperature=0) for p in prompts]
    sched.step()
    assert [new for new, _, _ in resizes] == [True] and sum(row is not None for row in sched.rows) == 3
    assert (sched.cache.batch_size, sched.cache.max_r) == (4, 2)  # 3 rows needed, 1 doubled twice
    sched.run()
    for p, req in zip(prompts, reqs):
        assert reply(list(req))[0] == solo(model, tokenizer, p, 2, 6, 0.0, 0, False, "exact")[0]


def test_arrivals_one_by_one_double_the_cache_and_it_is_given_back_when_idle(tokenizer, monkeypatch):
    """Requests arriving one after another, each while the others decode, grow the cache's rows
    1 -> 2 -> 4 -> 8 (3 reallocations for 7 arrivals, not 7) and still decode as each would alone;
    the served cache keeps its size while the batch is briefly empty and shrinks to one row at r 1
    once it has been empty for GIVE_BACK_AFTER seconds."""
    import nanochat.scheduler as scheduler
    model = looped(vocab_size=512)
    sched = Scheduler(model, tokenizer, max_rows=8, tool=None, max_len=8)
    resizes = watch_resizes(sched)
    prompts = [tokens(1, 4 + s, seed=s)[0].tolist() for s in range(8)]
    reqs = []
    for p in prompts:
        reqs.append(sched.submit(p, r=2, max_tokens=12, temperature=0))
        sched.step()
    # the first reallocation takes r from 1 to 2 at one row, then the rows double
    assert [rows for new, rows, _ in resizes if new] == [1, 2, 4, 8]
    assert sum(row is not None for row in sched.rows) == 8
    sched.run()
    for p, req in zip(prompts, reqs):
        assert reply(list(req))[0] == solo(model, tokenizer, p, 2, 12, 0.0, 0, False, "exact")[0]
    assert (sched.cache.batch_size, sched.cache.max_r) == (1, 1)  # run() gives it back at once

    monkeypatch.setattr(scheduler, "GIVE_BACK_AFTER", 0.3)
    sched = Scheduler(model, tokenizer, max_rows=8, tool=None, max_len=8).start()
    try:
        for s in range(2):
            req = sched.submit(prompts[s], r=2, max_tokens=12, temperature=0)
            list(req)
            assert (sched.cache.batch_size, sched.cache.max_r) == (1, 2)  # empty, but kept for the next request
        t0 = time.monotonic()
        while sched.cache.max_r != 1:
            assert time.monotonic() - t0 < 5, "the idle cache was never given back"
            time.sleep(0.02)
        assert time.monotonic() - t0 > 0.2 and sched.cache.batch_size == 1
    finally:
        sched.stop()


def test_presence_and_frequency_penalties_act_on_the_replys_own_tokens(tokenizer):
    """Greedy rows: a presence penalty past every logit gap never repeats a token of the reply;
    zero penalties give the plain greedy reply; each row keeps its own counts."""
    model = looped(vocab_size=512)
    sched = Scheduler(model, tokenizer, max_rows=4, tool=None)
    prompt = tokens(1, 9)[0].tolist()
    plain = sched.submit(prompt, n=1, r=2, max_tokens=24, temperature=0.0)
    zero = sched.submit(prompt, n=1, r=2, max_tokens=24, temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0)
    strong = sched.submit(prompt, n=2, r=2, max_tokens=24, temperature=0.0, presence_penalty=2.0, frequency_penalty=2.0)
    sched.run()
    plain_reply, zero_reply = reply(list(plain))[0], reply(list(zero))[0]
    rows = list(strong)
    assert plain_reply == zero_reply
    assert len(set(plain_reply)) < len(plain_reply), "the random model repeats itself greedily: no test otherwise"
    for b in range(2):
        penalized = reply(rows, b)[0]
        assert len(set(penalized)) == len(penalized) and penalized[0] == plain_reply[0], penalized
    with pytest.raises(ValueError, match="presence_penalty"):
        sched.submit(prompt, presence_penalty=3.0)


def test_under_adaptive_exit_the_first_reply_token_is_decoded_with_the_exit(tokenizer):
    """The prompt but its last token is read at the full r; that token goes in with the exit on,
    so the first reply token's depth is the exit's own (for every row of n sharing the prefill)."""
    model, threshold = looped(vocab_size=512), 1e-2
    prompt = tokens(1, 9)[0].tolist()
    sched = Scheduler(model, tokenizer, max_rows=2, tool=None)
    req = sched.submit(prompt, n=2, r=6, max_tokens=4, temperature=0.0, exit_threshold=threshold)
    sched.run()
    first = list(req)[0]
    with torch.inference_mode():  # by hand
        cache = KVCache(model, 1, 16, max_r=6, exit_criterion="kl", exit_threshold=threshold)
        cache.exit_criterion = None
        model(torch.tensor([prompt[:-1]]), r=6, kv_cache=cache)
        cache.exit_criterion = "kl"
        token = model(torch.tensor([prompt[-1:]]), r=6, kv_cache=cache)[:, -1].argmax(-1).item()
        depth = cache.depth[0, -1].item()
    assert first.tokens == [token, token] and first.depths == [depth, depth]
    assert depth < 6  # the exit did stop it early: the depth is not the prefill's r



def test_read_depths_reads_the_prompt_one_token_at_a_time_with_the_exit(tokenizer):
    """read_depths: the prompt's first token is prefilled at the full r, every later one goes in
    alone with the exit on; the first Step carries each row's iterations at positions 0..L-2, and
    the reply starts from that reading (by hand, with a KVCache, the same numbers)."""
    model, threshold = looped(vocab_size=512), 1e-2
    prompt = tokens(1, 9)[0].tolist()
    sched = Scheduler(model, tokenizer, max_rows=2, tool=None)
    req = sched.submit(prompt, n=2, r=6, max_tokens=3, temperature=0.0, exit_threshold=threshold, read_depths=True)
    sched.run()
    steps = list(req)
    with torch.inference_mode():
        cache = KVCache(model, 1, 16, max_r=6, exit_criterion="kl", exit_threshold=threshold)
        cache.exit_criterion = None
        model(torch.tensor([prompt[:1]]), r=6, kv_cache=cache)
        cache.exit_criterion = "kl"
        depths = [6]
        for t in prompt[1:]:
            logits = model(torch.tensor([[t]]), r=6, kv_cache=cache)[:, -1]
            depths.append(cache.depth[0, -1].item())
    assert steps[0].prompt_depths == [depths[:-1], depths[:-1]] and len(depths) == len(prompt)
    assert steps[0].depths == [depths[-1]] * 2 and steps[0].tokens == [logits.argmax(-1).item()] * 2
    assert min(depths[1:]) < 6 and all(s.prompt_depths is None for s in steps[1:])
    with pytest.raises(ValueError, match="read_depths needs an exit_threshold"):
        sched.submit(prompt, read_depths=True)
    short = sched.submit(prompt[:2], r=6, max_tokens=1, temperature=0.0, exit_threshold=threshold, read_depths=True)
    sched.run()
    assert list(short)[0].prompt_depths == [[6]]  # BOS alone before the held token
