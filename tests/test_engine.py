"""KV cache and engine: cached decoding == the full forward, the shared cache's measured error,
adaptive exit, samples sharing a prefill, tool use, and chat_cli end to end. Tiny fp32 models
built through meta -> to_empty -> init_weights with zero-initialised projections perturbed."""

import dataclasses
import gc
import os
import subprocess
import sys
import weakref

import pytest
import torch

from nanochat.checkpoint_manager import save_checkpoint
from nanochat.engine import Engine
from nanochat.scheduler import sample_next_token, sample_rows
from nanochat.gpt import GPT
from nanochat import gpt as gpt_module
from nanochat.kv_cache import EXIT_CRITERIA, KL_EVERY, KVCache
from tests.test_gpt import build, tiny, tokens

ATOL = 1e-5  # cached vs full forward, fp32 logits of magnitude up to softcap = 15 (measured ~1.5e-6)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def looped(**kw):
    """Windows (8) shorter than the sequences, value embeds, GQA, a state that matters."""
    return build(tiny(**{**dict(value_embeds=True, n_kv_head=2, n_recur=3, window_pattern="SSL"), **kw}),
                 perturb_inject=True)


def decode_all(model, idx, r, cache, chunks=(5, 3)):
    """Prefill, a chunk at an offset, then one token at a time: (B, T, V) logits."""
    out, t = [], 0
    for n in chunks:
        out.append(model(idx[:, t:t + n], r=r, kv_cache=cache))
        t += n
    for t in range(t, idx.size(1)):
        out.append(model(idx[:, t:t + 1], r=r, kv_cache=cache))
    return torch.cat(out, dim=1)


def max_err(a, b):
    return (a - b).abs().max().item()


# -----------------------------------------------------------------------------
# the cache

@pytest.mark.parametrize("r", [1, 3])
@pytest.mark.parametrize("init_state", ["copy", "randn"])
@torch.no_grad()
def test_exact_cache_decode_equals_full_forward(r, init_state):
    model = looped(init_state=init_state)
    idx = tokens(3, 24)
    full = model(idx, r=r)
    cache = KVCache(model, 3, 24, max_r=r)
    err = max_err(decode_all(model, idx, r, cache), full)
    assert err < ATOL, err
    assert cache.lengths == [24] * 3 and cache.depth.tolist() == [[r]] * 3
    assert cache.recur_view().shape == (3, r, 2, 3, 24, 2, 16)  # (block, iteration, k/v, B, T, Hkv, D)


@torch.no_grad()
def test_prefill_head_only_where_logits_are_used():
    """logits_at: the head runs at one position per row, and those logits are the full
    forward's; the cache is filled as by a prefill of every position (decoding goes on exactly)."""
    for model in (looped(init_state="randn"), build(tiny(arch="gpt"))):
        r = 3 if model.config.arch == "looped" else 1
        idx = tokens(3, 20)
        full = model(idx, r=r)
        cache = KVCache(model, 3, 20, max_r=r)
        at = torch.tensor([15, 9, 15])
        got = model(idx[:, :16], r=r, kv_cache=cache, logits_at=at)
        assert got.shape == (3, 1, full.size(-1)) and max_err(got[:, 0], full[torch.arange(3), at]) < ATOL
        after = model(idx[:, 16:], r=r, kv_cache=cache)
        assert max_err(after, full[:, 16:]) < ATOL
    with pytest.raises(ValueError, match="kv_cache"):
        model(idx, logits_at=at)


@torch.no_grad()
def test_exact_cache_gpt_arch():
    model = build(tiny(arch="gpt", n_kv_head=2, value_embeds=True))
    idx = tokens(2, 24)
    err = max_err(decode_all(model, idx, 1, KVCache(model, 2, 24)), model(idx))
    assert err < ATOL, err


