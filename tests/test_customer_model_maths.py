"""The BG/NBD and Gamma-Gamma maths (automations.customer_model) on its own: likelihoods
against the papers' formulas written out plainly, analytic gradients against finite
differences, parameters recovered from customers simulated from known ones, and the
scoring functions' limits (a customer who never came back is alive; the population mean
for a customer without repeat purchases)."""

# ruff: noqa: RUF002
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize

from automations.customer_model import (
    BgNbdParams,
    GammaGammaParams,
    ModelInputError,
    _bgnbd_neg_ll_and_grad,
    _gg_neg_ll_and_grad,
    bgnbd_log_likelihood,
    calibration_by_frequency,
    compress,
    customer_lifetime_value,
    expected_average_spend,
    expected_purchases,
    expected_purchases_new,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    probability_alive,
    probability_of_n_purchases,
)

CDNOW = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)


def plain_bgnbd_likelihood(p: BgNbdParams, x: int, t_x: float, T: float) -> float:
    """Eq. 6 of Fader, Hardie & Lee (2005), term by term with math.gamma and math.beta-like
    ratios, no logs (fine for small x)."""
    r, al, a, b = p.r, p.alpha, p.a, p.b

    def beta(u: float, v: float) -> float:
        return math.gamma(u) * math.gamma(v) / math.gamma(u + v)

    head = math.gamma(r + x) * al**r / math.gamma(r)
    first = beta(a, b + x) / beta(a, b) * head / (al + T) ** (r + x)
    if x == 0:
        return first
    second = beta(a + 1, b + x - 1) / beta(a, b) * head / (al + t_x) ** (r + x)
    return first + second


def test_bgnbd_log_likelihood_matches_the_plain_formula() -> None:
    x = np.array([0, 1, 2, 5, 9])
    t_x = np.array([0.0, 3.5, 10.0, 30.0, 36.0])
    T = np.array([20.0, 38.0, 38.86, 35.0, 37.0])
    got = bgnbd_log_likelihood(CDNOW, x, t_x, T)
    want = [math.log(plain_bgnbd_likelihood(CDNOW, *row)) for row in zip(x, t_x, T, strict=True)]
    assert got == pytest.approx(want, rel=1e-10)


def test_gamma_gamma_log_likelihood_matches_the_plain_formula() -> None:
    p = GammaGammaParams(p=6.25, q=3.74, gamma=15.44)
    x = np.array([1, 2, 7])
    m = np.array([20.0, 35.5, 12.25])
    got = gamma_gamma_log_likelihood(p, x, m)
    for xi, mi, li in zip(x, m, got, strict=True):
        px = p.p * xi
        want = (
            math.lgamma(px + p.q)
            - math.lgamma(px)
            - math.lgamma(p.q)
            + p.q * math.log(p.gamma)
            + (px - 1) * math.log(mi)
            + px * math.log(xi)
            - (px + p.q) * math.log(p.gamma + mi * xi)
        )
        assert li == pytest.approx(want, rel=1e-12)


def test_analytic_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 8, 200).astype(float)
    T = rng.uniform(5, 40, 200)
    t_x = np.where(x > 0, T * rng.uniform(0.1, 1.0, 200), 0.0)
    w = rng.integers(1, 4, 200).astype(float)
    v = np.log([0.3, 5.0, 0.8, 2.5])
    err = optimize.check_grad(
        lambda u: _bgnbd_neg_ll_and_grad(u, x, t_x, T, w)[0],
        lambda u: _bgnbd_neg_ll_and_grad(u, x, t_x, T, w)[1],
        v,
    )
    assert err < 1e-4 * np.linalg.norm(_bgnbd_neg_ll_and_grad(v, x, t_x, T, w)[1]) + 1e-4
    xs = rng.integers(1, 8, 100).astype(float)
    m = rng.gamma(5.0, 8.0, 100)
    g = np.log([5.0, 3.0, 12.0])
    err_gg = optimize.check_grad(
        lambda u: _gg_neg_ll_and_grad(u, xs, m, np.ones(100))[0],
        lambda u: _gg_neg_ll_and_grad(u, xs, m, np.ones(100))[1],
        g,
    )
    assert err_gg < 1e-3


