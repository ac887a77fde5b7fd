"""MuonAdamW: the polar iteration's band, AdamW parity with torch, Muon's step by hand,
group validation, resume == uninterrupted, and 2 gloo ranks == 1 rank with halved state."""

import copy
import datetime
import io

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from nanochat.optim import MuonAdamW, orthogonalize


def _with_spectrum(m, n, s, seed=0):
    """An m x n matrix with singular values s (min(m, n) of them)."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return (U @ torch.diag(s.double()) @ V.T).float()


@pytest.mark.parametrize("shape", [(64, 64), (96, 32), (32, 96), (3, 200)])
def test_polar_express_singular_value_band(shape):
    # Promise of the 5-step Polar Express schedule: after dividing by 1.01 x the Frobenius norm,
    # every singular value in [1e-3, 1] is mapped into [0.8589, 1.1411] (checked on a fine grid
    # in float64); we give the band a little room for fp32 rounding.
    m, n = shape
    k = min(m, n)
    s = torch.logspace(0, -2, k)  # condition number 100: normalised values stay above 1e-3
    assert (s.min() / (s.norm() * 1.01)) > 1e-3
    G = _with_spectrum(m, n, s)
    for X in (G, -3.0 * G):  # the iteration is scale invariant and odd
        sv = torch.linalg.svdvals(orthogonalize(X).double())
        assert sv.min() > 0.85 and sv.max() < 1.15, (shape, sv.min().item(), sv.max().item())
    # a random Gaussian tall/wide matrix is well conditioned: same band, and 2 extra
    # convergent steps take every singular value to 1
    if m != n:
        G = torch.randn(m, n, generator=torch.Generator().manual_seed(1))
        sv = torch.linalg.svdvals(orthogonalize(G).double())
        assert sv.min() > 0.85 and sv.max() < 1.15
        sv = torch.linalg.svdvals(orthogonalize(G, steps=7).double())
        assert (sv - 1).abs().max() < 1e-4, sv
    # batched input gives the same result as one matrix at a time
    B = torch.stack([G, 2 * G.flip(0)])
    torch.testing.assert_close(orthogonalize(B)[1], orthogonalize(2 * G.flip(0)), atol=1e-5, rtol=0)


def test_adamw_matches_torch():
    torch.manual_seed(0)
    ps = [torch.randn(5, 7), torch.randn(3), torch.randn(1)]
    mine = [nn.Parameter(p.clone()) for p in ps]
    ref = [nn.Parameter(p.clone()) for p in ps]
    hp = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    opt = MuonAdamW([{"params": mine, "kind": "adamw", **hp}])
    ref_opt = torch.optim.AdamW(ref, **hp)
    for step in range(6):
        grads = [torch.randn_like(p) * 10 ** (step % 3 - 1) for p in ps]
        for p, q, g in zip(mine, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
        for p, q in zip(mine, ref):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_muon_step_by_hand(shape):
    torch.manual_seed(0)
    lr, mom, wd = 0.02, 0.9, 0.1
    p0 = torch.randn(shape)
    p = nn.Parameter(p0.clone())
    opt = MuonAdamW([{"params": [p], "kind": "muon", "lr": lr, "momentum": mom, "weight_decay": wd}])
    scale = max(1.0, shape[0] / shape[1]) ** 0.5
    g1, g2 = torch.randn(shape), torch.randn(shape)
    # step 1 from a zero buffer: buf = (1-m) g, Nesterov update = (1-m) g + m buf
    p.grad = g1.clone()
    opt.step()
    buf = (1 - mom) * g1
    u = (1 - mom) * g1 + mom * buf
    expected = p0 * (1 - lr * wd) - lr * scale * orthogonalize(u)
    torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)
    # the step is lr * scale times (nearly) the polar factor U V^T of the gradient
    U, _, Vh = torch.linalg.svd(g1, full_matrices=False)
    step = (p0 * (1 - lr * wd) - p.detach()) / (lr * scale)
    cos = (step * (U @ Vh)).sum() / (step.norm() * (U @ Vh).norm())
    assert cos > 0.99, cos
    # step 2: the buffer carries momentum
    p.grad = g2.clone()
    opt.step()
    buf = mom * buf + (1 - mom) * g2
    u = (1 - mom) * g2 + mom * buf
    expected = expected * (1 - lr * wd) - lr * scale * orthogonalize(u)
    torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, atol=1e-6, rtol=0)


def test_invalid_groups_name_the_problem():
    w, v = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match=r"shape \(4,\) is 1-D"):
        MuonAdamW([{"params": [w, v], "kind": "muon", "lr": 0.02}])
    with pytest.raises(ValueError, match="kind='sgd'"):
        MuonAdamW([{"params": [w], "kind": "sgd", "lr": 0.02}])
    with pytest.raises(ValueError, match="kind=None"):
        MuonAdamW([{"params": [w], "lr": 0.02}])
    with pytest.raises(ValueError, match="weight_decy"):
        MuonAdamW([{"params": [w], "kind": "muon", "lr": 0.02, "weight_decy": 0.1}])
    with pytest.raises(ValueError, match="betas"):  # an adamw setting in a muon group is a mistake
        MuonAdamW([{"params": [w], "kind": "muon", "lr": 0.02, "betas": (0.9, 0.95)}])
    with pytest.raises(ValueError, match="missing 'lr'"):
        MuonAdamW([{"params": [v], "kind": "adamw"}])


def test_defaults_initial_lr_and_none_grads():
    w, u, v = (nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4)))
    opt = MuonAdamW([{"params": [w, u], "kind": "muon", "lr": 0.02},
                     {"params": [v], "kind": "adamw", "lr": 0.3, "name": "scalars"}])
    muon, adamw = opt.param_groups
    assert (muon["momentum"], muon["ns_steps"], muon["weight_decay"], muon["initial_lr"]) == (0.95, 5, 0.0, 0.02)
    assert (adamw["betas"], adamw["eps"], adamw["weight_decay"], adamw["initial_lr"]) == ((0.8, 0.95), 1e-10, 0.0, 0.3)
    # a param without grad is left alone and gets no state, as in torch.optim
    u0, v0 = u.detach().clone(), v.detach().clone()
    w.grad = torch.randn(4, 4)
    opt.step()
    assert torch.equal(u, u0) and torch.equal(v, v0) and set(opt.state) == {w}
    # the script's schedule: lr = initial_lr * multiplier; 0 freezes everything
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * 0.0
    w0 = w.detach().clone()
    opt.step()
    assert torch.equal(w, w0)


# -----------------------------------------------------------------------------
# a tiny model with every case the sharding has to handle

class Toy(nn.Module):
    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.mats = nn.ModuleList([nn.Linear(dim, dim, bias=False) for _ in range(3)])  # a 3-stack: one pad slot at W=2
        self.up = nn.Linear(dim, 3 * dim, bias=False)    # tall (48, 16): a single-matrix bucket
        self.down = nn.Linear(3 * dim, dim, bias=False)  # wide (16, 48)
        self.unused = nn.Linear(dim, dim, bias=False)    # never gets a grad
        self.norm_w = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(7))         # odd size: padded pieces
        self.gain = nn.Parameter(torch.ones(1))          # one element: rank 1 holds no piece of it
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx)
        for m in self.mats:
            x = x + torch.tanh(m(x))
        x = x + self.down(F.relu(self.up(x)).square())
        x = F.rms_norm(x, (x.size(-1),)) * self.norm_w * self.gain
        logits = self.head(x) + self.bias.sum()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def make_optimizer(self):
        # muon groups of mixed shapes: four buckets, three of a single matrix
        return MuonAdamW([
            {"params": [*self.mats.parameters(), self.up.weight],
             "kind": "muon", "lr": 0.02, "momentum": 0.9, "weight_decay": 0.1},
            {"params": [self.down.weight, self.unused.weight], "kind": "muon", "lr": 0.03},
            {"params": [self.wte.weight, self.head.weight], "kind": "adamw", "lr": 0.01},
            {"params": [self.norm_w, self.bias, self.gain], "kind": "adamw", "lr": 0.05,
             "betas": (0.9, 0.99), "weight_decay": 0.01},
        ])


def _batch(step, rows=8, T=6, vocab=32):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, vocab, (rows, T), generator=g), torch.randint(0, vocab, (rows, T), generator=g)


def _train(model, opt, steps, first=0, halves=(0, 1)):
    """Each step: grads of the mean loss over the given halves of the batch, averaged, then a step."""
    for step in range(first, first + steps):
        idx, tgt = _batch(step)
        grads = None
        for h in halves:
            model.zero_grad(set_to_none=True)
            model(idx[4 * h:4 * h + 4], tgt[4 * h:4 * h + 4]).backward()
            gs = [p.grad for p in model.parameters()]
            grads = gs if grads is None else [None if a is None else a + b for a, b in zip(grads, gs)]
        for p, g in zip(model.parameters(), grads):
            p.grad = None if g is None else g / len(halves)
        opt.step()
        for group in opt.param_groups:  # a schedule, to check the groups' hyperparameters resume too
            group["lr"] = group["initial_lr"] * (1 - 0.1 * (step + 1))


def _state_numel(opt):
    return sum(v.numel() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def test_resume_is_bitwise_identical():
    torch.manual_seed(0)
    model = Toy()
    opt = model.make_optimizer()
    _train(model, opt, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    _train(model, opt, 3, first=3)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = Toy()
    resumed.load_state_dict(ckpt["model"])
    ropt = resumed.make_optimizer()
    ropt.load_state_dict(ckpt["optim"])
    _train(resumed, ropt, 3, first=3)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    # state saved by another shard is refused with a clear message
    sd = opt.state_dict()
    sd["shard"] = {"rank": 1, "world_size": 2}
    with pytest.raises(ValueError, match="rank 1 of 2"):
        ropt.load_state_dict(sd)


def _dist_worker(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)
    # a short timeout: a mismatch of collectives fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = Toy()
        opt = model.make_optimizer()
        _train(model, opt, 3, halves=(rank,))  # each rank backprops its own half; step() averages
        snapshot = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        _train(model, opt, 3, first=3, halves=(rank,))
        # resume this rank's shard into a fresh optimizer: the continuation must be identical
        resumed = Toy()
        resumed.load_state_dict(snapshot[0])
        ropt = resumed.make_optimizer()
        ropt.load_state_dict(snapshot[1])
        _train(resumed, ropt, 3, first=3, halves=(rank,))
        resume_equal = all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
        torch.save({"params": [p.detach() for p in model.parameters()], "state_numel": _state_numel(opt),
                    "resume_equal": resume_equal}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # no rank tears down gloo's connections while a peer still reads from them
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one(tmp_path):
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = Toy()
    opt = model.make_optimizer()
    _train(model, opt, 6, halves=(0, 1))  # one process, the average of both halves' grads
    total = _state_numel(opt)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for res in results:
        assert res["resume_equal"]
        for (name, p), q in zip(model.named_parameters(), res["params"]):
            torch.testing.assert_close(q, p.detach(), atol=1e-6, rtol=0, msg=name)
    # every state element lives on exactly one rank, and each rank holds about half
    numels = [res["state_numel"] for res in results]
    assert sum(numels) == total, (numels, total)
    assert max(numels) < 0.6 * total, (numels, total)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_muon_normuon_and_cautious_decay_by_hand(shape):
    """beta2 > 0: each row (tall) or column (wide) of the orthogonalised update is divided by
    the RMS of its EMA, then the update gets its Frobenius norm back; cautious decay shrinks
    only the entries the update already shrinks."""
    torch.manual_seed(1)
    lr, mom, wd, beta2 = 0.02, 0.9, 0.5, 0.9
    p0 = torch.randn(shape)
    p = nn.Parameter(p0.clone())
    opt = MuonAdamW([{"params": [p], "kind": "muon", "lr": lr, "momentum": mom, "weight_decay": wd,
                      "beta2": beta2, "cautious": True}])
    scale = max(1.0, shape[0] / shape[1]) ** 0.5
    g = torch.randn(shape)
    p.grad = g.clone()
    opt.step()
    o = orthogonalize((1 - mom) * g + mom * (1 - mom) * g)
    dim = -1 if shape[0] >= shape[1] else -2
    v = (1 - beta2) * o.square().mean(dim=dim, keepdim=True)
    n = o / v.sqrt()
    n = n * o.norm() / n.norm()
    expected = p0 - lr * wd * p0 * (n * p0 >= 0) - lr * scale * n
    torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)
    assert opt.state[p]["second_moment"].shape == ((shape[0], 1) if dim == -1 else (1, shape[1]))
    # the rows (columns) of the normalised update have equal RMS after the first step
    rms = n.square().mean(dim=dim).sqrt()
    torch.testing.assert_close(rms, rms.mean().expand_as(rms), atol=1e-5, rtol=1e-4)
    # entries where the update grows |p| were not decayed at all
    grow = (n * p0) < 0
    torch.testing.assert_close(p.detach()[grow], (p0 - lr * scale * n)[grow], atol=1e-6, rtol=0)