@torch.no_grad()
def test_rows_of_different_lengths_decode_exactly():
    """Prompts of different lengths, each prefilled in its own row, then decoded as one batch:
    per-row positions, masks and windows."""
    model = looped(init_state="randn")
    r, lengths, steps = 2, [3, 11, 6], 14
    seqs = [tokens(1, L + steps, seed=i)[0] for i, L in enumerate(lengths)]
    cache = KVCache(model, 3, max(lengths) + steps, max_r=r)
    for b, (seq, L) in enumerate(zip(seqs, lengths)):
        cache.select(b, b + 1)
        model(seq[None, :L], r=r, kv_cache=cache)
    cache.select(0, 3)
    outs = [model(torch.stack([s[L + t] for s, L in zip(seqs, lengths)])[:, None], r=r, kv_cache=cache)
            for t in range(steps)]
    outs = torch.cat(outs, dim=1)  # (3, steps, V)
    for b, (seq, L) in enumerate(zip(seqs, lengths)):
        full = model(seq[None], r=r)[0, L:]
        assert max_err(outs[b], full) < ATOL, (b, max_err(outs[b], full))


@torch.no_grad()
def test_shared_cache_memory_and_measured_error():
    model = looped()
    idx = tokens(2, 24)
    nbytes = {(mode, r): KVCache(model, 2, 24, max_r=r, mode=mode).nbytes for mode in ("exact", "shared") for r in (1, 4, 8)}
    slot = 2 * 2 * 24 * 2 * 16 * 4  # k and v, B, T, Hkv, D, fp32
    assert nbytes["shared", 1] == nbytes["shared", 4] == nbytes["shared", 8] == (1 + 3 + 1) * slot
    assert nbytes["exact", 4] == (1 + 3 * 4 + 1) * slot and nbytes["exact", 8] == (1 + 3 * 8 + 1) * slot
    errors = {}
    for r in (1, 2, 4):
        full = model(idx, r=r)
        cache = KVCache(model, 2, 24, max_r=r, mode="shared")
        prefill = model(idx[:, :8], r=r, kv_cache=cache)
        assert max_err(prefill, full[:, :8]) < ATOL  # a prefill runs its iterations together: exact
        decoded = torch.cat([model(idx[:, t:t + 1], r=r, kv_cache=cache) for t in range(8, 24)], dim=1)
        errors[r] = max_err(decoded, full[:, 8:])
        agree = (decoded.argmax(-1) == full[:, 8:].argmax(-1)).float().mean().item()
        print(f"shared vs exact cache, r={r}: max |logit error| {errors[r]:.3e}, argmax agreement {agree:.2%}")
    assert errors[1] < ATOL  # one iteration: the last one is the only one
    assert all(torch.isfinite(torch.tensor(e)) for e in errors.values()) and errors[4] > ATOL


@torch.no_grad()
def test_cache_is_freed_without_the_cycle_collector():
    """A used cache must go when its last reference does: an eval that builds one cache per
    batch otherwise keeps them all until the cyclic collector happens to run (it counts
    objects, not bytes), which took a depth eval to 23 GB."""
    model = looped()
    gc.disable()
    try:
        cache = KVCache(model, 2, 8, max_r=2, exit_criterion="kl", exit_threshold=1e-3)
        model(tokens(2, 8), r=2, kv_cache=cache)
        ref = weakref.ref(cache)
        del cache
        assert ref() is None
    finally:
        gc.enable()


@torch.no_grad()
def test_cache_rejects_bad_use():
    model = looped()
    with pytest.raises(ValueError, match="mode"):
        KVCache(model, 1, 8, mode="paged")
    with pytest.raises(ValueError, match="exit_criterion"):
        KVCache(model, 1, 8, exit_criterion="entropy")
    with pytest.raises(ValueError, match="arch='gpt'"):
        KVCache(build(tiny(arch="gpt")), 1, 8, max_r=2)
    with pytest.raises(ValueError, match="max_len"):
        KVCache(model, 1, model.rotary_len + 1)
    cache = KVCache(model, 1, 8, max_r=2)
    with pytest.raises(AssertionError, match="max_r=2"):
        model(tokens(1, 4), r=3, kv_cache=cache)
    model(tokens(1, 8), r=2, kv_cache=cache)
    with pytest.raises(AssertionError, match="cache full"):
        model(tokens(1, 1), r=2, kv_cache=cache)
    with pytest.raises(ValueError, match="bptt_k"):
        model(tokens(1, 1), r=2, bptt_k=1, kv_cache=KVCache(model, 1, 8, max_r=2))


# -----------------------------------------------------------------------------
# adaptive exit and warm start