def simulate_bgnbd(p: BgNbdParams, n: int, T: float, seed: int) -> tuple[np.ndarray, ...]:
    """Customers drawn from the model's story: λ ~ Gamma(r, α), p ~ Beta(a, b); purchases as
    a Poisson process; after each purchase the customer leaves with probability p."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(p.r, 1 / p.alpha, n)
    drop = rng.beta(p.a, p.b, n)
    xs, txs = np.zeros(n), np.zeros(n)
    # a loop per customer is fine in a test's simulator (not in the model)
    for i in range(n):
        t, last, k = 0.0, 0.0, 0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > T:
                break
            k, last = k + 1, t
            if rng.random() < drop[i]:
                break
        xs[i], txs[i] = k, last
    return xs, txs, np.full(n, T)


def test_fit_recovers_simulated_parameters() -> None:
    true = BgNbdParams(r=0.5, alpha=6.0, a=0.7, b=2.5)
    x, t_x, T = simulate_bgnbd(true, 20_000, 52.0, seed=11)
    fitted, result = fit_bgnbd(x, t_x, T)
    assert result.converged
    assert fitted.r == pytest.approx(true.r, rel=0.1)
    assert fitted.alpha == pytest.approx(true.alpha, rel=0.15)
    assert fitted.a == pytest.approx(true.a, rel=0.25)
    assert fitted.b == pytest.approx(true.b, rel=0.3)
    # the optimum: no nearby point is better
    best = bgnbd_log_likelihood(fitted, x, t_x, T).sum()
    assert result.log_likelihood == pytest.approx(best)
    nudged = BgNbdParams(fitted.r * 1.01, fitted.alpha, fitted.a, fitted.b)
    assert bgnbd_log_likelihood(nudged, x, t_x, T).sum() < best


def test_gamma_gamma_recovers_simulated_parameters() -> None:
    rng = np.random.default_rng(5)
    p, q, g = 6.0, 4.0, 15.0
    nu = rng.gamma(q, 1 / g, 20_000)
    x = rng.integers(1, 10, 20_000)
    spends = [rng.gamma(p, 1 / nu[i], x[i]).mean() for i in range(20_000)]
    fitted, result = fit_gamma_gamma(x, spends)
    assert result.converged
    assert fitted.p == pytest.approx(p, rel=0.1)
    assert fitted.q == pytest.approx(q, rel=0.1)
    assert fitted.gamma == pytest.approx(g, rel=0.15)


def test_scores_at_their_limits() -> None:
    # x = 0: the model lets a customer drop out only right after a purchase
    assert probability_alive(CDNOW, [0], [0.0], [30.0])[0] == 1.0
    # the longer the silence since the last purchase, the lower P(alive)
    alive = probability_alive(CDNOW, [3, 3, 3], [35.0, 20.0, 5.0], [38.0, 38.0, 38.0])
    assert alive[0] > alive[1] > alive[2] > 0
    assert expected_purchases(CDNOW, 0.0, [3], [35.0], [38.0])[0] == 0.0
    # a customer with T = 0 is one just acquired: E[Y(t)] is the population curve E[X(t)]
    assert expected_purchases(CDNOW, 39.0, [0], [0.0], [0.0])[0] == pytest.approx(
        expected_purchases_new(CDNOW, 39.0)
    )
    # E[X(t)] is the mean of the distribution P(X(t) = n)
    mean = sum(n * probability_of_n_purchases(CDNOW, n, 39.0) for n in range(200))
    assert float(mean) == pytest.approx(float(expected_purchases_new(CDNOW, 39.0)), rel=1e-6)
    total = sum(probability_of_n_purchases(CDNOW, n, 39.0) for n in range(200))
    assert float(total) == pytest.approx(1.0, abs=1e-9)


def test_spend_and_lifetime_value() -> None:
    gg = GammaGammaParams(p=6.25, q=3.74, gamma=15.44)
    spend = expected_average_spend(gg, [0, 1, 50], [0.0, 100.0, 100.0])
    population = 6.25 * 15.44 / (3.74 - 1)
    assert spend[0] == pytest.approx(population)
    # one purchase of 100 pulls the estimate a little; fifty pull it most of the way
    assert population < spend[1] < spend[2] < 100.0
    x, t_x, T = [2, 2], [30.43, 30.43], [38.86, 38.86]
    undiscounted = customer_lifetime_value(
        CDNOW, [40.0, 40.0], x, t_x, T, horizon_days=273, unit_days=7, annual_discount_rate=0
    )
    # without discounting, the value is the expected purchases times the spend
    assert undiscounted[0] == pytest.approx(40 * expected_purchases(CDNOW, 39, x, t_x, T)[0])
    discounted = customer_lifetime_value(
        CDNOW, [40.0, 40.0], x, t_x, T, horizon_days=273, unit_days=7, annual_discount_rate=0.1
    )
    assert 0.9 * undiscounted[0] < discounted[0] < undiscounted[0]


def test_calibration_table_adds_up() -> None:
    x, t_x, T = simulate_bgnbd(CDNOW, 3_000, 39.0, seed=2)
    bins, actual, expected = calibration_by_frequency(CDNOW, x, t_x, T, max_frequency=7)
    assert bins == list(range(8))
    assert sum(actual) == 3_000
    assert sum(expected) == pytest.approx(3_000)
    # a model that generated the data predicts each bin within sampling error
    for a, e in zip(actual, expected, strict=True):
        assert abs(a - e) < 4 * math.sqrt(e) + 5


def test_inputs_no_customer_could_have_are_refused() -> None:
    with pytest.raises(ModelInputError, match="no customers"):
        fit_bgnbd([], [], [])
    with pytest.raises(ModelInputError, match="must not exceed T"):
        fit_bgnbd([1], [10.0], [5.0])
    with pytest.raises(ModelInputError, match="repeat buyers only"):
        fit_gamma_gamma([0, 1], [0.0, 5.0])


def test_compress_folds_identical_rows_like_numpy_unique() -> None:
    rng = np.random.default_rng(9)
    x = rng.integers(0, 4, 500).astype(float)
    T = rng.integers(30, 35, 500) / 7
    t_x = np.where(x > 0, np.floor(T * rng.uniform(0, 1, 500) * 7) / 7, 0.0)
    (ux, ut, uT), w, back = compress(x, t_x, T)
    want, counts = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
    assert np.array_equal(np.column_stack([ux, ut, uT]), want)
    assert np.array_equal(w, counts)
    assert np.array_equal(ux[back], x) and np.array_equal(ut[back], t_x)
    assert np.array_equal(uT[back], T)
