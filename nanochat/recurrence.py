"""
The recurrence count r used in training: Poisson log-normal, as Huginn samples it
(Geiping et al. 2025), with the rate's mean shifted so that E[r] is the configured mean.

    tau ~ Normal(log(m) - sigma^2 / 2, sigma),   m = mean - 1
    r   = 1 + Poisson(exp(tau)),                 clamped to [1, max_r]

E[exp(tau)] = m, so E[r] = mean before clamping (Huginn's own sampler puts the mean on the
rate, giving E[r] = mean + 1; SPEC.md shifts it). At mean 4, max 16, sigma 0.5:
E[r] ~ 4.00, E[min(r, 4)] ~ 3.1, P(r = 16) ~ 0.15 % (the clamp).

r is drawn from a generator seeded by (seed, step) alone, so every rank and every micro-step
of one optimizer step agree without communicating, and a resumed run draws the same r.
Training FLOPs use the expectations, computed exactly from the pmf (`expected_recurrence`).
"""

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
