"""The customer-base model: fit it from the store, show it, score every customer.

`fit_model` reads each customer's purchases up to the calibration day (one transaction per
purchase day, `store.customer_model.purchase_summaries`), fits the BG/NBD purchase model and
the Gamma-Gamma spend model (`automations.customer_model`), and stores the parameters with
the data they came from as a model version; the newest successful fit is the active one.
`score_customers` applies the active model to every customer's whole history as of now and
writes P(alive), expected purchases over 30/90/365 days, the expected spend per purchase and
the discounted value of the next 365 days — the facts rules, segments and journeys read.

Both are set-based: a few SQL statements and numpy over arrays, whatever the number of
customers. Customers sharing a summary (x, t_x, T) are scored once.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, date, datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from automations import customer_model as cm
from crmflow.processing import active_pack
from crmflow.services.errors import Invalid, NotFound, Refused
from rules.models import DEFAULT_CLV_DISCOUNT_RATE
from store import customer_model as store
from store.db import utcnow

Unit = Literal["days", "weeks"]
MIN_SPEND_CUSTOMERS = 10  # fewer repeat buyers with a spend: no spend model
CALIBRATION_BINS = 7  # 0..6 repeat purchases and "7 or more", as the paper's Figure 2
HORIZONS = (30, 90, 365)  # days of expected purchases stored per customer
CLV_DAYS = 365


class ModelFitInput(BaseModel):
    until: date | None = Field(
        None, description="the last day of the calibration period (UTC); default today"
    )
    unit: Unit = Field("weeks", description="the time unit the parameters are fitted in")
    score: bool = Field(True, description="score every customer with the new model")
    by: str | None = Field(None, description="who asked for the fit")


class PurchaseModel(BaseModel):
    """BG/NBD: purchase rate ~ Gamma(r, alpha); drop-out after a purchase ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    converged: bool


class SpendModel(BaseModel):
    """Gamma-Gamma: spend per purchase ~ Gamma(p, v), v ~ Gamma(q, gamma) across customers."""

    p: float
    q: float
    gamma: float
    log_likelihood: float
    converged: bool
    customers: int = Field(description="repeat buyers it was fitted on")
    mean_spend: float | None = Field(
        description="the population's expected spend per purchase, p·gamma/(q-1) (none when q ≤ 1)"
    )


class CalibrationRow(BaseModel):
    repeat_purchases: str = Field(description="0, 1, … and the last bin '7+'")
    actual: int = Field(description="customers with that many repeat purchases")
    expected: float = Field(description="customers the fitted model expects")


class ModelVersion(BaseModel):
    id: int
    status: Literal["ok", "failed"]
    active: bool
    fitted_at: datetime
    fitted_by: str | None
    calibration_end: date
    unit: Unit
    customers: int
    repeat_buyers: int
    transactions: int = Field(description="purchase days, first purchases included")
    purchase_model: PurchaseModel | None
    spend_model: SpendModel | None
    message: str | None
    calibration: list[CalibrationRow]
    seconds: float | None
    scored_at: datetime | None
    scored_customers: int | None


class ScoreOutcome(BaseModel):
    model_id: int
    as_of: datetime
    customers: int
    discount_rate: float
    seconds: float


class FitOutcome(BaseModel):
    model: ModelVersion
    scoring: ScoreOutcome | None


class ModelReport(BaseModel):
    active: ModelVersion | None
    recent: list[ModelVersion] = Field(description="the latest fits, newest first")


class CustomerModelScores(BaseModel):
    """One customer's scores, as of the latest scoring."""

    model_id: int
    as_of: datetime
    frequency: int = Field(description="repeat purchase days")
    recency_days: float
    age_days: float = Field(description="days from the first purchase to as_of")
    p_alive: float
    expected_purchases_30d: float
    expected_purchases_90d: float
    expected_purchases_365d: float
    expected_avg_spend: float | None
    clv_365d: float | None


