"""What the KPI snapshot workflow and its activity pass each other: the activity's name, its
request and the programme figures it returns (also what `crmflow stack` prints)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

# Activity names (workflows call activities by name, never by importing them).
KPI_SNAPSHOT = "kpi_snapshot"


class KpiRequest(BaseModel):
    as_of: datetime
    window_days: int = Field(30, ge=1, le=3650)


class KpiSnapshot(BaseModel):
    """Programme figures at one moment, computed set-based in the store."""

    as_of: datetime
    window_days: int
    customers: int
    by_stage: dict[str, int]
    consent: dict[str, int] = Field(description="customers who consented, per channel")
    events: int
    events_by_type: dict[str, int]
    active_customers: int = Field(description="customers with a customer-made event in the window")
    buyers: int = Field(description="customers with a purchase in the window")
    repeat_buyers: int = Field(description="customers with two or more purchases in the window")
    revenue: float = Field(description="purchase amounts less refund amounts in the window")
    tiers: dict[str, int] = Field(default_factory=dict, description="customers per tier")
    points_issued: float = Field(0.0, description="points earned in the window")
    points_outstanding: float = Field(0.0, description="points left in all lots")
    tags: dict[str, int] = Field(default_factory=dict, description="customers per tag (top 10)")
    open_tasks: int = Field(0, description="open follow-up tasks from retention actions")
    journey_commands_pending: int = Field(
        0, description="journey commands in the outbox, not yet handed to Temporal"
    )

    @property
    def repurchase_rate(self) -> float:
        return round(self.repeat_buyers / self.buyers, 4) if self.buyers else 0.0
