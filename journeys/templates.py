"""Message templates: jinja2 in a sandbox, strict about undefined names, one variant per locale.

A template sees `customer` (the profile: customer_id, name, email, phone, tier,
points_balance, locale, timezone, attributes {...}), `unsubscribe_url`, `journey` (the
journey's name), `event` (the event that started the enrollment: `event.type`,
`event.occurred_at` as ISO text, `event.properties.*`; None for a journey entered by a rule
or a segment) and `data` (what the rule's `enroll_journey` or `journey_event` handed over,
e.g. `data.coupon_code`; a segment run's key). A name the context does not hold is an
error, never an empty string (`StrictUndefined`); write
`{{ customer.attributes.city | default('') }}` for an optional value. HTML parts are
autoescaped; subject and text are not. Every render runs within the limits of
`journeys.template_limits` (loop steps, sizes, time), and validation refuses a template whose
text shows it can run away.

The variant for a customer's locale is chosen exactly, then by language (`zh-TW` takes `zh`,
then any other `zh-*`), then the default content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import StrictUndefined, TemplateError, meta

from journeys.models import Content, MessageNode, Template
from journeys.template_limits import BoundedSandbox, bounded_render, render_bounded, static_problems
from rules.models import Program

TEXT_ENV = BoundedSandbox(undefined=StrictUndefined, autoescape=False)
HTML_ENV = BoundedSandbox(undefined=StrictUndefined, autoescape=True)
CONTEXT_NAMES = frozenset({"customer", "unsubscribe_url", "journey", "event", "data"})
SAMPLE_UNSUBSCRIBE_URL = "https://example.com/unsubscribe?token=sample"
SAMPLE_EVENT_TIME = "2026-03-01T09:30:00+00:00"

# The properties of the events the scheduled automations write (store/automations.py), with
# their types: a journey entered on one of them may show these in its messages.
AUTOMATION_EVENT_PROPERTIES: dict[str, dict[str, str]] = {
    "points_expiring": {
        "amount": "number",  # the points expiring on the earliest date
        "date": "date",  # that date, in the customer's zone (YYYY-MM-DD)
        "expires_at": "datetime",
        "total_expiring": "number",  # all points expiring within the notice window
        "within_days": "number",
    },
    "churn_scan": {"last_purchase_at": "datetime", "days_since_last_purchase": "number"},
    "lead_sla_check": {
        "owner": "string",
        "hours_since_last_follow_up": "number",
        "sla_hours": "number",
    },
    "tier_changed": {
        "from_tier": "string",
        "to_tier": "string",
        "direction": "string",
        "reason": "string",
    },
    "birthday": {"date": "date", "age": "number"},
    "membership_anniversary": {"date": "date", "years": "number"},
}
_SAMPLES: dict[str, Any] = {
    "string": "sample",
    "number": 120,
    "money": 99.5,
    "boolean": True,
    "date": "2026-03-31",
    "datetime": "2026-03-31T16:00:00+00:00",
}


class KnownNames(dict[str, Any]):
    """A sample mapping (event properties, data) that refuses a name it does not hold, even
    behind `default`: validation uses it so an unknown `event.properties.x` or `data.y` is a
    problem with its line, not a silent empty string."""

    def __init__(self, what: str, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self._what = what  # underscored: the sandbox never shows it to a template

    def __missing__(self, key: str) -> Any:
        known = ", ".join(sorted(self)) or "nothing"
        raise jinja2.UndefinedError(f"{self._what} has no {key!r} (it has: {known})")


class AnyNames(dict[str, Any]):
    """A sample mapping whose names are not known (data when the rules are not): any name
    gives a sample text."""

    def __missing__(self, key: str) -> Any:
        return "sample"


def sample_properties(
    program: Program | None, event_type: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Sample properties of an event of `event_type`: the programme's declared event
    properties (values of their declared types), the properties an automation's event carries,
    and `extra` (a rule's `journey_event` data, as written)."""
    declared: dict[str, str] = dict(program.event_properties) if program is not None else {}
    declared.update(AUTOMATION_EVENT_PROPERTIES.get(event_type, {}))
    out = {name: _SAMPLES[kind] for name, kind in declared.items()}
    out.update(extra or {})
    return out


def sample_event(event_type: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": event_type,
        "occurred_at": SAMPLE_EVENT_TIME,
        "properties": KnownNames("event.properties", properties),
    }


def sample_profile(program: Program | None = None) -> dict[str, Any]:
    """A customer to render templates against when validating: every standard field, and
    the attributes the programme declares (with values of their declared types)."""
    attributes: dict[str, Any] = {
        "birthday": "1990-05-01",
        "member_since": "2024-01-15",
        "city": "Shanghai",
    }
    if program is not None:
        for name, kind in program.attributes.items():
            attributes.setdefault(name, 1 if kind == "number" else _SAMPLES[kind])
    return {
        "customer_id": "c-sample",
        "name": "Li Wei",
        "email": "li.wei@example.com",
        "phone": "+8613800000000",
        "tier": program.welcome_tier if program else "basic",
        "points_balance": 1200.0,
        "locale": "zh-CN",
        "timezone": "Asia/Shanghai",
        "attributes": attributes,
    }


