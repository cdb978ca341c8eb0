"""Who may do what: the one permission table of crmflow.

Every API route and console page declares one action of `PERMISSIONS`; the table says which
roles may take it. Least privilege: each role gets only the data its work needs; `viewer`
reads everything a marketer or project manager can read, with e-mail and phone masked (it
lacks `customers.pii`).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    admin = "admin"
    marketer = "marketer"
    project_manager = "project_manager"
    operator = "operator"
    ingest = "ingest"
    viewer = "viewer"


ADM, MKT, PM, OPS, ING, VIEW = (
    Role.admin,
    Role.marketer,
    Role.project_manager,
    Role.operator,
    Role.ingest,
    Role.viewer,
)

# action -> (roles allowed, what it lets them do)
PERMISSIONS: dict[str, tuple[frozenset[Role], str]] = {
    "health.read": (
        frozenset(Role),
        "read the health of the database, Temporal and the workers polling the task queue",
    ),
    "metrics.read": (
        frozenset({ADM, OPS}),
        "scrape the Prometheus metrics of an API process (events, rules, sends, runs)",
    ),
    "customers.read": (
        frozenset({ADM, MKT, OPS, VIEW}),
        "list, search and view customers (360 view)",
    ),
    "customers.pii": (
        frozenset({ADM, MKT, OPS}),
        "see e-mail and phone unmasked (without it they are masked)",
    ),
    "customers.write": (frozenset({ADM, MKT, OPS, ING}), "create or update customer profiles"),
    "customers.tag": (frozenset({ADM, MKT}), "add or remove a tag by hand"),
    "customers.export": (
        frozenset({ADM, OPS}),
        "export everything stored about one customer (audited)",
    ),
    "customers.erase": (
        frozenset({ADM}),
        "erase a customer's personal data, keeping a pseudonymous tombstone (audited)",
    ),
    "points.read": (
        frozenset({ADM, MKT, OPS, VIEW}),
        "read a member's points: lots, totals, ledger",
    ),
    "points.redeem": (
        frozenset({ADM, OPS, ING}),
        "redeem rewards and reverse redemptions (ingest: a till)",
    ),
    "points.adjust": (frozenset({ADM, OPS}), "credit or debit points by hand, with a reason"),
    "rewards.read": (frozenset({ADM, MKT, OPS, ING, VIEW}), "read the rewards catalogue"),
    "rewards.write": (frozenset({ADM, MKT}), "validate and apply the rewards catalogue"),
    "events.write": (frozenset({ADM, MKT, OPS, ING}), "post customer events"),
    "events.backlog": (
        frozenset({ADM, MKT, OPS, ING}),
        "see how many stored events still wait for the rules",
    ),
    "segments.preview": (
        frozenset({ADM, MKT, VIEW}),
        "count and sample the customers a condition matches",
    ),
    "rules.read": (frozenset({ADM, MKT, VIEW}), "read rules versions"),
    "rules.write": (frozenset({ADM, MKT}), "validate, test, deploy and activate rules"),
    "journeys.read": (
        frozenset({ADM, MKT, VIEW}),
        "read journeys, their versions, stats and enrollments",
    ),
    "journeys.write": (
        frozenset({ADM, MKT}),
        "validate, deploy, pause, resume, archive and simulate journeys",
    ),
    "projects.read": (frozenset({ADM, PM, VIEW}), "read projects, their status and Gantt"),
    "projects.write": (
        frozenset({ADM, PM}),
        "create projects and change them (check, done, sign off, risks, rebaseline, close)",
    ),
    "schedules.read": (frozenset({ADM, OPS, VIEW}), "read schedules and their runs"),
    "schedules.write": (frozenset({ADM, OPS}), "trigger, backfill, pause and resume schedules"),
    "tasks.read": (frozenset({ADM, MKT, OPS, VIEW}), "read follow-up tasks"),
    "tasks.write": (frozenset({ADM, MKT, OPS}), "close follow-up tasks"),
    "outbox.read": (frozenset({ADM, OPS}), "read the message outbox"),
    "keys.manage": (frozenset({ADM}), "create, list and revoke API keys"),
    "audit.read": (frozenset({ADM}), "read the audit log of changes"),
}


def roles_for(action: str) -> frozenset[Role]:
    """The roles allowed `action`; `KeyError` for an action not in the table."""
    return PERMISSIONS[action][0]


def allowed(role: Role | str, action: str) -> bool:
    return Role(role) in roles_for(action)


def permission_table_markdown() -> str:
    """The table as Markdown, as printed in the README (`crmflow keys roles`)."""
    roles = list(Role)
    lines = [
        "| action | " + " | ".join(r.value for r in roles) + " | what it allows |",
        "|---|" + "---|" * len(roles) + "---|",
    ]
    for action, (who, what) in PERMISSIONS.items():
        marks = " | ".join("✓" if r in who else "" for r in roles)
        lines.append(f"| `{action}` | {marks} | {what} |")
    return "\n".join(lines)
