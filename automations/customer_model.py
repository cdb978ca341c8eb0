# The formulas keep the papers' symbols (α, γ, −) so they can be checked against them.
# ruff: noqa: RUF002, RUF003
"""Customer-base analysis: the BG/NBD purchase model and the Gamma-Gamma spend model.

Pure maths over numpy arrays (one entry per customer, never a Python loop per customer):

- BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way: an alternative to
  the Pareto/NBD model", Marketing Science 24(2)). While alive, a customer buys as a Poisson
  process with rate λ ~ Gamma(r, α); after each purchase they drop out with probability
  p ~ Beta(a, b). A customer is summarised by `x` (repeat transactions: purchase days after
  the first), `t_x` (time of the last purchase, from the first) and `T` (time from the first
  purchase to the end of the calibration period), in one time unit (days or weeks).
- Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value curves for customer
  base analysis", JMR 42(4); Fader & Hardie 2013, "The Gamma-Gamma model of monetary value").
  The spend of a transaction is Gamma(p, ν) with ν ~ Gamma(q, γ) across customers; it is
  fitted on the repeat buyers' average spend per repeat transaction (`m_x`, first purchase
  left out) and assumed independent of the purchase process.

Likelihoods are computed in log space (gammaln, betaln, logaddexp) and fitted with
scipy.optimize.minimize (L-BFGS-B) on the logarithms of the parameters, which keeps them
positive, with analytic gradients. Customers with the same (x, t_x, T) are folded into one
weighted row first: with dates as the clock most customers share their summary with others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

Array = npt.NDArray[np.float64]

# Days in a unit of time the model may be fitted in.
UNIT_DAYS: dict[str, float] = {"days": 1.0, "weeks": 7.0}


# L-BFGS-B on the mean log-likelihood per customer (so the tolerances mean the same for
# 2,000 customers as for 2,000,000): far tighter than the papers' three decimals need.
OPTIONS = {"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9}
# A line search that cannot improve any more ends "ABNORMAL" at machine precision; with a
# gradient this small that is the optimum, not a failure.
GRADIENT_AT_OPTIMUM = 1e-6


def _converged(res: optimize.OptimizeResult) -> bool:
    if res.success:
        return True
    jac = np.asarray(getattr(res, "jac", [np.inf]), dtype=np.float64)
    return str(res.message).startswith("ABNORMAL") and bool(
        np.max(np.abs(jac)) < GRADIENT_AT_OPTIMUM
    )


class ModelInputError(ValueError):
    """The arrays cannot be fitted (empty, negative, inconsistent); the message says which."""


@dataclass(frozen=True)
class BgNbdParams:
    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    gamma: float


@dataclass(frozen=True)
class FitResult:
    """What an optimiser found: the parameters, the log-likelihood at them (summed over the
    customers), whether scipy reported convergence, and its message and iteration count."""

    params: tuple[float, ...]
    log_likelihood: float
    converged: bool
    message: str
    iterations: int


def _as_arrays(*arrays: npt.ArrayLike) -> list[Array]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    shape = out[0].shape
    for a in out:
        if a.shape != shape:
            raise ModelInputError(f"arrays differ in shape: {shape} and {a.shape}")
    return out


def check_rft(x: Array, t_x: Array, T: Array) -> None:
    """Refuse arrays no customer could have: negative counts, t_x outside [0, T], x > 0 with
    t_x = 0 is allowed only when T is 0 too (everything on one day)."""
    if x.size == 0:
        raise ModelInputError("no customers to fit: no purchases up to the calibration date")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t_x)) and np.all(np.isfinite(T))):
        raise ModelInputError("frequency, recency and T must be finite numbers")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(T < 0):
        raise ModelInputError("frequency, recency and T must not be negative")
    if np.any(t_x > T + 1e-9):
        raise ModelInputError("recency t_x must not exceed T (the last purchase after the end)")


def compress(*columns: Array) -> tuple[list[Array], Array, npt.NDArray[np.intp]]:
    """Fold identical rows into one: the unique rows (as columns, sorted), their counts
    (weights) and, for each original row, the index of its unique row. (A lexsort: several
    times faster than np.unique over rows.)"""
    n = len(columns[0])
    if n == 0:
        return [c[:0] for c in columns], np.zeros(0), np.zeros(0, dtype=np.intp)
    order = np.lexsort(columns[::-1])
    ordered = [c[order] for c in columns]
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for c in ordered:
        new[1:] |= c[1:] != c[:-1]
    group = np.cumsum(new) - 1
    inverse = np.empty(n, dtype=np.intp)
    inverse[order] = group
    counts = np.bincount(group).astype(np.float64)
    return [c[new] for c in ordered], counts, inverse


# --- BG/NBD -------------------------------------------------------------------------------


def _bgnbd_terms(
    r: float, alpha: float, a: float, b: float, x: Array, t_x: Array, T: Array
) -> tuple[Array, Array, Array, npt.NDArray[np.bool_]]:
    """The three log terms of the individual likelihood (eq. 6 of the paper, in logs):
    L = exp(A1) * (exp(A2) + [x > 0] exp(A3)). Returns A1, A2, A3 (−inf where x = 0), and
    the mask x > 0."""
    buyer = x > 0
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    log_beta_ab = special.betaln(a, b)
    a2 = special.betaln(a, b + x) - log_beta_ab - (r + x) * np.log(alpha + T)
    # B(a + 1, b + x − 1) is only defined for x > 0; x1 keeps x = 0 rows finite
    # before they are masked out.
    x1 = np.where(buyer, x, 1.0)
    a3 = np.where(
        buyer,
        special.betaln(a + 1.0, b + x1 - 1.0) - log_beta_ab - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    return np.asarray(a1), np.asarray(a2), np.asarray(a3), buyer


def bgnbd_log_likelihood(
    params: BgNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> Array:
    """Each customer's log-likelihood under the BG/NBD model."""
    xa, ta, Ta = _as_arrays(x, t_x, T)
    a1, a2, a3, _ = _bgnbd_terms(params.r, params.alpha, params.a, params.b, xa, ta, Ta)
    out: Array = a1 + np.logaddexp(a2, a3)
    return out


