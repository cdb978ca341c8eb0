"""Reminders before a due date and escalations after it, pure: which notices are due at
`now` and not yet sent, and when the next one falls due.

For every open required checklist item, milestone not done and gate not passed (due dates
from the current plan), the template's reminder policy gives send times on the team's
clock, at `send_at` on working days:
- a reminder `before_days` working days before the due date, to the people holding the
  owner role (for a gate: the roles it still needs). Only the latest reminder whose time has
  come is sent, and only until the due date has passed: after a worker was down, one
  reminder goes out, not a burst of stale ones;
- each escalation level `after_days` working days after the due date, to the owner role or
  the level's role (project manager, then sponsor). Every level whose time has come is sent
  once: each reaches different people.

Each notice carries a dedupe key, project id + item + level + due date: the same notice
always has the same key, so once recorded as sent (`state.mark_sent`) it is never issued
again, across worker restarts; a replanned due date makes new notices.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel

from journeys.timing import local_instants, parse_clock, zone
from projects.state import ProjectState, still_needed


class Recipient(BaseModel):
    name: str
    email: str


class Notice(BaseModel):
    key: str
    project_id: str
    kind: Literal["item", "milestone", "gate"]
    ref: str
    title: str
    stage: str
    level: str  # remind-<days before> or escalate-<n>
    due: date
    send_at: datetime
    to_roles: list[str]
    recipients: list[Recipient]
    subject: str
    text: str


class _Open(BaseModel):
    kind: Literal["item", "milestone", "gate"]
    ref: str
    title: str
    stage: str
    due: date
    owners: list[str]


def open_due(state: ProjectState) -> list[_Open]:
    """What is still to be done and has a due date: the things notices are about."""
    out: list[_Open] = []
    for i in state.plan.items:
        if i.required and not state.items[i.id].checked:
            out.append(
                _Open(
                    kind="item", ref=i.id, title=i.title, stage=i.stage, due=i.due, owners=[i.owner]
                )
            )
    for m in state.plan.milestones:
        if not state.milestones[m.id].done:
            out.append(
                _Open(
                    kind="milestone",
                    ref=m.id,
                    title=m.name,
                    stage=m.stage,
                    due=m.due,
                    owners=[m.owner],
                )
            )
    for g in state.plan.gates:
        if state.gates[g.id].passed_at is None:
            out.append(
                _Open(
                    kind="gate",
                    ref=g.id,
                    title=g.name,
                    stage=g.stage,
                    due=g.due,
                    owners=list(still_needed(state, g.id)),
                )
            )
    return out


def dedupe_key(project_id: str, ref: str, level: str, due: date) -> str:
    return f"{project_id}:{ref}:{level}:{due.isoformat()}"


class _Clock:
    """Send times on the team's clock, each working day's worked out once per call."""

    def __init__(self, state: ProjectState) -> None:
        self.cal = state.work_calendar()
        self.tz = zone(state.team.timezone)
        self.at = parse_clock(state.template.reminders.send_at)
        self.cache: dict[date, datetime] = {}

    def send_time(self, due: date, offset: int) -> datetime:
        day = self.cal.add(due, offset)
        when = self.cache.get(day)
        if when is None:
            when = self.cache[day] = local_instants(day, self.at, self.tz)[0]
        return when


def _levels(
    state: ProjectState, thing: _Open, clock: _Clock
) -> list[tuple[str, int, list[str], datetime]]:
    """(level, working-day offset from due, roles, send time) for every level of the policy."""
    policy = state.template.reminders
    out = []
    for days in policy.before_days:
        out.append((f"remind-{days}", -days, thing.owners, clock.send_time(thing.due, -days)))
    for n, esc in enumerate(policy.escalation, start=1):
        roles: list[str] = thing.owners if esc.to == "owner" else [esc.to]
        when = clock.send_time(thing.due, esc.after_days)
        out.append((f"escalate-{n}", esc.after_days, roles, when))
    return out


def _notice(
    state: ProjectState, thing: _Open, level: str, offset: int, roles: list[str], when: datetime
) -> Notice:
    people: dict[str, Recipient] = {}
    # a gate's owners are the roles it still needs: whoever already signed is not asked again
    signed = (
        {x.email.casefold() for x in state.gates[thing.ref].sign_offs}
        if thing.kind == "gate" and roles == thing.owners
        else set()
    )
    for role in roles:
        for p in state.team.holding(role):
            if p.email.casefold() not in signed:
                people.setdefault(p.email.casefold(), Recipient(name=p.name, email=p.email))
    what = {"item": "Checklist item", "milestone": "Milestone", "gate": "Gate"}[thing.kind]
    stage = state.template.stage(thing.stage).name
    if offset < 0:
        subject = f"[{state.name}] Reminder: {thing.title} is due on {thing.due}"
        lead = (
            f"{what} {thing.title!r} (stage {stage!r}) is due on {thing.due}, in {-offset} "
            "working day(s)."
        )
    elif offset == 0:
        subject = f"[{state.name}] Due today: {thing.title}"
        lead = f"{what} {thing.title!r} (stage {stage!r}) is due today, {thing.due}."
    else:
        subject = f"[{state.name}] Overdue: {thing.title} (due {thing.due})"
        lead = (
            f"{what} {thing.title!r} (stage {stage!r}) was due on {thing.due} and is "
            f"{offset} working day(s) late. This escalation goes to: {', '.join(roles)}."
        )
    action = {
        "item": "Check it off when it is done.",
        "milestone": "Mark it done when it is reached.",
        "gate": "It still needs sign-off from: " + ", ".join(thing.owners) + ".",
    }[thing.kind]
    return Notice(
        key=dedupe_key(state.project_id, thing.ref, level, thing.due),
        project_id=state.project_id,
        kind=thing.kind,
        ref=thing.ref,
        title=thing.title,
        stage=thing.stage,
        level=level,
        due=thing.due,
        send_at=when,
        to_roles=list(roles),
        recipients=list(people.values()),
        subject=subject,
        text=f"{lead}\n{action}\nProject: {state.name} ({state.project_id})\n",
    )


def due_notices(state: ProjectState, now: datetime) -> list[Notice]:
    """The notices due at `now` that have not been sent, earliest first."""
    today = state.today(now)
    clock = _Clock(state)
    out: list[Notice] = []
    for thing in open_due(state):
        levels = _levels(state, thing, clock)
        reminders = [lv for lv in levels if lv[1] <= 0 and lv[3] <= now]
        if reminders and today <= thing.due:
            latest = max(reminders, key=lambda lv: lv[3])
            out.append(_notice(state, thing, *latest))
        for lv in levels:
            if lv[1] > 0 and lv[3] <= now:
                out.append(_notice(state, thing, *lv))
    fresh = [n for n in out if n.key not in state.sent]
    fresh.sort(key=lambda n: (n.send_at, n.key))
    return fresh


def next_wakeup(state: ProjectState, now: datetime) -> datetime | None:
    """The next instant after `now` at which a notice falls due (None: nothing pending).
    Notices already due are `due_notices`' business: send those first."""
    clock = _Clock(state)
    times = [
        when
        for thing in open_due(state)
        for level, _, _, when in _levels(state, thing, clock)
        if when > now
        and dedupe_key(state.project_id, thing.ref, level, thing.due) not in state.sent
    ]
    return min(times, default=None)
