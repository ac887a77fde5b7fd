"""
The recurrence count r used in training: Poisson log-normal, as Huginn samples it
(Geiping et al. 2025), with the rate's mean shifted so that E[r] is the configured mean.

    tau ~ Normal(log(m) - sigma^2 / 2, sigma),   m = mean - 1
    r   = 1 + Poisson(exp(tau)),                 clamped to [1, max_r]

E[exp(tau)] = m, so E[r] = mean before clamping (Huginn's own sampler puts the mean on the
rate, giving E[r] = mean + 1; we shift it so that the configured mean is E[r]). At mean 4, max 16, sigma 0.5:
E[r] ~ 4.00, E[min(r, 4)] ~ 3.1, P(r = 16) ~ 0.15 % (the clamp).

r is drawn from a generator seeded by (seed, step) alone, so every rank and every micro-step
of one optimizer step agree without communicating, and a resumed run draws the same r.
Training FLOPs use the expectations, computed exactly from the pmf (`expected_recurrence`).

`RecurrenceSpec` is the recipe's recurrence, defined once: its defaults are what base_train
trains, the checkpoint stores it, and every later stage reads it from there. `resolve_r` is
the one place that decides the r a model runs at when the caller does not say.
"""

import dataclasses
import math

import numpy as np


def _check(mean, max_r, sigma):
    if not mean >= 1:
        raise ValueError(f"recurrence mean={mean}: expected >= 1")
    if not (isinstance(max_r, int) and max_r >= mean):
        raise ValueError(f"recurrence max_r={max_r}: expected an int >= mean={mean}")
    if not sigma >= 0:
        raise ValueError(f"recurrence sigma={sigma}: expected >= 0")


def sample_recurrence(step, mean=4, max_r=16, sigma=0.5, seed=0):
    """The r for optimizer step `step`: a pure function of (step, mean, max_r, sigma, seed)."""
    _check(mean, max_r, sigma)
    if mean == 1:
        return 1  # rate 0: no extra iterations
    rng = np.random.default_rng([seed, step])  # SeedSequence over both: independent streams per step
    m = mean - 1
    tau = rng.normal(math.log(m) - sigma**2 / 2, sigma)
    r = 1 + int(rng.poisson(math.exp(tau)))
    return min(r, max_r)


def recurrence_pmf(mean=4, max_r=16, sigma=0.5, nodes=96):
    """P(r = i) for i = 1..max_r (index i-1), integrating the Poisson pmf over tau by
    Gauss-Hermite quadrature (error far below 1e-9 at 96 nodes); the clamp puts the
    whole tail on max_r."""
    _check(mean, max_r, sigma)
    pmf = np.zeros(max_r)
    if mean == 1:
        pmf[0] = 1.0
        return pmf
    x, w = np.polynomial.hermite_e.hermegauss(nodes)  # nodes/weights for exp(-x^2/2)
    w = w / math.sqrt(2 * math.pi)                    # now E[f(Z)] = sum(w * f(x))
    lam = np.exp(math.log(mean - 1) - sigma**2 / 2 + sigma * x)  # (nodes,) Poisson rates
    n = np.arange(max_r - 1)                                     # Poisson counts 0..max_r-2
    log_fact = np.array([math.lgamma(k + 1) for k in n])
    log_p = n[:, None] * np.log(lam)[None, :] - lam[None, :] - log_fact[:, None]  # (max_r-1, nodes)
    pmf[:-1] = np.exp(log_p) @ w
    pmf[-1] = max(0.0, 1.0 - pmf[:-1].sum())  # P(1 + Poisson >= max_r), the clamped tail
    return pmf


def expected_recurrence(mean=4, max_r=16, sigma=0.5, bptt_k=None):
    """(E[r], E[min(r, bptt_k)]) under the sampler; bptt_k=None means full backprop, so the
    second value is E[r]. Training FLOPs: forward over E[r], backward over E[min(r, k)]."""
    if bptt_k is not None and not (isinstance(bptt_k, int) and bptt_k >= 1):
        raise ValueError(f"bptt_k={bptt_k}: expected None or an int >= 1")
    pmf = recurrence_pmf(mean, max_r, sigma)
    r = np.arange(1, max_r + 1)
    k = max_r if bptt_k is None else bptt_k
    return float(pmf @ r), float(pmf @ np.minimum(r, k))


