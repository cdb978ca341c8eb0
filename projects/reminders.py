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

With `policy_days` (every project the workflow starts now; see `NOTICES_PATCH`):
- escalation levels keep the policy's spacing: level n+1 goes out no sooner than its own
  day and no sooner than the policy's gap in working days after level n actually went out,
  so a worker that was down, or a due date found late, never sends two levels on one day;
- a project created after some of its notices fell due (a back-dated plan) does not send
  them one by one: its first notices are one summary per person of what concerns them;
  the notices it stands for are recorded as sent (`Notice.covers`), and the next levels
  follow from it.
Lateness in a notice is counted at the time it is sent: working days past the due date
(the calendar's days off excluded) and calendar days.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from journeys.timing import local_instants, parse_clock, zone
from projects.state import ProjectState, still_needed

_WHAT = {"item": "Checklist item", "milestone": "Milestone", "gate": "Gate"}


def late_days(state: ProjectState, due: date, today: date) -> int:
    """Working days after `due` up to and including `today` (0 when not past due)."""
    if today <= due:
        return 0
    cal = state.work_calendar()
    return cal.count(due + timedelta(days=1), today + timedelta(days=1))


def lateness(state: ProjectState, due: date, today: date) -> str:
    """'3 working days late (5 days)'; the calendar days only when they differ."""
    work = late_days(state, due, today)
    days = (today - due).days
    text = f"{work} working day{'s' if work != 1 else ''} late"
    return text if days == work else f"{text} ({days} days)"


class Recipient(BaseModel):
    name: str
    email: str


class Notice(BaseModel):
    key: str
    project_id: str
    kind: Literal["item", "milestone", "gate", "summary"]
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
    covers: list[str] = Field(
        default_factory=list, description="keys of the notices a summary stands for"
    )


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
    state: ProjectState,
    thing: _Open,
    level: str,
    offset: int,
    roles: list[str],
    when: datetime,
    now: datetime | None = None,
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
        today = state.today(max(when, now) if now is not None else when)
        lead = (
            f"{what} {thing.title!r} (stage {stage!r}) was due on {thing.due} and is "
            f"{lateness(state, thing.due, today)}. This escalation goes to: {', '.join(roles)}."
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


def due_notices(state: ProjectState, now: datetime, policy_days: bool = False) -> list[Notice]:
    """The notices due at `now` that have not been sent, earliest first."""
    if policy_days:
        return _due_by_policy(state, now)
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


def next_wakeup(state: ProjectState, now: datetime, policy_days: bool = False) -> datetime | None:
    """The next instant after `now` at which a notice falls due (None: nothing pending).
    Notices already due are `due_notices`' business: send those first."""
    if policy_days:
        return min((p.when for p in _pending(state, now) if p.when > now), default=None)
    clock = _Clock(state)
    times = [
        when
        for thing in open_due(state)
        for level, _, _, when in _levels(state, thing, clock)
        if when > now
        and dedupe_key(state.project_id, thing.ref, level, thing.due) not in state.sent
    ]
    return min(times, default=None)


# --------------------------------------------------------------------------- policy days


class _Pending(BaseModel):
    """One level of one open thing that has not been sent, and when it may go."""

    thing: _Open
    level: str
    offset: int
    roles: list[str]
    policy: datetime = Field(description="the policy's send time")
    when: datetime = Field(description="the policy's time, or later to keep the spacing")
    key: str


def _pending(state: ProjectState, now: datetime) -> list[_Pending]:
    """Per open thing: the latest reminder due and not sent, and the first escalation level
    not sent (each level waits for the one before it, and for the policy's gap after it)."""
    clock = _Clock(state)
    gaps = [e.after_days for e in state.template.reminders.escalation]
    out: list[_Pending] = []
    for thing in open_due(state):
        levels = _levels(state, thing, clock)
        today = state.today(now)
        reminders = [lv for lv in levels if lv[1] <= 0]
        due_now = [lv for lv in reminders if lv[3] <= now]
        later = [lv for lv in reminders if lv[3] > now]
        chosen = []
        if due_now and today <= thing.due:  # only the latest reminder whose time has come
            chosen.append(max(due_now, key=lambda x: x[3]))
        if later:  # and the next one, to wake up for
            chosen.append(min(later, key=lambda x: x[3]))
        for lv in chosen:
            key = dedupe_key(state.project_id, thing.ref, lv[0], thing.due)
            if key not in state.sent:
                out.append(
                    _Pending(
                        thing=thing,
                        level=lv[0],
                        offset=lv[1],
                        roles=lv[2],
                        policy=lv[3],
                        when=lv[3],
                        key=key,
                    )
                )
        previous: datetime | None = None
        for n, lv in enumerate([lv for lv in levels if lv[1] > 0]):
            key = dedupe_key(state.project_id, thing.ref, lv[0], thing.due)
            sent = state.sent.get(key)
            if sent is not None:
                previous = sent
                continue
            when = lv[3]
            if previous is not None and n > 0:
                # no sooner than the policy's gap after the level before actually went out
                day = clock.cal.add(
                    clock.cal.on_or_after(state.today(previous)), gaps[n] - gaps[n - 1]
                )
                when = max(when, local_instants(day, clock.at, clock.tz)[0])
            out.append(
                _Pending(
                    thing=thing,
                    level=lv[0],
                    offset=lv[1],
                    roles=lv[2],
                    policy=lv[3],
                    when=when,
                    key=key,
                )
            )
            break
    return out


def _due_by_policy(state: ProjectState, now: datetime) -> list[Notice]:
    pending = [p for p in _pending(state, now) if p.when <= now]
    # only the project's first notices can be a set-up summary: a reminder that a replan
    # later moved into the past is one notice, as it always was
    first = not state.sent
    late_found = [p for p in pending if first and p.policy <= state.created_at]
    out = [
        _notice(state, p.thing, p.level, p.offset, p.roles, p.when, now)
        for p in pending
        if p not in late_found
    ]
    if late_found:
        out.extend(_summaries(state, now, late_found))
    out.sort(key=lambda n: (n.send_at, n.key))
    return out


def _summaries(state: ProjectState, now: datetime, found: list[_Pending]) -> list[Notice]:
    """One notice per person for everything that fell due before the project existed: every
    level whose time had come at creation is covered (recorded as sent with the summary)."""
    clock = _Clock(state)
    today = state.today(now)
    per_person: dict[str, tuple[Recipient, list[str], list[str]]] = {}
    lines: dict[str, list[tuple[date, str]]] = {}
    for p in found:
        levels = _levels(state, p.thing, clock)
        reached = [
            lv for lv in levels if lv[3] <= state.created_at and (lv[1] > 0 or lv[0] == p.level)
        ]
        keys = [dedupe_key(state.project_id, p.thing.ref, lv[0], p.thing.due) for lv in reached]
        roles = sorted({r for lv in reached for r in lv[2]})
        note = _notice(state, p.thing, p.level, p.offset, roles, p.when, now)
        what = _WHAT[p.thing.kind]
        stage = state.template.stage(p.thing.stage).name
        if p.thing.due < today:
            status = lateness(state, p.thing.due, today)
            top = max((lv[0] for lv in reached if lv[1] > 0), default=None)
            if top is not None:
                status += f"; escalation level {top.removeprefix('escalate-')} reached"
        elif p.thing.due == today:
            status = "due today"
        else:
            status = f"due in {state.work_calendar().count(today, p.thing.due)} working day(s)"
        line = f"- {p.thing.due}  {what} {p.thing.title!r} (stage {stage!r}): {status}"
        for r in note.recipients:
            email = r.email.casefold()
            entry = per_person.setdefault(email, (r, [], []))
            entry[1].extend(k for k in keys if k not in entry[1])
            for role in roles:
                if role not in entry[2] and any(
                    q.email.casefold() == email for q in state.team.holding(role)
                ):
                    entry[2].append(role)
            lines.setdefault(email, []).append((p.thing.due, line))
    out: list[Notice] = []
    stamp = now.strftime("%Y%m%dT%H%M")
    created = state.today(state.created_at)
    for email, (who, keys, roles) in per_person.items():
        mine = sorted(lines[email])
        late = sum(1 for d, _ in mine if d < today)
        soon = len(mine) - late
        counts = ", ".join(
            x for x in (f"{late} overdue" if late else "", f"{soon} due soon" if soon else "") if x
        )
        text = (
            f"Project {state.name} ({state.project_id}) was set up on {created} with a plan that "
            f"began on {state.plan.start}, so some of its work fell due before the project "
            f"existed. Instead of one notice for each, this is what concerns you"
            + (f" ({', '.join(roles)})" if roles else "")
            + ":\n"
            + "\n".join(line for _, line in mine)
            + "\nCheck items off and mark milestones done as they are; from now on reminders "
            "and escalations follow the project's policy days.\n"
            f"Project: {state.name} ({state.project_id})\n"
        )
        out.append(
            Notice(
                key=f"{state.project_id}:summary:{stamp}:{email}"[:200],
                project_id=state.project_id,
                kind="summary",
                ref="summary",
                title=f"{counts} at set-up",
                stage="",
                level="summary",
                due=today,
                send_at=now,
                to_roles=roles,
                recipients=[who],
                subject=f"[{state.name}] {counts}: where the project stands at set-up",
                text=text,
                covers=keys,
            )
        )
    if not per_person:  # nobody holds the roles: the notices are covered all the same
        keys = [
            dedupe_key(state.project_id, p.thing.ref, lv[0], p.thing.due)
            for p in found
            for lv in _levels(state, p.thing, clock)
            if lv[3] <= state.created_at
        ]
        out.append(
            Notice(
                key=f"{state.project_id}:summary:{stamp}:nobody",
                project_id=state.project_id,
                kind="summary",
                ref="summary",
                title="at set-up",
                stage="",
                level="summary",
                due=today,
                send_at=now,
                to_roles=[],
                recipients=[],
                subject=f"[{state.name}] where the project stands at set-up",
                text="Nobody on the team holds the roles these notices are for.\n",
                covers=keys,
            )
        )
    return out