def template_context(
    profile: Mapping[str, Any],
    *,
    unsubscribe_url: str = "",
    journey: str = "",
    event: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a template sees. `event`: the entry event ({type, occurred_at, properties});
    `data`: what the enroll command handed over."""
    return {
        "customer": dict(profile),
        "unsubscribe_url": unsubscribe_url,
        "journey": journey,
        "event": event,
        "data": data if data is not None else {},
    }


def _norm(tag: str) -> str:
    return tag.replace("_", "-").lower()


def choose_locale(template: Template, locale: str | None) -> str | None:
    """The variant key for `locale` (exact, then language, then any variant of that
    language), or None for the default content."""
    if not locale or not template.variants:
        return None
    wanted = _norm(locale)
    keys = {_norm(k): k for k in template.variants}
    if wanted in keys:
        return keys[wanted]
    language = wanted.split("-")[0]
    if language in keys:
        return keys[language]
    return next((k for n, k in keys.items() if n.split("-")[0] == language), None)


def content_for(template: Template, locale: str | None) -> tuple[str | None, Content]:
    key = choose_locale(template, locale)
    return key, template.variants[key] if key is not None else template


@dataclass(frozen=True)
class RenderedMessage:
    channel: str
    locale: str | None  # the variant used; None for the default content
    subject: str | None
    text: str | None
    html: str | None


@lru_cache(maxsize=1024)
def _compiled(html: bool, source: str) -> jinja2.Template:
    """Compiling a template costs milliseconds; a journey sends the same ones again and again."""
    return (HTML_ENV if html else TEXT_ENV).from_string(source)


def render_part(part: str, source: str, context: Mapping[str, Any]) -> str:
    """One part, within the limits of journeys.template_limits (TemplateLimitError past them)."""
    return render_bounded(_compiled(part == "html", source), context)


def render_message(
    node: MessageNode,
    profile: Mapping[str, Any],
    locale: str | None = None,
    *,
    unsubscribe_url: str = "",
    journey: str = "",
    event: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> RenderedMessage:
    """Render `node`'s template for this customer, in the variant for `locale` (by default
    the profile's own), with the entry `event` and the enroll command's `data`. Raises
    jinja2 errors (UndefinedError, TemplateSyntaxError)."""
    if locale is None:
        raw = profile.get("locale")
        locale = raw if isinstance(raw, str) else None
    key, content = content_for(node.template, locale)
    context = template_context(
        profile, unsubscribe_url=unsubscribe_url, journey=journey, event=event, data=data
    )
    with bounded_render():  # the parts of one message share its budget
        out = {part: render_part(part, src, context) for part, src in content.parts().items()}
    return RenderedMessage(
        channel=node.channel,
        locale=key,
        subject=out.get("subject"),
        text=out.get("text"),
        html=out.get("html"),
    )


@dataclass(frozen=True)
class TemplateProblem:
    message: str
    line: int | None  # line within the template, when known


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line a render error happened on (jinja2 rewrites tracebacks so that
    template frames carry the template's own line numbers)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def check_part(part: str, source: str, context: Mapping[str, Any]) -> TemplateProblem | None:
    """Parse and render one part against `context`; the first problem, or None."""
    env = HTML_ENV if part == "html" else TEXT_ENV
    try:
        ast = env.parse(source)
        names = meta.find_undeclared_variables(ast)  # compiles: unknown filters fail here
    except TemplateError as exc:
        lineno = getattr(exc, "lineno", None)
        return TemplateProblem(f"does not parse: {exc.message or exc}", lineno)
    too_much = static_problems(ast)
    if too_much:
        message, lineno = too_much[0]
        return TemplateProblem(f"is refused: {message}", lineno)
    unknown = sorted(names - set(context))
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        known = ", ".join(sorted(context))
        first = re.compile(rf"\b{re.escape(unknown[0])}\b")
        line = next(
            (n for n, text in enumerate(source.splitlines(), start=1) if first.search(text)), None
        )
        return TemplateProblem(f"uses undefined {listed}; templates see {known}", line)
    try:
        with bounded_render():
            render_bounded(env.from_string(source), context)
    except TemplateError as exc:
        return TemplateProblem(
            f"does not render: {exc.message or exc}", _template_line(exc.__traceback__)
        )
    except Exception as exc:  # a template can raise anything (1/0, a bad filter argument)
        return TemplateProblem(
            f"does not render: {type(exc).__name__}: {exc}", _template_line(exc.__traceback__)
        )
    return None