@pytest.mark.parametrize("criterion", EXIT_CRITERIA)
@torch.no_grad()
def test_adaptive_threshold_zero_is_fixed_r(criterion):
    model = looped(init_state="randn")
    idx = tokens(3, 20)
    fixed = decode_all(model, idx, 4, KVCache(model, 3, 20, max_r=4))
    cache = KVCache(model, 3, 20, max_r=4, exit_criterion=criterion, exit_threshold=0.0)
    adaptive = decode_all(model, idx, 4, cache)
    assert torch.equal(adaptive, fixed)
    assert cache.depth.tolist() == [[4]] * 3


def kl_changes(model, idx, r):
    """The KL criterion of every token at every iteration, from full forwards."""
    logp = [torch.log_softmax(model(idx, r=i), -1) for i in range(1, r + 1)]
    return torch.stack([(p.exp() * (p - q)).sum(-1) for p, q in zip(logp, logp[1:])], dim=-1)  # (B, T, r-1)


@torch.no_grad()
def test_adaptive_exit_depths_and_cache_rule():
    model = looped()
    r, idx = 6, tokens(3, 16)
    threshold = kl_changes(model, idx, r)[:, 8:].median().item()  # about half the checks stop a token
    cache = KVCache(model, 3, 16, max_r=r, exit_criterion="kl", exit_threshold=threshold)
    model(idx[:, :8], r=r, kv_cache=cache)
    depths, logits = [], []
    for t in range(8, 16):
        logits.append(model(idx[:, t:t + 1], r=r, kv_cache=cache))
        depths.append(cache.depth[:, 0])
        view = cache.recur_view()  # Huginn's rule: slots a token skipped hold its last computed iteration
        for b, d in enumerate(cache.depth[:, 0].tolist()):
            for i in range(d, r):
                assert torch.equal(view[:, i, :, b, t], view[:, d - 1, :, b, t])
    depths = torch.stack(depths, dim=1)  # (B, 8)
    print(f"adaptive KL < {threshold:.2e}: depths {depths.tolist()}")
    assert depths.min() >= 2 and depths.max() <= r and len(set(depths.flatten().tolist())) > 1
    # each row's entries depend on that row alone: batched == one row at a time
    for b in range(3):
        single = KVCache(model, 1, 16, max_r=r, exit_criterion="kl", exit_threshold=threshold)
        model(idx[b:b + 1, :8], r=r, kv_cache=single)
        for t in range(8, 16):
            out = model(idx[b:b + 1, t:t + 1], r=r, kv_cache=single)
            assert single.depth.item() == depths[b, t - 8]
            assert max_err(out[0], logits[t - 8][b]) < ATOL
    # a huge threshold stops every token at the first check
    cache = KVCache(model, 3, 16, max_r=r, exit_criterion="state", exit_threshold=1e9)
    model(idx[:, :8], r=r, kv_cache=cache)
    model(idx[:, 8:9], r=r, kv_cache=cache)
    assert cache.depth.tolist() == [[2]] * 3


@torch.no_grad()
def test_state_kl_exit_stops_at_the_first_test_that_passes(monkeypatch):
    """"state+kl" stops a token where the state test alone would, or earlier, at the first KL check
    (every KL_EVERY iterations, against the previous check's distribution) under threshold *
    KL_PER_STATE. The last token decodes after a prefill at the cap, so its distribution after i
    iterations is its decode at a fixed r = i; the ratio is set so that KL stops one row first."""
    model = looped()
    r, idx, threshold, k = 8, tokens(3, 12), 0.01, KL_EVERY["state+kl"]
    monkeypatch.setattr(gpt_module, "KL_PER_STATE", 0.25)  # KL < 2.5e-3

    def decode_last(r_last, criterion=None):
        cache = KVCache(model, 3, 12, max_r=r, exit_criterion=criterion, exit_threshold=threshold)
        cache.exit_criterion = None  # the prefill runs the cap
        model(idx[:, :-1], r=r, kv_cache=cache)
        cache.exit_criterion = criterion
        return torch.log_softmax(model(idx[:, -1:], r=r_last, kv_cache=cache)[:, -1], -1), cache.depth[:, 0].tolist()

    logp = [decode_last(i)[0] for i in range(1, r + 1)]  # after i iterations
    by_state, both = decode_last(r, "state")[1], decode_last(r, "state+kl")[1]
    expected = []
    for b, d in enumerate(by_state):
        checks = [i for i in range(2 * k, r + 1, k)
                  if (logp[i - k - 1][b].exp() * (logp[i - k - 1][b] - logp[i - 1][b])).sum() < threshold * 0.25]
        expected.append(min([d, *checks]))
    print(f"state {by_state}, state+kl {both}")
    assert both == expected and both != by_state