def _by_x(x: Array) -> tuple[Array, npt.NDArray[np.intp]]:
    """The distinct repeat counts and each row's index into them: the special functions
    (gammaln, betaln, digamma) depend on x alone, and x takes few values, so they are
    computed once per distinct x rather than once per customer."""
    xs, xi = np.unique(x, return_inverse=True)
    return xs, xi.reshape(-1)


def _bgnbd_neg_ll_and_grad(
    log_params: Array,
    x: Array,
    t_x: Array,
    T: Array,
    w: Array,
    by_x: tuple[Array, npt.NDArray[np.intp]] | None = None,
) -> tuple[float, Array]:
    """The weighted negative log-likelihood and its gradient in the log-parameters."""
    r, alpha, a, b = np.exp(log_params)
    xs, xi = by_x if by_x is not None else _by_x(x)
    psi, gammaln, betaln = special.digamma, special.gammaln, special.betaln
    buyer = x > 0
    # per distinct x
    xs1 = np.maximum(xs, 1.0)
    lb_ab = betaln(a, b)
    head = (gammaln(r + xs) - gammaln(r))[xi]
    beta2 = (betaln(a, b + xs) - lb_ab)[xi]
    beta3 = (betaln(a + 1.0, b + xs1 - 1.0) - lb_ab)[xi]
    psi_rx, psi_abx = psi(r + xs)[xi], psi(a + b + xs)[xi]
    psi_bx, psi_bx1 = psi(b + xs)[xi], psi(b + xs1 - 1.0)[xi]
    # per customer
    rx = r + x
    log_aT, log_at = np.log(alpha + T), np.log(alpha + t_x)
    a2 = beta2 - rx * log_aT
    a3 = np.where(buyer, beta3 - rx * log_at, -np.inf)
    ll = head + r * np.log(alpha) + np.logaddexp(a2, a3)
    # the share of each of the two terms in the sum exp(A2) + exp(A3)
    p3 = np.where(buyer, special.expit(a3 - a2), 0.0)
    p2 = 1.0 - p3
    psi_ab = psi(a + b)
    d_r = psi_rx - psi(r) + np.log(alpha) - p2 * log_aT - p3 * log_at
    d_alpha = r / alpha - rx * (p2 / (alpha + T) + p3 / (alpha + t_x))
    d_a = psi_ab - psi_abx + p3 * (psi(a + 1.0) - psi(a))
    d_b = psi_ab - psi(b) - psi_abx + p2 * psi_bx + p3 * psi_bx1
    grad = np.array(
        [
            r * np.dot(w, d_r),
            alpha * np.dot(w, d_alpha),
            a * np.dot(w, d_a),
            b * np.dot(w, d_b),
        ]
    )
    return -float(np.dot(w, ll)), -grad


