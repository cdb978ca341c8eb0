"""Message templates: jinja2 in a sandbox, strict about undefined names, one variant per locale.

A template sees `customer` (the profile: customer_id, name, email, phone, tier,
points_balance, locale, timezone, attributes {...}), `unsubscribe_url` and `journey` (the
journey's name). A name the context does not hold is an error, never an empty string
(`StrictUndefined`); write `{{ customer.attributes.city | default('') }}` for an optional
value. HTML parts are autoescaped; subject and text are not. Every render runs within the limits
of `journeys.template_limits` (loop steps, sizes, time), and validation refuses a template
whose text shows it can run away.

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
CONTEXT_NAMES = frozenset({"customer", "unsubscribe_url", "journey"})
SAMPLE_UNSUBSCRIBE_URL = "https://example.com/unsubscribe?token=sample"


def sample_profile(program: Program | None = None) -> dict[str, Any]:
    """A customer to render templates against when validating: every standard field, and
    the attributes the programme declares (with values of their declared types)."""
    attributes: dict[str, Any] = {
        "birthday": "1990-05-01",
        "member_since": "2024-01-15",
        "city": "Shanghai",
    }
    samples = {"string": "sample", "number": 1, "boolean": True}
    if program is not None:
        for name, kind in program.attributes.items():
            attributes.setdefault(name, samples[kind])
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
    profile: Mapping[str, Any], *, unsubscribe_url: str = "", journey: str = ""
) -> dict[str, Any]:
    return {"customer": dict(profile), "unsubscribe_url": unsubscribe_url, "journey": journey}


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
) -> RenderedMessage:
    """Render `node`'s template for this customer, in the variant for `locale` (by default
    the profile's own). Raises jinja2 errors (UndefinedError, TemplateSyntaxError)."""
    if locale is None:
        raw = profile.get("locale")
        locale = raw if isinstance(raw, str) else None
    key, content = content_for(node.template, locale)
    context = template_context(profile, unsubscribe_url=unsubscribe_url, journey=journey)
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
