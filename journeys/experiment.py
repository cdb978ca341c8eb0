"""The maths of a journey experiment: each arm's conversion rate with a 95% interval, a
variant's uplift over the holdout with its 95% interval and a two-sided p-value, and whether
the arms are large enough to say anything. Plain functions over counts — no store, no I/O —
shared by the store's stats, the console, the CLI and the charts.

- Rate interval: Wilson's score interval (Wilson 1927; Newcombe 1998a, method 3). It stays
  inside [0, 1] and is honest about small samples: 1 of 1 gives about [0.21, 1], not [1, 1].
- Uplift interval (variant rate - holdout rate): Newcombe's hybrid score interval built from
  the two Wilson intervals (Newcombe 1998b, method 10).
- p-value: the pooled two-proportion z-test, two-sided (normal CDF via `math.erfc`); when
  an expected cell count of the 2x2 table is below 5 the approximation is poor and Fisher's
  exact test (two-sided: the tables no more likely than the one observed) is used instead.
- Small sample: an arm with fewer than `SMALL_SAMPLE` (30) enrollments or fewer than
  `MIN_CONVERSIONS` (5) conversions. A comparison where either arm is small gets its figures
  (the wide interval says how little is known) but no verdict.
- Verdict, for comparisons of two arms that are not small: `better` when the uplift's 95%
  interval lies above 0, `worse` when below, otherwise `no clear difference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Z95 = 1.959963984540054  # the standard normal quantile of 0.975
SMALL_SAMPLE = 30  # fewer enrollments than this in an arm: a small sample, no verdict
MIN_CONVERSIONS = 5  # fewer conversions than this in an arm: likewise
MIN_EXPECTED = 5  # an expected 2x2 cell below this: Fisher's exact test, not the z-test
FISHER_TOLERANCE = 1e-7  # tables this close to the observed one's probability count as equal

Test = Literal["z", "fisher"]
Verdict = Literal["better", "worse", "no clear difference"]


# --------------------------------------------------------------------------- intervals


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of `successes` out of `n` (None for n = 0)."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(
    k1: int, n1: int, k2: int, n2: int, z: float = Z95
) -> tuple[float, float] | None:
    """A 95% interval of p1 - p2 (Newcombe's hybrid score method, from the two Wilson
    intervals); None when either group is empty."""
    a, b = wilson(k1, n1, z), wilson(k2, n2, z)
    if a is None or b is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = a, b
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


# --------------------------------------------------------------------------- tests


def normal_two_sided(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2))


def z_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float] | None:
    """The pooled two-proportion z-test of p1 = p2: (z, two-sided p-value); None when a
    group is empty. When every subject or none converted, z is 0 and p is 1."""
    _check(k1, n1, k2, n2)
    if n1 == 0 or n2 == 0:
        return None
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (k1 / n1 - k2 / n2) / se
    return z, min(1.0, normal_two_sided(z))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """Fisher's exact test of the 2x2 table [[k1, n1 - k1], [k2, n2 - k2]], two-sided: the
    probability, with every margin fixed, of a table no more likely than the one observed.
    None when a group is empty."""
    _check(k1, n1, k2, n2)
    if n1 == 0 or n2 == 0:
        return None
    total, k = n1 + n2, k1 + k2
    log_all = _log_choose(total, k)

    def prob(x: int) -> float:
        return math.exp(_log_choose(n1, x) + _log_choose(n2, k - x) - log_all)

    observed = prob(k1)
    p = sum(
        q
        for x in range(max(0, k - n2), min(k, n1) + 1)
        if (q := prob(x)) <= observed * (1 + FISHER_TOLERANCE)
    )
    return min(1.0, p)


def needs_exact(k1: int, n1: int, k2: int, n2: int) -> bool:
    """Some expected cell of the 2x2 table is below MIN_EXPECTED."""
    total, k = n1 + n2, k1 + k2
    if total == 0:
        return True
    return any(row * col / total < MIN_EXPECTED for row in (n1, n2) for col in (k, total - k))


def p_value(k1: int, n1: int, k2: int, n2: int) -> tuple[float, Test] | None:
    """The two-sided p-value of p1 = p2 and the test that gave it (Fisher's exact test for
    small expected counts, the z-test otherwise); None when a group is empty."""
    if needs_exact(k1, n1, k2, n2):
        exact = fisher_exact(k1, n1, k2, n2)
        return None if exact is None else (exact, "fisher")
    tested = z_test(k1, n1, k2, n2)
    return None if tested is None else (tested[1], "z")


def _check(k1: int, n1: int, k2: int, n2: int) -> None:
    for k, n in ((k1, n1), (k2, n2)):
        if n < 0 or not 0 <= k <= max(n, 0):
            raise ValueError(f"{k} successes out of {n}")


# --------------------------------------------------------------------------- arms


def is_small(conversions: int, enrollments: int) -> bool:
    """Fewer than SMALL_SAMPLE enrollments or fewer than MIN_CONVERSIONS conversions."""
    return enrollments < SMALL_SAMPLE or conversions < MIN_CONVERSIONS


@dataclass(frozen=True)
class Rate:
    """One arm: its rate and 95% Wilson interval (None when it has no enrollments)."""

    conversions: int
    enrollments: int
    rate: float | None
    low: float | None
    high: float | None
    small_sample: bool


def rate(conversions: int, enrollments: int) -> Rate:
    interval = wilson(conversions, enrollments)
    return Rate(
        conversions=conversions,
        enrollments=enrollments,
        rate=conversions / enrollments if enrollments else None,
        low=interval[0] if interval else None,
        high=interval[1] if interval else None,
        small_sample=is_small(conversions, enrollments),
    )


@dataclass(frozen=True)
class Uplift:
    """A variant against the holdout."""

    absolute: float  # variant rate - holdout rate
    relative: float | None = None  # absolute / the holdout's rate (None when that is 0)
    low: float | None = None  # 95% interval of `absolute` (Newcombe)
    high: float | None = None
    p_value: float | None = None
    test: Test | None = None
    small_sample: bool = True  # either arm is small
    verdict: Verdict | None = None  # None for small samples


def uplift(variant: Rate, holdout: Rate) -> Uplift | None:
    """`variant` against `holdout`; None when either has no enrollments."""
    if variant.rate is None or holdout.rate is None:
        return None
    k1, n1 = variant.conversions, variant.enrollments
    k2, n2 = holdout.conversions, holdout.enrollments
    diff = variant.rate - holdout.rate
    interval = difference_interval(k1, n1, k2, n2)
    tested = p_value(k1, n1, k2, n2)
    small = variant.small_sample or holdout.small_sample
    verdict: Verdict | None = None
    if not small and interval is not None:
        low, high = interval
        verdict = "better" if low > 0 else "worse" if high < 0 else "no clear difference"
    return Uplift(
        absolute=diff,
        relative=diff / holdout.rate if holdout.rate else None,
        low=interval[0] if interval else None,
        high=interval[1] if interval else None,
        p_value=tested[0] if tested else None,
        test=tested[1] if tested else None,
        small_sample=small,
        verdict=verdict,
    )