def _program_settings(engine: Engine) -> tuple[str, str, float]:
    with engine.connect() as conn:
        pack = active_pack(conn)
    if pack is None:
        return "purchase", "amount", DEFAULT_CLV_DISCOUNT_RATE
    p = pack.program
    return p.purchase_event, p.spend_property, p.clv_discount_rate


def _version(row: dict[str, Any], active_id: int | None) -> ModelVersion:
    detail = row.get("detail") or {}
    purchase = None
    if row["r"] is not None:
        purchase = PurchaseModel(
            r=row["r"],
            alpha=row["alpha"],
            a=row["a"],
            b=row["b"],
            log_likelihood=row["log_likelihood"],
            converged=row["converged"],
        )
    spend = None
    if row["p"] is not None:
        q = row["q"]
        spend = SpendModel(
            p=row["p"],
            q=q,
            gamma=row["gamma"],
            log_likelihood=row["spend_log_likelihood"],
            converged=row["spend_converged"],
            customers=row["spend_customers"],
            mean_spend=row["p"] * row["gamma"] / (q - 1) if q > 1 else None,
        )
    return ModelVersion(
        id=row["id"],
        status=row["status"],
        active=row["id"] == active_id,
        fitted_at=row["fitted_at"],
        fitted_by=row["fitted_by"],
        calibration_end=row["calibration_end"].date(),
        unit=row["unit"],
        customers=row["customers"],
        repeat_buyers=row["repeat_buyers"],
        transactions=row["transactions"],
        purchase_model=purchase,
        spend_model=spend,
        message=row["message"],
        calibration=[CalibrationRow(**c) for c in detail.get("calibration", [])],
        seconds=detail.get("seconds"),
        scored_at=row["scored_at"],
        scored_customers=row["scored_customers"],
    )


