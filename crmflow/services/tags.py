"""Tags across the programme: every tag with how many customers carry it now, which rules or
people set it, and when it was last applied — including tags nobody carries any more (the
active rules declare them, or the audit trail shows them once set).

Applying or removing a tag by hand is `crmflow.services.customers.add_tag / remove_tag`
(the same call for the CLI, the API and the console); this module only reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from crmflow.processing import active_pack
from crmflow.services.runtime import Runtime
from rules.models import AddTag, RemoveTag
from store import tags as store
from store.db import utcnow

MANUAL = "manual"  # the audit trail's rule for a change by hand (crmflow.services.customers)

TagState = Literal["in use", "expired, not yet removed", "nobody carries it"]


class TagSetter(BaseModel):
    """One rule, person or automation that changed a tag."""

    kind: Literal["rule", "person", "automation", "rules"] = Field(
        description="rule: a rule of a rules version; person: by hand; automation: a "
        "scheduled run (tag expiry); rules: carried tags the rules set before the trail"
    )
    name: str = Field(description="the rule's, person's or schedule's name")
    added: int = Field(0, description="times it added the tag (audit trail)")
    removed: int = Field(0, description="times it removed the tag (audit trail)")
    carriers: int = Field(0, description="customers carrying the tag now that it set")
    last_at: datetime | None = None


class TagSummary(BaseModel):
    tag: str
    customers: int = Field(description="customers carrying it now (not past its expiry)")
    overdue: int = Field(0, description="carried past their expiry, until the nightly removal")
    state: TagState
    declared_by: list[str] = Field(
        default_factory=list, description="rules of the active version that add or remove it"
    )
    setters: list[TagSetter] = Field(default_factory=list)
    last_applied_at: datetime | None = Field(
        None, description="when it was last added (audit trail, or the newest carrier's tag)"
    )
    last_removed_at: datetime | None = None


class TagOverview(BaseModel):
    as_of: datetime
    tags: list[TagSummary]
    rules_version: str | None = None


def _setter(rule: str, by: str | None) -> tuple[str, str]:
    if rule == MANUAL:
        return "person", by or "someone"
    if rule.startswith("automation:"):
        return "automation", rule.removeprefix("automation:")
    return "rule", rule


def _source_setter(source: str | None) -> tuple[str, str]:
    if source and source.startswith(f"{MANUAL}:"):
        return "person", source.removeprefix(f"{MANUAL}:")
    return "rules", source or "rules"


def declared_tags(rt: Runtime) -> tuple[str | None, dict[str, list[str]]]:
    """The active rules version and, per tag, the rules of it that add or remove the tag."""
    with rt.engine.connect() as conn:
        pack = active_pack(conn)
    if pack is None:
        return None, {}
    found: dict[str, list[str]] = {}
    for compiled in pack.rules:
        for effect in compiled.rule.then:
            if isinstance(effect, AddTag):
                tag = effect.add_tag.tag
            elif isinstance(effect, RemoveTag):
                tag = effect.remove_tag
            else:
                continue
            names = found.setdefault(tag, [])
            if compiled.rule.name not in names:
                names.append(compiled.rule.name)
    return pack.version, found


def tag_overview(rt: Runtime, *, now: datetime | None = None) -> TagOverview:
    """Every tag: carried now, declared in the active rules, or seen in the audit trail."""
    now = now or utcnow()
    version, declared = declared_tags(rt)
    with rt.engine.connect() as conn:
        carried = {c.tag: c for c in store.carried(conn, now)}
        sources = store.sources(conn, now)
        changes = store.changes(conn)
    setters: dict[str, dict[tuple[str, str], TagSetter]] = {}

    def setter(tag: str, kind: str, name: str) -> TagSetter:
        per_tag = setters.setdefault(tag, {})
        found = per_tag.get((kind, name))
        if found is None:
            found = per_tag[(kind, name)] = TagSetter(kind=kind, name=name)
        return found

    last_added: dict[str, datetime] = {}
    last_removed: dict[str, datetime] = {}
    for ch in changes:
        kind, name = _setter(ch.rule, ch.by)
        s = setter(ch.tag, kind, name)
        if ch.kind == "add_tag":
            s.added += ch.times
            latest = last_added
        else:
            s.removed += ch.times
            latest = last_removed
        if ch.last_at is not None:
            s.last_at = max(s.last_at, ch.last_at) if s.last_at else ch.last_at
            if ch.tag not in latest or latest[ch.tag] < ch.last_at:
                latest[ch.tag] = ch.last_at
    for src in sources:
        kind, name = _source_setter(src.source)
        if kind == "rules" and any(s.kind == "rule" for s in setters.get(src.tag, {}).values()):
            continue  # the trail names the rules already
        setter(src.tag, kind, name).carriers += src.customers
    names = sorted(set(carried) | set(declared) | set(setters))
    out = []
    for tag in names:
        c = carried.get(tag)
        n, overdue = (c.customers, c.overdue) if c else (0, 0)
        state: TagState = (
            "in use" if n else "expired, not yet removed" if overdue else "nobody carries it"
        )
        # the trail's time (the event's) when there is one; else when the carriers got it
        applied = last_added.get(tag) or (c.last_set_at if c else None)
        out.append(
            TagSummary(
                tag=tag,
                customers=n,
                overdue=overdue,
                state=state,
                declared_by=declared.get(tag, []),
                setters=sorted(
                    setters.get(tag, {}).values(),
                    key=lambda s: (-(s.added + s.carriers), s.kind, s.name),
                ),
                last_applied_at=applied,
                last_removed_at=last_removed.get(tag),
            )
        )
    return TagOverview(as_of=now, tags=out, rules_version=version)