@torch.no_grad()
def test_warm_start_starts_from_previous_final_state():
    model = looped(init_state="randn")
    idx = tokens(2, 12)
    cold = KVCache(model, 2, 12, max_r=3)
    warm = KVCache(model, 2, 12, max_r=3, warm_start=True)
    torch.testing.assert_close(model(idx[:, :6], r=3, kv_cache=warm), model(idx[:, :6], r=3, kv_cache=cold),
                               atol=0, rtol=0)  # a prefill starts as in training
    assert warm.state.shape == (2, 64)
    a, b = model(idx[:, 6:7], r=3, kv_cache=warm), model(idx[:, 6:7], r=3, kv_cache=cold)
    assert max_err(a, b) > 1e-3
    again = KVCache(model, 2, 12, max_r=3, warm_start=True)
    model(idx[:, :6], r=3, kv_cache=again)
    assert torch.equal(model(idx[:, 6:7], r=3, kv_cache=again), a)


# -----------------------------------------------------------------------------
# the engine

def chat_model(**kw):
    return looped(vocab_size=512, **kw)  # the tokenizer fixture's vocab: special tokens included


def test_sample_next_token():
    logits = torch.tensor([[0.0, 5.0, 1.0, -2.0]]).repeat(1000, 1)
    rng = lambda: torch.Generator().manual_seed(0)
    assert (sample_next_token(logits, rng(), temperature=0) == 1).all()
    top2 = sample_next_token(logits, rng(), temperature=5.0, top_k=2)
    assert set(top2.tolist()) == {1, 2}
    assert set(sample_next_token(logits, rng(), temperature=100.0).tolist()) == {0, 1, 2, 3}
    assert torch.equal(sample_next_token(logits, rng(), 1.0, 3), sample_next_token(logits, rng(), 1.0, 3))
    # nucleus: p(1) = 0.97, so top_p 0.9 keeps token 1 alone; 0.99 adds token 2 (0.018), never 0 or 3
    assert (sample_next_token(logits, rng(), 1.0, top_p=0.9) == 1).all()
    assert set(sample_next_token(logits, rng(), 1.0, top_p=0.99).tolist()) == {1, 2}
    assert set(sample_next_token(logits, rng(), 1.0, top_k=3, top_p=0.99).tolist()) == {1, 2}


def test_engine_greedy_equals_naive_generate(tokenizer):
    for kw in (dict(), dict(init_state="randn")):
        model = chat_model(**kw)
        prompt = tokens(1, 7)[0].tolist()
        engine = Engine(model, tokenizer, r=3, tool=None)
        got = [step.tokens[0] for step in engine.generate(prompt, max_tokens=12, temperature=0)]
        expected = list(model.generate(prompt, len(got), r=3))
        assert len(got) > 1 and got == expected


def test_batched_generation_equals_one_row_at_a_time(tokenizer):
    model = chat_model()
    prompts = [tokens(1, n, seed=n)[0].tolist() for n in (3, 9, 5)]
    for options in (dict(), dict(cache_mode="shared"), dict(exit_criterion="kl", exit_threshold=1e-4)):
        engine = Engine(model, tokenizer, r=3, tool=None, **options)
        batched, _, batched_depths = engine.generate_batch(prompts, num_samples=2, max_tokens=10, temperature=0)
        for p, prompt in enumerate(prompts):
            alone, _, depths = engine.generate_batch(prompt, max_tokens=10, temperature=0)
            assert batched[2 * p] == batched[2 * p + 1] == alone[0], options
            assert batched_depths[2 * p] == depths[0]


def test_samples_share_one_prefill_and_are_reproducible(tokenizer, monkeypatch):
    model = chat_model()
    calls = []
    real_forward = GPT.forward
    def counting_forward(self, idx, *args, **kwargs):
        calls.append(tuple(idx.shape))
        return real_forward(self, idx, *args, **kwargs)
    monkeypatch.setattr(GPT, "forward", counting_forward)
    engine = Engine(model, tokenizer, r=2, tool=None)
    prompt = tokens(1, 9)[0].tolist()
    results, masks, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=8, temperature=1.0, seed=7)
    assert calls[0] == (1, 9) and all(shape == (4, 1) for shape in calls[1:])  # one prefill, then decode
    assert len({tuple(r) for r in results}) > 1  # the samples differ
    assert all(r[:9] == prompt and m[:9] == [0] * 9 for r, m in zip(results, masks))
    assert engine.generate_batch(prompt, num_samples=4, max_tokens=8, temperature=1.0, seed=7)[0] == results
    assert engine.generate_batch(prompt, num_samples=4, max_tokens=8, temperature=1.0, seed=8)[0] != results