def fit_model(engine: Engine, inp: ModelFitInput) -> FitOutcome:
    """Fit both models on the purchases up to `inp.until`, store the version, and (unless
    told not to) score every customer with it when it is good."""
    started = time.perf_counter()
    today = utcnow().date()
    end_day = inp.until or today
    if end_day > today:
        raise Invalid(f"the calibration period cannot end in the future ({end_day})", "until")
    purchase_event, spend_property, _ = _program_settings(engine)
    with engine.connect() as conn:
        data = store.purchase_summaries(
            conn, end_day=end_day, purchase_event=purchase_event, spend_property=spend_property
        )
    if not data.customer_ids:
        raise Refused(
            f"no {purchase_event!r} events up to {end_day}: there is nothing to fit the model on"
        )
    unit_days = cm.UNIT_DAYS[inp.unit]
    x, t_x, T = data.frequency, data.recency(unit_days), data.age(unit_days)
    values: dict[str, Any] = {
        "fitted_at": utcnow(),
        "fitted_by": inp.by,
        "calibration_end": datetime(end_day.year, end_day.month, end_day.day, tzinfo=UTC),
        "unit": inp.unit,
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
    if int(spenders.sum()) < MIN_SPEND_CUSTOMERS:
        messages.append(
            f"no spend model: {int(spenders.sum())} repeat buyers with a spend, "
            f"{MIN_SPEND_CUSTOMERS} needed"
        )
    else:
        gg, gfit = cm.fit_gamma_gamma(x[spenders], m_x[spenders])
        values.update(
            p=gg.p,
            q=gg.q,
            gamma=gg.gamma,
            spend_log_likelihood=gfit.log_likelihood,
            spend_converged=gfit.converged,
            spend_customers=int(spenders.sum()),
        )
        detail["spend_fit"] = {"iterations": gfit.iterations, "message": gfit.message}
        if not gfit.converged:
            messages.append(f"the spend model did not converge: {gfit.message}")
    values["status"] = "ok" if fit.converged else "failed"
    values["message"] = "; ".join(messages) or None
    detail["seconds"] = round(time.perf_counter() - started, 3)
    values["detail"] = detail
    with engine.begin() as conn:
        model_id = store.insert_model(conn, values)
    scoring = None
    if inp.score and values["status"] == "ok":
        scoring = score_customers(
            engine, model_id=model_id, reuse=data if end_day == today else None
        )
    with engine.connect() as conn:
        row = store.model(conn, model_id)
        active = store.active_model(conn)
    assert row is not None
    return FitOutcome(model=_version(row, active["id"] if active else None), scoring=scoring)


def _spend_params(row: dict[str, Any]) -> cm.GammaGammaParams | None:
    if row["p"] is None or not row["spend_converged"]:
        return None
    return cm.GammaGammaParams(p=row["p"], q=row["q"], gamma=row["gamma"])


def score_customers(
    engine: Engine,
    *,
    model_id: int | None = None,
    reuse: store.PurchaseSummaries | None = None,
) -> ScoreOutcome:
    """Score every customer with a purchase, as of today, with the model `model_id` (the
    active one by default), replacing the previous scores."""
    started = time.perf_counter()
    with engine.connect() as conn:
        row = store.model(conn, model_id) if model_id is not None else store.active_model(conn)
    if row is None:
        if model_id is not None:
            raise NotFound(f"no customer model {model_id}")
        raise Refused("no customer model has been fitted yet: run `crmflow model fit` first")
    if row["status"] != "ok":
        raise Refused(f"customer model {row['id']} failed to fit and cannot score")
    purchase_event, spend_property, discount = _program_settings(engine)
    as_of = utcnow()
    data = reuse
    if data is None or data.end_day != as_of.date():
        with engine.connect() as conn:
            data = store.purchase_summaries(
                conn,
                end_day=as_of.date(),
                purchase_event=purchase_event,
                spend_property=spend_property,
            )
    columns = score_arrays(row, data, discount)
    with engine.begin() as conn:
        written = store.write_scores(
            conn,
            model_id=row["id"],
            as_of=as_of,
            customer_ids=data.customer_ids,
            columns=columns,
            state_version=secrets.randbits(62) + 1,
        )
    return ScoreOutcome(
        model_id=row["id"],
        as_of=as_of,
        customers=written,
        discount_rate=discount,
        seconds=round(time.perf_counter() - started, 3),
    )


def score_arrays(
    row: dict[str, Any], data: store.PurchaseSummaries, discount: float
) -> dict[str, np.ndarray]:
    """Every customer's scores under the model `row`: numpy over the distinct summaries."""
    unit_days = cm.UNIT_DAYS[row["unit"]]
    params = cm.BgNbdParams(r=row["r"], alpha=row["alpha"], a=row["a"], b=row["b"])
    x, t_x, T, m_x = data.frequency, data.recency(unit_days), data.age(unit_days), data.repeat_spend
    n = len(data.customer_ids)
    if n == 0:
        return {name: np.zeros(0) for name in store.FACT_COLUMNS}
    (ux, ut, uT), _, back = cm.compress(x, t_x, T)
    out: dict[str, np.ndarray] = {
        "frequency": (data.days - 1).astype(np.int64),
        "recency_days": (data.last_day - data.first_day).astype(np.float64),
        "age_days": T * unit_days,
        "avg_spend": np.where(x > 0, m_x, np.nan),
        "p_alive": cm.probability_alive(params, ux, ut, uT)[back],
    }
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


def show_model(engine: Engine, *, recent: int = 5) -> ModelReport:
    """The active model and the latest fits."""
    with engine.connect() as conn:
        active = store.active_model(conn)
        rows = store.recent_models(conn, recent)
    active_id = active["id"] if active else None
    return ModelReport(
        active=_version(active, active_id) if active else None,
        recent=[_version(r, active_id) for r in rows],
    )


def customer_scores(engine: Engine, customer_id: str) -> CustomerModelScores | None:
    """A customer's latest scores, or None when they have none (no purchase, or no model
    scored yet)."""
    with engine.connect() as conn:
        found = store.scores_of(conn, customer_id)
    if found is None:
        return None
    return CustomerModelScores(**{k: found[k] for k in CustomerModelScores.model_fields})