def parse_recur_list(spec, arch, default_r):
    """`--recur 1,2,4` -> [1, 2, 4] for the eval scripts; empty -> [default_r]. A standard
    GPT (arch "gpt") runs its blocks once, so only r = 1 exists for it."""
    try:
        recurs = [int(v) for v in spec.split(",") if v.strip()] or [default_r]
    except ValueError:
        raise ValueError(f"--recur {spec!r}: expected comma-separated integers, e.g. 1,2,4") from None
    if any(r < 1 for r in recurs):
        raise ValueError(f"--recur {spec!r}: every r must be >= 1")
    if arch == "gpt" and recurs != [1]:
        raise ValueError(f"--recur {spec!r}: a standard GPT (arch 'gpt') runs its blocks once; only r=1 exists")
    return recurs


def step_recurrence(step, arch, fixed=-1, mean=4, max_r=16, sigma=0.5, seed=0):
    """The r a training step runs: 1 for a standard GPT, `fixed` when it is > 0, else a draw
    of the sampler seeded by the step (so every rank and a resumed run agree)."""
    if arch == "gpt":
        return 1
    return fixed if fixed > 0 else sample_recurrence(step, mean, max_r, sigma, seed)


@dataclasses.dataclass(frozen=True)
class RecurrenceSpec:
    """How a run draws r: Poisson log-normal with E[r] = mean, at most max_r, log-normal sigma;
    fixed > 0 trains every step at that r instead. Backprop runs through the last bptt_k
    iterations (-1 = all). eval_r, the r a model of this run runs at by default, is the fixed
    r or the mean rounded: the iteration count the training centred on."""
    mean: float = 4.0
    max_r: int = 16
    sigma: float = 0.5
    fixed: int = -1
    bptt_k: int = 4

    def __post_init__(self):
        if self.fixed <= 0:
            _check(self.mean, self.max_r, self.sigma)
        if self.bptt_k == 0 or self.bptt_k < -1:
            raise ValueError(f"bptt_k={self.bptt_k}: expected an int >= 1, or -1 for all iterations")

    @property
    def truncation(self):
        """bptt_k as the model's forward takes it: None = backprop through every iteration."""
        return None if self.bptt_k < 0 else self.bptt_k

    def eval_r(self, arch):
        if arch == "gpt":
            return 1
        return self.fixed if self.fixed > 0 else max(1, round(self.mean))

    def draw(self, step, arch, seed):
        """The r optimizer step `step` runs (the same on every rank and after a resume)."""
        return step_recurrence(step, arch, self.fixed, self.mean, self.max_r, self.sigma, seed)

    def expectations(self, arch):
        """(E[r], E[min(r, bptt_k)]): the forward and backward iteration counts per token."""
        if arch == "gpt":
            return 1.0, 1.0
        if self.fixed > 0:
            return float(self.fixed), float(min(self.fixed, self.truncation or self.fixed))
        return expected_recurrence(self.mean, self.max_r, self.sigma, self.truncation)


def recurrence_from_meta(meta):
    """The RecurrenceSpec a checkpoint was trained with. Runs saved before the spec was stored
    carry it in their arguments (recur_mean, recur_max, recur_sigma, recur_fixed, bptt_k); a
    field missing there takes the default."""
    if "recurrence" in meta:
        return RecurrenceSpec(**meta["recurrence"])
    args = meta.get("user_config", {})
    names = dict(mean="recur_mean", max_r="recur_max", sigma="recur_sigma", fixed="recur_fixed", bptt_k="bptt_k")
    return RecurrenceSpec(**{field: args[flag] for field, flag in names.items() if flag in args})


def resolve_r(arch, meta=None, requested=-1):
    """The r a model runs at: `requested` when > 0, else 1 for a standard GPT, else the
    checkpoint's eval r (its stored recurrence spec, or the "eval_r" older runs and exported
    folders record), else the recipe's default."""
    if requested is not None and requested > 0:
        if arch == "gpt" and requested != 1:
            raise ValueError(f"r={requested}: a standard GPT (arch 'gpt') runs its blocks once; only r=1 exists")
        return requested
    if arch == "gpt":
        return 1
    meta = meta or {}
    if "recurrence" not in meta and "eval_r" in meta:
        return int(meta["eval_r"])
    return recurrence_from_meta(meta).eval_r(arch)
