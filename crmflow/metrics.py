"""The Prometheus metrics of crmflow: every metric is defined here, once, with the helpers
that move it.

Why here: `crmflow.metrics` sits with the runtime modules (ingest, processing, dispatch).
The layering contracts (`[tool.importlinter]` in pyproject.toml) forbid only the faces
(`crmflow.cli`, `crmflow.api`) to the layers below, so the ingest path, the event
processor, activities, the worker and the API can all import it; it imports nothing of
crmflow itself, only `prometheus_client`. Workflows never call it: they are replayed, and a
replay would count twice. Workflow-level figures (automation runs and their durations)
are taken by the worker's interceptor (`crmflow.worker_metrics`) outside the replay.

Where each figure is exposed: a worker serves its process's metrics on
`CRMFLOW_METRICS_PORT` (`crmflow.worker_metrics.serve_metrics`); the API serves its
process's at `GET /api/v1/metrics` to a key with `metrics.read`. With several API server
processes (`crmflow api --workers N`), set `PROMETHEUS_MULTIPROC_DIR` to an empty folder
before they start, and each scrape sums all of them (prometheus_client's multiprocess
mode; see docs/operations-metrics.md).

Labels are bounded: an outcome outside its documented set is counted as `other`, so a typo
cannot create a new series per call. Nothing personal is ever a label (no customer ids,
no addresses): journeys, activities, channels and automations only.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

# -- events and rules (crmflow.ingest, crmflow.event_processor, crmflow.processing) -------

INGEST_OUTCOMES = frozenset({"stored", "duplicate", "conflict", "rejected"})
EVENTS_INGESTED = Counter(
    "crmflow_events_ingested",
    "Customer events received by a file import or the HTTP API, by how they arrived "
    "(via: file, api) and what became of them (outcome: stored, duplicate, conflict, rejected)",
    ["via", "outcome"],
)
EVENTS_PROCESSED = Counter(
    "crmflow_events_processed",
    "Stored events run through the active rules version (committed)",
)
RULES_FIRED = Counter(
    "crmflow_rules_fired",
    "Rules that fired on processed events (committed)",
)

# -- journeys (activities/journey_activities.py, activities/channels) ----------------------

ENROLLMENT_OUTCOMES = frozenset({"completed", "converted", "exited", "failed", "cancelled"})
ENROLLMENTS_STARTED = Counter(
    "crmflow_enrollments_started",
    "Journey enrollments started, by journey",
    ["journey"],
)
ENROLLMENTS_FINISHED = Counter(
    "crmflow_enrollments_finished",
    "Journey enrollments finished, by journey and outcome "
    "(completed, converted, exited, failed, cancelled)",
    ["journey", "outcome"],
)
SEND_OUTCOMES = frozenset({"sent", "suppressed", "failed", "retried"})
SENDS = Counter(
    "crmflow_sends",
    "Messages handed to a channel, by channel and outcome (sent; suppressed: consent, quiet "
    "hours, caps; failed: refused for good; retried: a transient failure, tried again)",
    ["channel", "outcome"],
)
STAFF_NOTICE_OUTCOMES = frozenset({"sent", "failed", "retried"})
STAFF_NOTICES = Counter(
    "crmflow_staff_notices",
    "Staff notices (reminders, escalations, lead SLA, digests) by channel "
    "(outbox, email, wecom, dingtalk, slack) and outcome (sent, failed, retried)",
    ["channel", "outcome"],
)

# -- automations and activities (crmflow.worker_metrics, a worker interceptor) ------------

AUTOMATION_RUNS = Counter(
    "crmflow_automation_runs",
    "Scheduled automation runs that ended, by automation and status (completed, failed)",
    ["automation", "status"],
)
AUTOMATION_RUN_SECONDS = Histogram(
    "crmflow_automation_run_seconds",
    "Wall time of an automation run, from its workflow's start to its end",
    ["automation"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
ACTIVITY_OUTCOMES = frozenset({"completed", "failed", "cancelled"})
ACTIVITIES = Counter(
    "crmflow_activities",
    "Activity attempts that ended on this worker, by activity and outcome "
    "(completed, failed, cancelled)",
    ["activity", "outcome"],
)
ACTIVITY_FAILURES = Counter(
    "crmflow_activity_failures",
    "Activity attempts that failed, by activity and whether Temporal retries them "
    "(retryable) or not (non_retryable)",
    ["activity", "kind"],
)
ACTIVITY_SECONDS = Histogram(
    "crmflow_activity_seconds",
    "Duration of an activity attempt on this worker, by activity",
    ["activity"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


def record_ingested(
    via: str, *, stored: int, duplicates: int, conflicts: int, rejected: int
) -> None:
    """Events a file import (`via="file"`) or an API request (`"api"`) stored, found
    duplicate or conflicting, or rejected."""
    via = via if via in ("file", "api") else "other"
    for outcome, n in (
        ("stored", stored),
        ("duplicate", duplicates),
        ("conflict", conflicts),
        ("rejected", rejected),
    ):
        if n:
            EVENTS_INGESTED.labels(via, outcome).inc(n)


def record_processed(events: int, rules_fired: int) -> None:
    """Events run through the rules, and the rules they fired, after the commit."""
    if events:
        EVENTS_PROCESSED.inc(events)
    if rules_fired:
        RULES_FIRED.inc(rules_fired)


def record_enrollment_started(journey: str) -> None:
    """One enrollment of `journey` started (count it once per enrollment, not per replay)."""
    ENROLLMENTS_STARTED.labels(journey).inc()


def record_enrollment_finished(journey: str, outcome: str) -> None:
    """One enrollment of `journey` ended: completed, converted, exited, failed, cancelled."""
    ENROLLMENTS_FINISHED.labels(journey, _bounded(outcome, ENROLLMENT_OUTCOMES)).inc()


def record_send(channel: str, outcome: str) -> None:
    """One message on `channel`: sent, suppressed, failed (for good) or retried."""
    SENDS.labels(channel, _bounded(outcome, SEND_OUTCOMES)).inc()


def record_staff_notice(channel: str, outcome: str) -> None:
    """One staff notice on `channel` (outbox, email, wecom, dingtalk, slack)."""
    STAFF_NOTICES.labels(channel, _bounded(outcome, STAFF_NOTICE_OUTCOMES)).inc()


def record_automation_run(automation: str, status: str, seconds: float) -> None:
    AUTOMATION_RUNS.labels(automation, status).inc()
    AUTOMATION_RUN_SECONDS.labels(automation).observe(max(0.0, seconds))


def record_activity(activity: str, outcome: str, seconds: float, kind: str | None = None) -> None:
    """One activity attempt ended; `kind` (retryable, non_retryable) for a failure."""
    ACTIVITIES.labels(activity, _bounded(outcome, ACTIVITY_OUTCOMES)).inc()
    ACTIVITY_SECONDS.labels(activity).observe(seconds)
    if outcome == "failed":
        ACTIVITY_FAILURES.labels(activity, kind or "retryable").inc()


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess folder, when one is set for this process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """This process's metrics (or, in multiprocess mode, every process's summed) in the
    Prometheus text format, and its content type."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