class ScriptedModel(GPT):
    """A real tiny GPT (so the cache runs) whose logits follow a script: write a python block,
    then once the tool's <|output_end|> is in the context, write "ok" and stop."""
    def forward(self, idx, r=None, bptt_k=None, generator=None, kv_cache=None, logits_at=None):
        logits = super().forward(idx, r, bptt_k, generator, kv_cache, logits_at)
        self.history = getattr(self, "history", []) + idx[0].tolist()
        if not hasattr(self, "prompt_len"):
            self.prompt_len = len(self.history)
        written = self.history[self.prompt_len:]
        if self.output_end in written:
            after = written[written.index(self.output_end) + 1:]
            nxt = self.ending[min(len(after), len(self.ending) - 1)]
        else:
            nxt = self.script[min(len(written), len(self.script) - 1)]
        logits[:, -1] = -10.0
        logits[:, -1, nxt] = 10.0
        return logits


def test_tool_use_forces_the_output_tokens(tokenizer):
    special = tokenizer.encode_special
    with torch.device("meta"):
        model = ScriptedModel(tiny(vocab_size=512))
    model.to_empty(device="cpu")
    model.init_weights()
    model.script = [special("<|python_start|>"), *tokenizer.encode("print(6 * 7)"), special("<|python_end|>")]
    model.output_end = special("<|output_end|>")
    model.ending = [*tokenizer.encode(" ok"), special("<|assistant_end|>")]
    engine = Engine(model, tokenizer, r=2)
    prompt = [tokenizer.get_bos_token_id(), special("<|user_start|>"), *tokenizer.encode("6 times 7?"),
              special("<|user_end|>"), special("<|assistant_start|>")]
    steps = list(engine.generate(prompt, max_tokens=40, temperature=0))
    reply = [s.tokens[0] for s in steps if not s.done[0]]
    forced = [special("<|output_start|>"), *tokenizer.encode("42"), special("<|output_end|>")]
    assert reply == model.script + forced + model.ending[:-1]
    sampled = [s.sampled[0] for s in steps if not s.done[0]]
    assert sampled == [True] * len(model.script) + [False] * len(forced) + [True] * (len(model.ending) - 1)
    assert steps[-1].done[0] and steps[-1].tokens[0] == special("<|assistant_end|>")
    assert tokenizer.decode(reply).endswith("<|output_start|>42<|output_end|> ok")


def test_engine_rejects_bad_options(tokenizer):
    model = chat_model()
    with pytest.raises(ValueError, match="mode"):
        Engine(model, tokenizer, cache_mode="paged")
    with pytest.raises(ValueError, match="exit_threshold"):
        Engine(model, tokenizer, exit_criterion="kl", exit_threshold=-1.0)
    engine = Engine(model, tokenizer, r=2, tool=None)
    with pytest.raises(ValueError, match="tokens"):
        next(engine.generate([]))
    with pytest.raises(ValueError, match="temperature"):
        next(engine.generate([1, 2], temperature=-1))


# -----------------------------------------------------------------------------
# chat_cli end to end

def run_cli(base_dir, *argv):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base_dir), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "scripts.chat_cli", "--device-type", "cpu", *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_chat_cli_one_shot_and_missing_checkpoint(tokenizer, tmp_path):
    tokenizer.save(os.path.join(tmp_path, "tokenizer"))
    model = chat_model()
    meta = {"model_config": dataclasses.asdict(model.config), "eval_r": 2}
    save_checkpoint(os.path.join(tmp_path, "chatsft_checkpoints", "s1"), 5, model.state_dict(), {}, {}, meta)
    out = run_cli(tmp_path, "-p", "hello there", "--max-new-tokens", "6", "--adaptive", "0.01")
    assert out.returncode == 0, out.stderr
    assert "sft step 5" in out.stdout and "r=2" in out.stdout
    reply = out.stdout.split("Assistant: ", 1)[1]
    assert reply.strip() and "mean depth" in reply
    missing = run_cli(tmp_path, "--source", "base", "-p", "hi")
    assert missing.returncode == 2 and "error: no base checkpoint" in missing.stderr and "Traceback" not in missing.stderr
    wrong_tag = run_cli(tmp_path, "--model-tag", "s99", "-p", "hi")
    assert wrong_tag.returncode == 2 and "no checkpoint in" in wrong_tag.stderr


