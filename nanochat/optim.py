"""
MuonAdamW: Muon for the hidden matrices, AdamW for everything else (embeddings, lm_head,
norm weights, scalars), in one torch.optim.Optimizer for one rank or many.

Muon (https://kellerjordan.github.io/posts/muon/): Nesterov momentum, then replace the
update by (approximately) its polar factor U V^T, where U S V^T is its SVD, so every direction
of the update moves by the same amount. The polar factor comes from a few odd-polynomial
iterations X <- a X + b (X X^T) X + c (X X^T)^2 X with the Polar Express coefficients
(Amsel, Persson, Musco, Gower 2025, https://arxiv.org/abs/2505.16932): each step's polynomial
is the minimax-optimal one for the interval the singular values are known to lie in, so
5 steps map every singular value in [1e-3, 1] of the normalised input into [0.859, 1.141]
(tests/test_optim.py checks this band); smaller ones come out smaller. That is close enough:
Muon needs equalised directions, not an exact U V^T.

Distributed (torch.distributed initialised, world size W > 1): the training script does not
use DDP; step() averages the gradients itself, and each rank keeps the state of only 1/W of
the parameters (ZeRO-1 style):
  - AdamW: each parameter is flattened and cut into W equal pieces (the last one padded);
    grads are reduce-scattered, rank r updates piece r with its own moments, and the
    pieces are all-gathered back into the full parameter.
  - Muon: the matrices of a group are bucketed by shape and stacked; slots of the stack are
    dealt out in contiguous chunks, one per rank (padded with zero matrices). The stacked
    grads are reduce-scattered, so each rank receives the averaged grads of the matrices it
    owns, orthogonalises them as one batch, and the updated matrices are all-gathered.
All collectives are launched asynchronously (reduce-scatters first, then each all-gather
as soon as its update is done) and waited on through their work handles, which is all gloo
offers for reduce-scatter (gloo emulates it with an all-reduce, so it moves twice the bytes
NCCL does, which only matters for CPU tests). Gradients are summed and then divided by W,
since ReduceOp.AVG is not available on gloo in every torch version.
At world size 1 no collective is called at all.

Every rank must see the same set of parameters with grad None (true when all ranks run the
same recurrence count), else the ranks would issue different collectives and hang.

`OptimizerSpec` is the recipe's optimizer, defined once: its defaults are what base_train
trains with, the checkpoint stores it, and SFT and RL start from the stored one.
"""

import dataclasses
import math

import torch
import torch.distributed as dist