def fit_bgnbd(
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    *,
    start: BgNbdParams | None = None,
) -> tuple[BgNbdParams, FitResult]:
    """Maximum-likelihood BG/NBD parameters for customers with summaries (x, t_x, T)."""
    xa, ta, Ta = _as_arrays(x, t_x, T)
    check_rft(xa, ta, Ta)
    (ux, ut, uT), w, _ = compress(xa, ta, Ta)
    s = start or BgNbdParams(r=1.0, alpha=max(float(np.mean(Ta)), 1e-3), a=1.0, b=1.0)
    x0 = np.log([s.r, s.alpha, s.a, s.b])
    # Scale by the customer count so the optimiser's tolerances mean the same for 2,000
    # customers as for 2,000,000.
    n = float(w.sum())

    by_x = _by_x(ux)

    def fun(v: Array) -> tuple[float, Array]:
        f, g = _bgnbd_neg_ll_and_grad(v, ux, ut, uT, w, by_x)
        return f / n, g / n

    res = optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(-20.0, 20.0)] * 4,
        options=OPTIONS,
    )
    r, alpha, a, b = (float(v) for v in np.exp(res.x))
    params = BgNbdParams(r=r, alpha=alpha, a=a, b=b)
    ll = float(np.dot(w, bgnbd_log_likelihood(params, ux, ut, uT)))
    return params, FitResult(
        params=(r, alpha, a, b),
        log_likelihood=ll,
        converged=_converged(res) and bool(np.isfinite(ll)),
        message=str(res.message),
        iterations=int(res.nit),
    )


def _log_alive_odds(params: BgNbdParams, x: Array, t_x: Array, T: Array) -> Array:
    """log of a/(b+x−1) · ((α+T)/(α+t_x))^(r+x) for buyers, −inf for x = 0 (who cannot
    have dropped out: the model lets a customer leave only right after a purchase)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    buyer = x > 0
    x1 = np.where(buyer, x, 1.0)
    lo = np.log(a) - np.log(b + x1 - 1.0) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    out: Array = np.where(buyer, lo, -np.inf)
    return out


def probability_alive(
    params: BgNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> Array:
    """P(alive | x, t_x, T) (eq. 11 of the BG/NBD paper)."""
    xa, ta, Ta = _as_arrays(x, t_x, T)
    out: Array = special.expit(-_log_alive_odds(params, xa, ta, Ta))
    return out


def expected_purchases(
    params: BgNbdParams,
    t: float,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
) -> Array:
    """E[Y(t) | x, t_x, T]: purchases expected in the next `t` units of time from a customer
    with this history (eq. 10 of the BG/NBD paper)."""
    xa, ta, Ta = _as_arrays(x, t_x, T)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if t <= 0:
        return np.zeros_like(xa)
    z = t / (alpha + Ta + t)
    hyp = special.hyp2f1(r + xa, b + xa, a + b + xa - 1.0, z)
    head = (a + b + xa - 1.0) / (a - 1.0)
    body = 1.0 - np.exp((r + xa) * (np.log(alpha + Ta) - np.log(alpha + Ta + t))) * hyp
    out: Array = head * body * special.expit(-_log_alive_odds(params, xa, ta, Ta))
    return out


def expected_purchases_new(params: BgNbdParams, t: npt.ArrayLike) -> Array:
    """E[X(t)]: purchases a customer just acquired makes in `t` units (eq. 9): the
    population curve the calibration plot's 'expected' column is built from."""
    ta = np.asarray(t, dtype=np.float64)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    z = ta / (alpha + ta)
    out: Array = (
        (a + b - 1.0)
        / (a - 1.0)
        * (1.0 - (alpha / (alpha + ta)) ** r * special.hyp2f1(r, b, a + b - 1.0, z))
    )
    return out


