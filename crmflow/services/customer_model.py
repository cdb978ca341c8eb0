"""The customer-base model: fit it from the store, show it, score every customer.

`fit_model` reads each customer's purchases up to the calibration day (one transaction per
purchase day, `store.customer_model.purchase_summaries`), fits the BG/NBD purchase model and
the Gamma-Gamma spend model (`automations.customer_model`), and stores the parameters with
the data they came from as a model version; the newest successful fit is the active one.
`score_customers` applies the active model to every customer's whole history as of now and
writes P(alive), expected purchases over 30/90/365 days, the expected spend per purchase and
the discounted value of the next 365 days — the facts rules, segments and journeys read.

The work itself is `crmflow.customer_model`, shared with the scheduled `model_fit`
automation: a few SQL statements and numpy over arrays, whatever the number of customers.
Here each call is one transaction (a fit and its scoring commit together) with pydantic
results.
"""

from __future__ import annotations

import time
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine

from crmflow import customer_model as run
from crmflow.processing import active_pack
from crmflow.services.errors import Invalid, NotFound, Refused
from store import customer_model as store
from store.db import utcnow

Unit = Literal["days", "weeks"]


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


def _terms(conn: Connection) -> run.ProgramTerms:
    pack = active_pack(conn)
    return run.ProgramTerms.of(pack.program if pack else None)


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
    told not to) score every customer with it when it is good, in one transaction."""
    today = utcnow().date()
    end_day = inp.until or today
    if end_day > today:
        raise Invalid(f"the calibration period cannot end in the future ({end_day})", "until")
    scoring = None
    with engine.begin() as conn:
        terms = _terms(conn)
        data = run.summaries(conn, terms, end_day)
        try:
            model_id = run.fit_in(conn, terms, end_day=end_day, unit=inp.unit, by=inp.by, data=data)
        except run.NothingToFit as exc:
            raise Refused(str(exc)) from exc
        row = store.model(conn, model_id)
        assert row is not None
        if inp.score and row["status"] == "ok":
            started = time.perf_counter()
            as_of = utcnow()
            written = run.score_in(conn, row, terms, as_of=as_of, data=data)
            scoring = ScoreOutcome(
                model_id=model_id,
                as_of=as_of,
                customers=written,
                discount_rate=terms.discount_rate,
                seconds=round(time.perf_counter() - started, 3),
            )
            row = store.model(conn, model_id)
            assert row is not None
        active = store.active_model(conn)
    return FitOutcome(model=_version(row, active["id"] if active else None), scoring=scoring)


def score_customers(engine: Engine, *, model_id: int | None = None) -> ScoreOutcome:
    """Score every customer with a purchase, as of now, with the model `model_id` (the
    active one by default), replacing the previous scores."""
    started = time.perf_counter()
    with engine.begin() as conn:
        row = store.model(conn, model_id) if model_id is not None else store.active_model(conn)
        if row is None:
            if model_id is not None:
                raise NotFound(f"no customer model {model_id}")
            raise Refused("no customer model has been fitted yet: run `crmflow model fit` first")
        if row["status"] != "ok":
            raise Refused(f"customer model {row['id']} failed to fit and cannot score")
        terms = _terms(conn)
        as_of = utcnow()
        written = run.score_in(conn, row, terms, as_of=as_of)
    return ScoreOutcome(
        model_id=row["id"],
        as_of=as_of,
        customers=written,
        discount_rate=terms.discount_rate,
        seconds=round(time.perf_counter() - started, 3),
    )


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