NORM_LR = 0.02  # AdamW lr of the RMSNorm weights (BENCHMARKS.md, "norm-weight learning rate")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """Learning rates (as tuned at nanochat's reference batch of 2^19 tokens), Muon's weight
    decay (cautious: only where the update and the weight agree in sign) and NorMuon's
    variance EMA (muon_beta2 > 0). GPT.setup_optimizer builds MuonAdamW from one."""
    matrix_lr: float = 0.02       # Muon: block matrices and inject
    embedding_lr: float = 0.2     # AdamW: wte and value embeddings, x 1/sqrt(dim/768)
    unembedding_lr: float = 0.004  # AdamW: lm_head, x 1/sqrt(dim/768)
    norm_lr: float = NORM_LR      # AdamW: the RMSNorm weights
    scalar_lr: float = 0.5        # AdamW: the value-embedding gates
    weight_decay: float = 0.28    # Muon, at the reference batch and horizon
    muon_beta2: float = 0.9       # NorMuon (0 = plain Muon)
    cautious_weight_decay: bool = True

    LRS = ("matrix_lr", "embedding_lr", "unembedding_lr", "norm_lr", "scalar_lr")

    def scaled(self, factor):
        """Every learning rate times factor (weight decay and the Muon kind unchanged)."""
        return dataclasses.replace(self, **{k: getattr(self, k) * factor for k in self.LRS})


def optimizer_from_meta(meta):
    """The OptimizerSpec a checkpoint was trained with. Runs saved before the spec was stored carry
    it in their arguments; a field missing there takes the default, except the Muon kind, which
    such a run only had if it recorded muon_beta2 (older runs trained plain Muon)."""
    if "optimizer" in meta:
        return OptimizerSpec(**meta["optimizer"])
    args = meta.get("user_config", {})
    fields = {f.name for f in dataclasses.fields(OptimizerSpec)}
    spec = OptimizerSpec(**{k: v for k, v in args.items() if k in fields})
    return spec if not args or "muon_beta2" in args else dataclasses.replace(spec, muon_beta2=0.0)

from nanochat.common import COMPUTE_DTYPE

# torch >= 2.13 renamed the tensor collectives (and warns on the old names); 2.11 has only the old.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

# Polar Express coefficients (a, b, c) for 5 steps, from the paper (safety factor 2e-2, cushion 2).
POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
# Past the table: the classic quintic with p(1) = 1, p'(1) = p''(1) = 0, which only tightens
# singular values already near 1.
_CONVERGENT_QUINTIC = (15 / 8, -10 / 8, 3 / 8)

ADAMW_DEFAULTS = {"betas": (0.8, 0.95), "eps": 1e-10, "weight_decay": 0.0}
MUON_DEFAULTS = {"momentum": 0.95, "ns_steps": 5, "weight_decay": 0.0, "beta2": 0.0, "cautious": False}
_COMMON_KEYS = {"params", "kind", "lr", "initial_lr", "name"}  # name: an optional label for logs


def orthogonalize(G, steps=5):
    """Approximate polar factor U V^T of each matrix in G (..., m, n), same shape and dtype.
    Runs in bf16 on CUDA when the compute dtype is bf16 (the iteration is stable in bf16, and
    faster), in fp32 otherwise, so CPU results are exact enough for tight tests."""
    assert G.ndim >= 2, f"orthogonalize expects matrices, got shape {tuple(G.shape)}"
    dtype = torch.bfloat16 if (G.is_cuda and COMPUTE_DTYPE == torch.bfloat16) else torch.float32
    X = G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the short side: the Gram matrix X X^T is then min(m, n) square
        X = X.mT
    # the spectral norm is at most the Frobenius norm, so this puts every singular value in
    # (0, 1/1.01]; the coefficients assume the top one is at most 1 (1.01 absorbs bf16 rounding)
    X = (X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-7)).to(dtype)
    coeffs = POLAR_EXPRESS_COEFFS[:steps] + [_CONVERGENT_QUINTIC] * max(0, steps - len(POLAR_EXPRESS_COEFFS))
    for a, b, c in coeffs:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """param_groups: a list of dicts {"params": [...], "kind": "muon" | "adamw", "lr": float, ...}.
    adamw groups take betas (0.8, 0.95), eps (1e-10), weight_decay (0.0): torch.optim.AdamW's math.
    muon groups take momentum (0.95, Nesterov), ns_steps (5), weight_decay (0.0), beta2 (0.0)
    and cautious (False); their params must be 2-D. The update is
    lr * max(1, rows/cols)**0.5 * O, O = orthogonalize(nesterov momentum), the aspect-ratio
    factor keeping the per-element RMS of the update of tall matrices in line with square ones.
    beta2 > 0 turns on NorMuon's variance normalisation (Li et al. 2025, arXiv 2510.05491, as
    nanochat master has it): an EMA (beta2) of the mean square of O per row (per column for
    wide matrices) rescales each row of O by its inverse RMS, then O is scaled back to its
    Frobenius norm, so rows that Muon keeps moving hard are damped and the step size stays.
    Weight decay is decoupled and scaled by lr so it follows the schedule: p -= lr * wd * p
    for adamw (plain), and for muon either plain or, with cautious=True
    (Chen et al. 2025, "cautious weight decay"; nanochat), only where the update already
    shrinks |p| (sign(O) == sign(p)).
    Each group gets initial_lr = lr here; the training script sets lr = initial_lr * multiplier
    and may schedule a muon group's momentum by writing group["momentum"]."""

    def __init__(self, param_groups: list[dict]):
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world_size = 0, 1
        super().__init__(param_groups, defaults={})

    def add_param_group(self, group):
        if not isinstance(group, dict):
            raise ValueError(f"param group: expected a dict, got {type(group).__name__}")
        group = dict(group)
        kind = group.get("kind")
        if kind not in ("muon", "adamw"):
            raise ValueError(f"param group kind={kind!r}: expected 'muon' or 'adamw'")
        if "lr" not in group:
            raise ValueError(f"{kind} param group: missing 'lr'")
        defaults = MUON_DEFAULTS if kind == "muon" else ADAMW_DEFAULTS
        unknown = set(group) - _COMMON_KEYS - set(defaults)
        if unknown:
            raise ValueError(f"{kind} param group: unknown keys {sorted(unknown)}; expected some of {sorted(defaults)}")
        params = group["params"]
        group["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
        if kind == "muon":
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"muon param group: a parameter of shape {tuple(p.shape)} is {p.ndim}-D; "
                                     "Muon orthogonalises 2-D matrices, put it in an adamw group")
        for k, v in defaults.items():
            group.setdefault(k, v)
        group.setdefault("initial_lr", group["lr"])
        super().add_param_group(group)

    # -------------------------------------------------------------------------
    # checkpointing: each rank's state_dict holds only its shard, so it resumes only there

    def state_dict(self):
        sd = super().state_dict()
        sd["shard"] = {"rank": self.rank, "world_size": self.world_size}
        return sd

    def load_state_dict(self, state_dict):
        saved = state_dict.get("shard", {"rank": 0, "world_size": 1})
        mine = {"rank": self.rank, "world_size": self.world_size}
        if saved != mine:
            raise ValueError(f"optimizer state was saved by rank {saved['rank']} of {saved['world_size']}, "
                             f"this is rank {mine['rank']} of {mine['world_size']}: sharded optimizer "
                             "state resumes only on the same rank and world size")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "shard"})

    # -------------------------------------------------------------------------
    # the step. Each job is a generator that yields a work handle at each collective it
    # launches; running the jobs phase by phase puts every reduce-scatter in flight first,
    # then updates and launches all-gathers as the grads arrive, then copies the results back.

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "MuonAdamW does not take a closure"
        # the same jobs in the same order on every rank, so the collectives match; Muon first,
        # as its updates take longest and the later reduce-scatters can proceed meanwhile
        jobs = [self._muon_job(group, slots) for group, slots in self._muon_buckets()]
        jobs += [self._adamw_job(group, p) for group in self.param_groups if group["kind"] == "adamw"
                 for p in group["params"] if p.grad is not None]
        works = [next(job, None) for job in jobs]  # every reduce-scatter in flight
        works = [self._resume(job, work) for job, work in zip(jobs, works)]  # update, launch all-gathers
        for job, work in zip(jobs, works):
            self._resume(job, work)  # copy the gathered parameters back

    @staticmethod
    def _resume(job, work):
        if work is not None:
            work.wait()
        return next(job, None)  # None once the job is done (at world size 1: from the start)

    def _adamw_job(self, group, p):
        W, n = self.world_size, p.numel()
        if W == 1:
            self._adamw_update(group, p, p.data, p.grad)
            return
        c = math.ceil(n / W)  # piece size; rank r owns elements [r*c, min((r+1)*c, n))
        grad = p.grad.reshape(-1)
        if c * W != n:
            grad = torch.cat([grad, grad.new_zeros(c * W - n)])
        piece = torch.empty(c, dtype=grad.dtype, device=grad.device)
        yield _reduce_scatter(piece, grad, op=dist.ReduceOp.SUM, async_op=True)
        piece.div_(W)
        flat = p.data.view(-1)
        lo, hi = min(self.rank * c, n), min((self.rank + 1) * c, n)
        if hi > lo:  # a tiny param may leave nothing to the last ranks
            self._adamw_update(group, p, flat[lo:hi], piece[:hi - lo])
            piece[:hi - lo].copy_(flat[lo:hi])  # reuse the grad buffer to send the new values
        # gather straight into the parameter when no padding is needed (the embedding, lm_head)
        full = flat if c * W == n else torch.empty(c * W, dtype=flat.dtype, device=flat.device)
        yield _all_gather(full, piece, async_op=True)
        if full is not flat:
            flat.copy_(full[:n])

    def _adamw_update(self, group, p, x, g):
        """AdamW on x, p itself or a flat view of this rank's piece of it, with averaged grad g.
        The same operations as torch.optim.AdamW, so a test can compare the two closely."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(x)
            state["exp_avg_sq"] = torch.zeros_like(x)
        state["step"] += 1
        t, (beta1, beta2), lr = state["step"], group["betas"], group["lr"]
        x.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(g, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
        x.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** t))

    def _muon_buckets(self):
        """(group, slots) for the matrices of each muon group bucketed by shape: slots is the
        bucket padded with None to c * W entries, and rank r owns slots [r*c, (r+1)*c). The
        matrices are dealt to ranks round-robin, each bucket starting at the rank after the one
        the previous bucket ended on, so that many small buckets (say, one group per shape)
        do not all land on rank 0."""
        W, start, buckets = self.world_size, 0, []
        for group in self.param_groups:
            if group["kind"] != "muon":
                continue
            by_shape = {}
            for p in group["params"]:
                by_shape.setdefault(p.shape, []).append(p)
            for params in by_shape.values():
                c = math.ceil(len(params) / W)
                slots = [None] * (c * W)
                for j, p in enumerate(params):
                    slots[(start * c + j) % (c * W)] = p
                start = ((start * c + len(params) - 1) % (c * W) // c + 1) % W
                buckets.append((group, slots))
        return buckets

    def _muon_job(self, group, slots):
        W = self.world_size
        if all(p is None or p.grad is None for p in slots):
            return  # e.g. matrices of an iteration this step did not run (the same on every rank)
        if W == 1:
            self._muon_update(group, [(p, p.grad) for p in slots if p.grad is not None])
            return
        c = len(slots) // W
        zeros = torch.zeros_like(next(p for p in slots if p is not None))
        # pads, and matrices that got no grad this step (on every rank), travel as zeros
        grads = torch.stack([p.grad if p is not None and p.grad is not None else zeros for p in slots])
        mine = torch.empty_like(grads[:c])
        yield _reduce_scatter(mine, grads, op=dist.ReduceOp.SUM, async_op=True)
        mine.div_(W)
        owned = slots[self.rank * c:(self.rank + 1) * c]
        self._muon_update(group, [(p, g) for p, g in zip(owned, mine) if p is not None and p.grad is not None])
        full = torch.empty_like(grads)
        yield _all_gather(full, torch.stack([p.data if p is not None else zeros for p in owned]), async_op=True)
        for p, new in zip(slots, full):
            if p is not None:
                p.copy_(new)

    def _muon_update(self, group, owned):
        """Muon on a list of (param, averaged grad) pairs of one shape, orthogonalised as a batch."""
        if not owned:
            return
        momentum, lr, wd, beta2 = group["momentum"], group["lr"], group["weight_decay"], group["beta2"]
        updates = []
        for p, g in owned:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(g)
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1 - momentum)  # buf = momentum * buf + (1 - momentum) * g
            updates.append(g.lerp(buf, momentum))  # Nesterov: look one momentum step ahead
        O = orthogonalize(torch.stack(updates), group["ns_steps"])
        rows, cols = owned[0][0].shape
        if beta2 > 0:
            O = torch.stack([self._normalize_variance(p, o, beta2) for (p, _), o in zip(owned, O)])
        step_size = lr * max(1.0, rows / cols) ** 0.5
        for (p, _), o in zip(owned, O):
            if group["cautious"]:
                p.sub_(p * (o * p >= 0), alpha=lr * wd)
            else:
                p.mul_(1 - lr * wd)
            p.add_(o.to(p.dtype), alpha=-step_size)

    def _normalize_variance(self, p, o, beta2):
        """NorMuon: divide each row (tall or square) or column (wide) of o by the RMS of its
        EMA, then restore o's Frobenius norm."""
        dim = -1 if o.size(-2) >= o.size(-1) else -2
        state = self.state[p]
        if "second_moment" not in state:
            state["second_moment"] = torch.zeros_like(o.mean(dim=dim, keepdim=True))
        v = state["second_moment"]
        v.lerp_(o.float().square().mean(dim=dim, keepdim=True), 1 - beta2)
        scaled = o.float() * v.clamp_min(1e-10).rsqrt()
        return (scaled * (o.float().norm() / scaled.norm().clamp_min(1e-12))).to(o.dtype)