def probability_of_n_purchases(params: BgNbdParams, n: int, t: npt.ArrayLike) -> Array:
    """P(X(t) = n) for a customer just acquired (eq. 8 of the BG/NBD paper), in logs."""
    shape = np.shape(t)
    ta = np.asarray(t, dtype=np.float64).reshape(-1)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    lb = special.betaln(a, b)
    log_stay = np.log(alpha / (alpha + ta))  # log (α/(α+t))
    log_ratio = np.log(ta / (alpha + ta)) if n > 0 else np.zeros_like(ta)
    first = np.exp(
        special.betaln(a, b + n)
        - lb
        + special.gammaln(r + n)
        - special.gammaln(r)
        - special.gammaln(n + 1.0)
        + r * log_stay
        + n * log_ratio
    )
    if n == 0:
        return first.reshape(shape)
    # δ_{n>0} · B(a+1, b+n−1)/B(a,b) · [1 − (α/(α+t))^r Σ_{j<n} Γ(r+j)/(Γ(r) j!) (t/(α+t))^j]
    j = np.arange(n, dtype=np.float64)[:, None]
    terms = np.exp(
        special.gammaln(r + j)
        - special.gammaln(r)
        - special.gammaln(j + 1.0)
        + r * log_stay[None, :]
        + j * log_ratio[None, :]
    )
    tail = 1.0 - terms.sum(axis=0)
    out: Array = first + np.exp(special.betaln(a + 1.0, b + n - 1.0) - lb) * tail
    return out.reshape(shape)


# --- Gamma-Gamma -----------------------------------------------------------------------------


def gamma_gamma_log_likelihood(
    params: GammaGammaParams, x: npt.ArrayLike, m_x: npt.ArrayLike
) -> Array:
    """Each repeat buyer's log-likelihood of their average spend m_x over x transactions
    (Fader & Hardie 2013, eq. 3, written for the mean rather than the individual spends)."""
    xa, ma = _as_arrays(x, m_x)
    p, q, g = params.p, params.q, params.gamma
    px = p * xa
    out: Array = (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * np.log(g)
        + (px - 1.0) * np.log(ma)
        + px * np.log(xa)
        - (px + q) * np.log(g + ma * xa)
    )
    return out


def _gg_neg_ll_and_grad(
    log_params: Array,
    x: Array,
    m: Array,
    w: Array,
    by_x: tuple[Array, npt.NDArray[np.intp]] | None = None,
) -> tuple[float, Array]:
    """The weighted negative log-likelihood and its gradient in the log-parameters."""
    p, q, g = np.exp(log_params)
    xs, xi = by_x if by_x is not None else _by_x(x)
    psi, gammaln = special.digamma, special.gammaln
    pxs = p * xs
    # per distinct x
    lg = (gammaln(pxs + q) - gammaln(pxs))[xi]
    psi_pxq, psi_px = psi(pxs + q)[xi], psi(pxs)[xi]
    # per customer
    px = p * x
    mx = m * x
    log_m, log_x = np.log(m), np.log(x)
    log_gmx = np.log(g + mx)
    ll = lg - gammaln(q) + q * np.log(g) + (px - 1.0) * log_m + px * log_x - (px + q) * log_gmx
    d_p = x * (psi_pxq - psi_px + log_m + log_x - log_gmx)
    d_q = psi_pxq - psi(q) + np.log(g) - log_gmx
    d_g = q / g - (px + q) / (g + mx)
    grad = np.array([p * np.dot(w, d_p), q * np.dot(w, d_q), g * np.dot(w, d_g)])
    return -float(np.dot(w, ll)), -grad


