"""torch.compile of the blocks: the CPU twin of the GPU fast path. Varying r must not
recompile, and the compiled model must compute what the eager one does."""

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from nanochat.training import compile_blocks
from tests.test_train import tiny_model


def _train_step(model, x, r):
    loss = model.loss(x, torch.roll(x, -1, 1), r=r, bptt_k=2)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def test_varying_r_does_not_recompile(monkeypatch):
    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(value_embeds=True)
    # the eager backend traces with dynamo (guards, graph breaks) without inductor's codegen
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "eager"}))
    blocks = compile_blocks(model)
    assert all(b._compiled_call_impl is not None for b in blocks)
    x = torch.randint(0, 64, (2, 16))
    _train_step(model, x, r=3)  # r > bptt_k: runs no-grad and grad iterations
    with torch.no_grad():
        model(x, r=1)
    warm = dict(counters["stats"])
    for r in (1, 2, 5, 7, 4):
        _train_step(model, x, r=r)
    assert dict(counters["stats"]) == warm, (warm, dict(counters["stats"]))
    assert counters["graph_break"] == {}, counters["graph_break"]


def test_compiled_matches_eager():
    torch._dynamo.reset()
    model = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        eager = model(x, r=3)
        compile_blocks(model)  # inductor, as on GPU
        compiled = model(x, r=3)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_sampling_during_training_does_not_compile(monkeypatch):
    """base_train's samples (greedy, a new length every token) run eagerly: no new graphs."""
    from nanochat.training import sample_greedy
    torch._dynamo.reset()
    counters.clear()
    model = tiny_model()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "eager"}))
    compile_blocks(model)
    x = torch.randint(0, 64, (2, 16))
    _train_step(model, x, r=3)
    warm = dict(counters["stats"])
    vocab_ok = type("Tok", (), {"encode": lambda self, s, prepend: [prepend, 5, 6], "get_bos_token_id": lambda self: 1,
                                "decode": lambda self, ids: " ".join(map(str, ids))})()
    out = sample_greedy(model, vocab_ok, ["a", "b"], r=2, max_tokens=6)
    assert [p for p, _ in out] == ["a", "b"] and all(len(t.split()) == 6 for _, t in out)
    assert dict(counters["stats"]) == warm, (warm, dict(counters["stats"]))
    assert model.training  # back in training mode