def test_chat_cli_context_overflow_is_one_clear_message(tokenizer, tmp_path):
    tokenizer.save(os.path.join(tmp_path, "tokenizer"))
    model = chat_model()  # 320 positions
    meta = {"model_config": dataclasses.asdict(model.config), "eval_r": 2}
    save_checkpoint(os.path.join(tmp_path, "chatsft_checkpoints", "s1"), 5, model.state_dict(), {}, {}, meta)
    too_long, medium = "the loop " * 300, "the loop " * 40
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "scripts.chat_cli", "--device-type", "cpu", "--max-new-tokens", "100",
                          "--temperature", "0"], input=f"{too_long}\n{medium}\n{medium}\nquit\n", cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    from nanochat.execution import describe_sandbox
    assert describe_sandbox() in out.stdout.splitlines()  # which sandbox the tool calls get, said at start
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "this question is" in errors[0] and "--max-new-tokens 100" in errors[0]
    assert "starting over" in out.stderr  # the second medium question no longer fits after the first
    assert out.stdout.count("Assistant: ") == 2
    one_shot = run_cli(tmp_path, "-p", too_long, "--max-new-tokens", "6")
    assert one_shot.returncode == 2 and one_shot.stderr.startswith("error: this question is"), one_shot.stderr
    assert one_shot.stderr.count("\n") == 1 and "Traceback" not in one_shot.stderr


def test_sample_rows_draws_each_row_as_if_alone_and_with_its_distribution():
    """The batched draw: each row's token is the one it draws alone with its own seed and settings,
    whatever the rows beside it ask; a greedy row leaves its generator untouched; the frequencies
    follow the softmax of the kept tokens."""
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    settings = [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (0.0, None, None), (2.0, 3, 0.5)]
    for seed in range(20):
        rngs = [torch.Generator().manual_seed(seed * 10 + i) for i in range(5)]
        together = sample_rows(logits, rngs, *zip(*settings))
        for i, (t, k, p) in enumerate(settings):
            alone = sample_rows(logits[i:i + 1], [torch.Generator().manual_seed(seed * 10 + i)], [t], [k], [p])
            assert together[i] == alone[0], (seed, i)
        untouched = torch.Generator().manual_seed(seed * 10 + 3)
        assert torch.equal(rngs[3].get_state(), untouched.get_state())  # the greedy row drew nothing
        assert together[3] == logits[3].argmax()
    # frequencies: temperature 0.5 over the top 3 of [2, 1, 0, -1]
    n, rng = 20000, torch.Generator().manual_seed(1)
    row = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    drawn = torch.stack([sample_rows(row, [rng], [0.5], [3], [None])[0] for _ in range(n)])
    want = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / 0.5, dim=0)
    got = torch.bincount(drawn, minlength=4).float() / n
    assert got[3] == 0 and torch.allclose(got[:3], want, atol=0.01), (got, want)


def test_tiny_temperature_samples_greedily():
    logits = torch.tensor([[0.0, 5.0, 1.0, -2.0], [3.0, 0.0, 0.0, 2.9]])
    for t in (1e-45, 1e-9, 5e-4):
        assert sample_next_token(logits, torch.Generator().manual_seed(0), temperature=t).tolist() == [1, 0]
        assert sample_next_token(logits, torch.Generator().manual_seed(0), t, 2).tolist() == [1, 0]


def test_tool_answers_like_a_python_prompt():
    from nanochat.python_tool import run_python
    assert run_python("48/2") == "24"  # GSM8K renders <<48/2=24>> as output "24"
    assert run_python("'strawberry'.count('r')") == "3"
    assert run_python("x = 3\nx * 2.5") == "7.5"
    assert run_python("print('a')\nNone") == "a"
    assert "ZeroDivisionError" in run_python("1/0")
