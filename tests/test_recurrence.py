"""The recurrence-count sampler: seeded by step, right moments, exact expectations."""

import numpy as np
import pytest

from nanochat.recurrence import expected_recurrence, recurrence_pmf, sample_recurrence

N_DRAWS = 100_000


@pytest.fixture(scope="module")
def draws():
    return np.array([sample_recurrence(step) for step in range(N_DRAWS)])


def test_draws_in_range_and_mean(draws):
    assert draws.min() >= 1 and draws.max() <= 16
    assert abs(draws.mean() / 4 - 1) < 0.02, draws.mean()
    assert draws.min() == 1 and draws.max() == 16  # both ends of the clamp are reached


def test_same_seed_and_step_same_r():
    for step in (0, 1, 17, 123_456):
        assert sample_recurrence(step, seed=3) == sample_recurrence(step, seed=3)
    steps = [sample_recurrence(s) for s in range(50)]
    assert len(set(steps)) > 3, steps                         # varies with the step
    seeds = [sample_recurrence(5, seed=s) for s in range(50)]
    assert len(set(seeds)) > 3, seeds                         # and with the seed


def test_expected_matches_monte_carlo(draws):
    er, emin = expected_recurrence(4, 16, 0.5, bptt_k=4)
    mc_r, mc_min = draws.mean(), np.minimum(draws, 4).mean()
    assert abs(er / mc_r - 1) < 0.01, (er, mc_r)
    assert abs(emin / mc_min - 1) < 0.01, (emin, mc_min)
    pmf = recurrence_pmf(4, 16, 0.5)
    assert abs(pmf.sum() - 1) < 1e-12
    hist = np.bincount(draws, minlength=17)[1:] / len(draws)
    assert np.abs(hist - pmf).max() < 0.005, np.abs(hist - pmf).max()


def test_numbers_from_spec():
    er, emin = expected_recurrence(4, 16, 0.5, bptt_k=4)
    p16 = recurrence_pmf(4, 16, 0.5)[-1]
    print(f"E[r]={er:.4f} E[min(r,4)]={emin:.4f} P(r=16)={100 * p16:.3f}%")
    assert abs(er - 4) < 0.01                # the clamp takes a little off the mean
    assert abs(emin - 3.1) < 0.05
    assert 0.0012 < p16 < 0.0018             # the design: about 0.15 %
    assert expected_recurrence(4, 16, 0.5, bptt_k=None) == (er, er)


def test_edge_cases_and_bad_input():
    assert sample_recurrence(7, mean=1) == 1
    assert expected_recurrence(1, 16, 0.5, bptt_k=4) == (1.0, 1.0)
    assert all(1 <= sample_recurrence(s, mean=8, max_r=8) <= 8 for s in range(200))
    for kwargs in (dict(mean=0.5), dict(max_r=2), dict(sigma=-1.0)):
        with pytest.raises(ValueError):
            sample_recurrence(0, **kwargs)
    with pytest.raises(ValueError):
        expected_recurrence(4, 16, 0.5, bptt_k=0)


def test_parse_recur_list():
    from nanochat.recurrence import parse_recur_list
    assert parse_recur_list("1,2, 4", "looped", 4) == [1, 2, 4]
    assert parse_recur_list("", "looped", 4) == [4]
    assert parse_recur_list("", "gpt", 1) == [1]
    for spec, arch, match in (("1,x", "looped", "comma-separated"), ("0,2", "looped", ">= 1"), ("1,2", "gpt", "only r=1")):
        with pytest.raises(ValueError, match=match):
            parse_recur_list(spec, arch, 4)


def test_step_recurrence():
    from nanochat.recurrence import step_recurrence
    assert step_recurrence(7, "gpt", fixed=-1) == 1
    assert step_recurrence(7, "looped", fixed=3) == 3
    assert step_recurrence(7, "looped", seed=5) == sample_recurrence(7, seed=5)