def fit_gamma_gamma(
    x: npt.ArrayLike, m_x: npt.ArrayLike, *, start: GammaGammaParams | None = None
) -> tuple[GammaGammaParams, FitResult]:
    """Maximum-likelihood Gamma-Gamma parameters from repeat buyers (x > 0, m_x > 0)."""
    xa, ma = _as_arrays(x, m_x)
    if xa.size == 0:
        raise ModelInputError("no repeat buyers to fit the spend model on")
    if np.any(xa <= 0) or np.any(ma <= 0) or not np.all(np.isfinite(ma)):
        raise ModelInputError("the spend model takes repeat buyers only: x > 0 and m_x > 0")
    # spends are continuous: hardly two customers share (x, m_x), so no folding
    ux, um, w = xa, ma, np.ones_like(xa)
    s = start or GammaGammaParams(p=1.0, q=1.0, gamma=float(np.mean(ma)))
    x0 = np.log([s.p, s.q, s.gamma])
    n = float(w.sum())

    by_x = _by_x(ux)

    def fun(v: Array) -> tuple[float, Array]:
        f, g = _gg_neg_ll_and_grad(v, ux, um, w, by_x)
        return f / n, g / n

    res = optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(-20.0, 20.0)] * 3,
        options=OPTIONS,
    )
    p, q, g = (float(v) for v in np.exp(res.x))
    params = GammaGammaParams(p=p, q=q, gamma=g)
    ll = float(np.dot(w, gamma_gamma_log_likelihood(params, ux, um)))
    return params, FitResult(
        params=(p, q, g),
        log_likelihood=ll,
        converged=_converged(res) and bool(np.isfinite(ll)),
        message=str(res.message),
        iterations=int(res.nit),
    )


def expected_average_spend(params: GammaGammaParams, x: npt.ArrayLike, m_x: npt.ArrayLike) -> Array:
    """E[M | x, m_x]: a customer's expected spend per transaction, a weighted mean of the
    population mean p·γ/(q−1) and their own average (Fader, Hardie & Lee 2005, eq. 5).
    Customers without repeat purchases (x = 0) get the population mean."""
    xa, ma = _as_arrays(x, m_x)
    p, q, g = params.p, params.q, params.gamma
    mean = p * g / (q - 1.0) if q > 1.0 else np.nan
    buyer = xa > 0
    own = np.where(buyer, ma, 0.0)
    out: Array = np.where(buyer, p * (g + own * xa) / (p * xa + q - 1.0), mean)
    return out


def customer_lifetime_value(
    params: BgNbdParams,
    spend: npt.ArrayLike,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    *,
    horizon_days: float,
    unit_days: float,
    annual_discount_rate: float,
    steps: int = 12,
) -> Array:
    """Discounted value of the purchases expected over `horizon_days`: the horizon is cut
    into `steps` equal periods; each period's expected purchases (the growth of E[Y(t)])
    times the expected spend is discounted to now at the annual rate, compounded yearly
    (1 + d)^(−years)."""
    xa, ta, Ta, sa = _as_arrays(x, t_x, T, spend)
    total = np.zeros_like(xa)
    previous = np.zeros_like(xa)
    for k in range(1, steps + 1):  # a loop over periods, each over all customers at once
        days = horizon_days * k / steps
        cumulative = expected_purchases(params, days / unit_days, xa, ta, Ta)
        factor = (1.0 + annual_discount_rate) ** (-days / 365.0)
        total += (cumulative - previous) * factor
        previous = cumulative
    out: Array = total * sa
    return out


# --- calibration ---------------------------------------------------------------------------


def calibration_by_frequency(
    params: BgNbdParams,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    *,
    max_frequency: int = 7,
) -> tuple[list[int], list[int], list[float]]:
    """The calibration table the paper's Figure 2 plots: for each repeat-transaction count
    0..max_frequency (the last bin holds 'max_frequency or more'), how many customers made
    it in the calibration period (actual) and how many the fitted model expects given each
    customer's own T (the sum over customers of P(X(T) = n))."""
    xa, _, Ta = _as_arrays(x, t_x, T)
    bins = list(range(max_frequency + 1))
    actual = [int(np.sum(xa == n)) for n in bins[:-1]]
    actual.append(int(np.sum(xa >= max_frequency)))
    (uT,), w, _ = compress(Ta)
    expected: list[float] = []
    for n in bins[:-1]:
        expected.append(float(np.dot(w, probability_of_n_purchases(params, n, uT))))
    expected.append(float(max(xa.size - sum(expected), 0.0)))
    return bins, actual, expected
