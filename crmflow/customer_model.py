"""Fit and score the customer-base model inside a caller's transaction: shared by the service
(`crmflow.services.customer_model`, for the faces) and the scheduled `model_fit`
automation's activity, so both do exactly the same thing.

`fit_in` reads every customer's purchase summary up to the calibration day (set-based SQL,
`store.customer_model`), fits BG/NBD and Gamma-Gamma (`automations.customer_model`) and
stores the version; `score_in` applies a stored version to every customer's whole history
as of a moment and replaces the scores. Numpy over arrays throughout; customers sharing a
summary (x, t_x, T) are scored once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection

from automations import customer_model as cm
from crmflow.state_cache import new_state_version
from rules.models import DEFAULT_CLV_DISCOUNT_RATE, Program
from store import customer_model as store
from store.db import utcnow

MIN_SPEND_CUSTOMERS = 10  # fewer repeat buyers with a spend: no spend model
CALIBRATION_BINS = 7  # 0..6 repeat purchases and "7 or more", as the paper's Figure 2
HORIZONS = (30, 90, 365)  # days of expected purchases stored per customer
CLV_DAYS = 365


class NothingToFit(LookupError):
    """No purchase events up to the calibration day."""


@dataclass(frozen=True)
class ProgramTerms:
    """What the model takes from the programme (defaults without one deployed)."""

    purchase_event: str = "purchase"
    spend_property: str = "amount"
    discount_rate: float = DEFAULT_CLV_DISCOUNT_RATE

    @classmethod
    def of(cls, program: Program | None) -> ProgramTerms:
        if program is None:
            return cls()
        return cls(program.purchase_event, program.spend_property, program.clv_discount_rate)


def summaries(conn: Connection, terms: ProgramTerms, end_day: date) -> store.PurchaseSummaries:
    return store.purchase_summaries(
        conn,
        end_day=end_day,
        purchase_event=terms.purchase_event,
        spend_property=terms.spend_property,
    )


def fit_in(
    conn: Connection,
    terms: ProgramTerms,
    *,
    end_day: date,
    unit: str,
    by: str | None,
    data: store.PurchaseSummaries | None = None,
) -> int:
    """Fit both models on the purchases up to `end_day` and store the version (status
    `ok`, or `failed` when the purchase model did not converge); returns its id."""
    started = time.perf_counter()
    if data is None:
        data = summaries(conn, terms, end_day)
    if not data.customer_ids:
        raise NothingToFit(
            f"no {terms.purchase_event!r} events up to {end_day}: "
            "there is nothing to fit the model on"
        )
    unit_days = cm.UNIT_DAYS[unit]
    x, t_x, T = data.frequency, data.recency(unit_days), data.age(unit_days)
    values: dict[str, Any] = {
        "fitted_at": utcnow(),
        "fitted_by": by,
        "calibration_end": datetime(end_day.year, end_day.month, end_day.day, tzinfo=UTC),
        "unit": unit,
        "customers": len(data.customer_ids),
        "repeat_buyers": int(np.sum(x > 0)),
        "transactions": int(np.sum(data.days)),
        "converged": False,
        "spend_converged": False,
        "spend_customers": 0,
    }
    detail: dict[str, Any] = {}
    messages: list[str] = []
    params, fit = cm.fit_bgnbd(x, t_x, T)
    values.update(
        r=params.r,
        alpha=params.alpha,
        a=params.a,
        b=params.b,
        log_likelihood=fit.log_likelihood,
        converged=fit.converged,
    )
    detail["purchase_fit"] = {"iterations": fit.iterations, "message": fit.message}
    if not fit.converged:
        messages.append(f"the purchase model did not converge: {fit.message}")
    else:
        bins, actual, expected = cm.calibration_by_frequency(
            params, x, t_x, T, max_frequency=CALIBRATION_BINS
        )
        detail["calibration"] = [
            {
                "repeat_purchases": f"{n}+" if n == bins[-1] else str(n),
                "actual": a,
                "expected": round(e, 3),
            }
            for n, a, e in zip(bins, actual, expected, strict=True)
        ]
    m_x = data.repeat_spend
    spenders = (x > 0) & (m_x > 0)
    count = int(spenders.sum())
    if count < MIN_SPEND_CUSTOMERS:
        messages.append(
            f"no spend model: {count} repeat buyers with a spend, {MIN_SPEND_CUSTOMERS} needed"
        )
    else:
        gg, gfit = cm.fit_gamma_gamma(x[spenders], m_x[spenders])
        values.update(
            p=gg.p,
            q=gg.q,
            gamma=gg.gamma,
            spend_log_likelihood=gfit.log_likelihood,
            spend_converged=gfit.converged,
            spend_customers=count,
        )
        detail["spend_fit"] = {"iterations": gfit.iterations, "message": gfit.message}
        if not gfit.converged:
            messages.append(f"the spend model did not converge: {gfit.message}")
        elif gg.q <= 1:
            messages.append("the spend model has q <= 1: no expected spend for new buyers")
    values["status"] = "ok" if fit.converged else "failed"
    values["message"] = "; ".join(messages) or None
    detail["seconds"] = round(time.perf_counter() - started, 3)
    values["detail"] = detail
    return store.insert_model(conn, values)


def score_in(
    conn: Connection,
    row: dict[str, Any],
    terms: ProgramTerms,
    *,
    as_of: datetime,
    data: store.PurchaseSummaries | None = None,
) -> int:
    """Score every customer with a purchase up to `as_of`'s day under the model `row`,
    replacing all scores; returns how many were written."""
    if data is None or data.end_day != as_of.astimezone(UTC).date():
        data = summaries(conn, terms, as_of.astimezone(UTC).date())
    columns = score_arrays(row, data, terms.discount_rate)
    return store.write_scores(
        conn,
        model_id=row["id"],
        as_of=as_of,
        customer_ids=data.customer_ids,
        columns=columns,
        state_version=new_state_version(),
    )


def _spend_params(row: dict[str, Any]) -> cm.GammaGammaParams | None:
    if row["p"] is None or not row["spend_converged"]:
        return None
    return cm.GammaGammaParams(p=row["p"], q=row["q"], gamma=row["gamma"])


def score_arrays(
    row: dict[str, Any], data: store.PurchaseSummaries, discount: float
) -> dict[str, np.ndarray]:
    """Every customer's scores under the model `row` (arrays aligned with the customer ids;
    NaN where a score cannot be given)."""
    unit_days = cm.UNIT_DAYS[row["unit"]]
    params = cm.BgNbdParams(r=row["r"], alpha=row["alpha"], a=row["a"], b=row["b"])
    x, t_x, T = data.frequency, data.recency(unit_days), data.age(unit_days)
    m_x = data.repeat_spend
    n = len(data.customer_ids)
    out: dict[str, np.ndarray] = {
        "frequency": (data.days - 1).astype(np.int64),
        "recency_days": (data.last_day - data.first_day).astype(np.float64),
        "age_days": T * unit_days,
        "avg_spend": np.where(x > 0, m_x, np.nan),
    }
    if n == 0:
        for name in store.FACT_COLUMNS:
            out[name] = np.zeros(0)
        return out
    (ux, ut, uT), _, back = cm.compress(x, t_x, T)
    out["p_alive"] = cm.probability_alive(params, ux, ut, uT)[back]
    for days in HORIZONS:
        out[f"expected_purchases_{days}d"] = cm.expected_purchases(
            params, days / unit_days, ux, ut, uT
        )[back]
    spend_params = _spend_params(row)
    if spend_params is None:
        out["expected_avg_spend"] = np.full(n, np.nan)
        out["clv_365d"] = np.full(n, np.nan)
        return out
    spend = cm.expected_average_spend(spend_params, x, m_x)
    out["expected_avg_spend"] = spend
    # the value per unit of spend depends on (x, t_x, T) only: computed once per summary
    per_spend = cm.customer_lifetime_value(
        params,
        np.ones_like(ux),
        ux,
        ut,
        uT,
        horizon_days=CLV_DAYS,
        unit_days=unit_days,
        annual_discount_rate=discount,
    )
    out["clv_365d"] = per_spend[back] * spend
    return out


def scheduled_fit(
    conn: Connection, program: Program | None, *, as_of: datetime, unit: str, score: bool
) -> dict[str, float]:
    """The `model_fit` automation's work in the run's transaction: fit on every purchase
    up to `as_of`'s day (UTC) and score every customer with the new model when it is good.
    Returns the run's counts."""
    terms = ProgramTerms.of(program)
    end_day = as_of.astimezone(UTC).date()
    data = summaries(conn, terms, end_day)
    if not data.customer_ids:
        return {"customers_fitted": 0}
    model_id = fit_in(conn, terms, end_day=end_day, unit=unit, by="automation", data=data)
    row = store.model(conn, model_id)
    assert row is not None
    counts: dict[str, float] = {"customers_fitted": len(data.customer_ids)}
    if row["status"] != "ok":
        counts["fits_failed"] = 1
        return counts
    if score:
        counts["customers_scored"] = score_in(conn, row, terms, as_of=as_of, data=data)
    return counts
