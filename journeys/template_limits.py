"""Limits on message templates, so a template can fail one message but never take a worker down.

A jinja2 sandbox stops a template from reaching Python's internals, not from running away:
`{{ 'a' * 1000000000 }}` asked for 4 GB and nested `range(99999)` loops never ended. Here:

- at render time (`BoundedSandbox`, used for every render, at validation and at send time):
  one message may take `MAX_LOOP_STEPS` loop iterations in all, `range()` gives at most
  `MAX_RANGE` items, no value or rendered part may exceed `MAX_TEXT` characters (repetition,
  concatenation into a namespace, filters, string methods and the output are checked),
  powers stay below `MAX_POWER_BITS` bits, lists and dicts cannot be changed in place, and
  the whole render has `RENDER_SECONDS`; past any of them the render raises
  `TemplateLimitError` naming the limit;
- at validation time (`static_problems`): what can be seen in the text is refused before any
  sample render: a `range()` or a `*` with a constant operand beyond the limits, a power with
  a constant exponent above `MAX_EXPONENT`, nested loops over constant ranges whose product
  passes `MAX_LOOP_STEPS`, a width argument (center, indent, truncate …) beyond `MAX_TEXT`.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum

MAX_LOOP_STEPS = 100_000  # loop iterations in one message, all loops together
MAX_RANGE = 10_000  # items of one range()
MAX_TEXT = 1_000_000  # characters of one value, or of one rendered part
MAX_POWER_BITS = 4_096  # an integer power's result
MAX_EXPONENT = 64  # a constant exponent, refused at validation above this
RENDER_SECONDS = 2.0  # one message, all its parts
SIZE_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})
_WIDE_FORMAT = re.compile(r"[%{:][^a-zA-Z%{}]*?(\d{7,})")  # a width or precision ≥ 1,000,000
_BUDGET_FILTER = "_crmflow_loop_budget"


class TemplateLimitError(SecurityError):
    """A template went past one of the limits; the message says which."""


@dataclass
class Budget:
    """What one message's render may still spend."""

    steps: int = MAX_LOOP_STEPS
    deadline: float = field(default_factory=lambda: time.monotonic() + RENDER_SECONDS)

    def tick(self, steps: int = 1) -> None:
        self.steps -= steps
        if self.steps < 0:
            raise TemplateLimitError(
                f"the loops ran more than {MAX_LOOP_STEPS:,} times in one message"
            )
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took more than {RENDER_SECONDS:g} s")


_BUDGET: ContextVar[Budget | None] = ContextVar("template_budget", default=None)


def _budget() -> Budget:
    budget = _BUDGET.get()
    return budget if budget is not None else Budget()  # outside a render: nothing to spend


class bounded_render:
    """One message's budget for the renders inside the block (subject, text and html share it)."""

    def __enter__(self) -> Budget:
        self._budget = Budget()
        self._token = _BUDGET.set(self._budget)
        return self._budget

    def __exit__(self, *exc: object) -> None:
        _BUDGET.reset(self._token)


def check_size(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_TEXT:
        raise TemplateLimitError(f"{what} would hold {len(value):,} items; at most {MAX_TEXT:,}")
    return value


def _check_length(length: int, what: str) -> None:
    if length > MAX_TEXT:
        raise TemplateLimitError(f"{what} would hold {length:,} characters; at most {MAX_TEXT:,}")


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise TemplateLimitError(f"range() of {len(rng):,} items; at most {MAX_RANGE:,}")
    return rng


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n > 20 or max > 1_000:
        raise TemplateLimitError("lipsum() of more than 20 paragraphs of 1,000 words")
    return str(generate_lorem_ipsum(n, html, min, max))


class BoundedNamespace(Namespace):
    """`namespace()`, whose attributes cannot grow past MAX_TEXT (doubling a string in a loop
    reaches gigabytes in 30 steps)."""

    def __setitem__(self, name: str, value: Any) -> None:
        check_size(value, f"namespace attribute {name!r}")
        super().__setitem__(name, value)


def _loop_budget(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.tick()
        yield item


def _size_args(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    limit = MAX_RANGE if name in ("batch", "slice") else MAX_TEXT
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and arg > limit:
            raise TemplateLimitError(f"{name}({arg:,}) is beyond the limit of {limit:,}")


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)  # keeps jinja's pass_context / pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _budget().tick(0)
        if name in SIZE_FILTERS:
            _size_args(name, args[1:], kwargs)
        if name == "format" and args:
            _wide_format(args[0])
        return check_size(func(*args, **kwargs), f"the result of |{name}")

    return bounded


def _wide_format(spec: Any) -> None:
    if isinstance(spec, str) and _WIDE_FORMAT.search(spec):
        raise TemplateLimitError("a format width or precision of 1,000,000 or more")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox every message template renders in; see the module docstring."""

    intercepted_binops = frozenset({"*", "**", "+", "//", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters[_BUDGET_FILTER] = _loop_budget
        self.globals.update(
            range=_bounded_range, lipsum=_bounded_lipsum, namespace=BoundedNamespace
        )

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Every `for` loop iterates through the budget (its iterable is wrapped in a filter)."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _BUDGET_FILTER, [], [], None, None)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _budget().tick(0)
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    _check_length(len(seq) * max(times, 0), "a repetition (*)")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            bits = right * math.log2(abs(left)) if abs(left) > 1 and right > 0 else 0
            if bits > MAX_POWER_BITS:
                raise TemplateLimitError(
                    f"{left} ** {right} has about {bits:,.0f} bits; at most {MAX_POWER_BITS:,}"
                )
        elif operator == "+" and isinstance(left, (str, list, tuple)):
            _check_length(len(left) + len(right) if hasattr(right, "__len__") else 0, "a sum")
        elif operator == "%" and isinstance(left, str):
            _wide_format(left)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`'{:>999999999}'.format(x)` and `'{:>{w}}'.format(x, w=…)` are refused."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _wide_format(value.__self__)

        def bounded(*args: Any, **kwargs: Any) -> str:
            _large_args(f"str.{value.__name__}", args, kwargs)
            return wrapped(*args, **kwargs)

        return bounded

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().tick(0)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _large_args(f"str.{__obj.__name__}", args, kwargs)
        return check_size(
            super().call(__context, __obj, *args, **kwargs), f"the result of {_name(__obj)}()"
        )


def _large_args(what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and arg > MAX_TEXT:
            raise TemplateLimitError(f"{what}({arg:,}) is beyond the limit of {MAX_TEXT:,}")


def _name(obj: Any) -> str:
    return str(getattr(obj, "__name__", type(obj).__name__))


def render_bounded(template: Any, context: Any) -> str:
    """Render `template` under the budget of the enclosing `bounded_render` (or its own),
    stopping as soon as the output passes MAX_TEXT characters."""
    if _BUDGET.get() is None:
        with bounded_render():
            return render_bounded(template, context)
    budget = _budget()
    out: list[str] = []
    length = 0
    for chunk in template.generate(context):
        length += len(chunk)
        _check_length(length, "the rendered text")
        budget.tick(0)
        out.append(chunk)
    return "".join(out)


# --------------------------------------------------------------------------- validation


def _const_int(node: nodes.Node) -> int | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, int):
        return int(node.value)
    if isinstance(node, nodes.Neg):
        inner = _const_int(node.node)
        return -inner if inner is not None else None
    return None


def _range_length(node: nodes.Node) -> int | None:
    """The length of `range(<constants>)`, or None when it is no such call."""
    if not (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name)):
        return None
    if node.node.name != "range" or node.kwargs or node.dyn_args or node.dyn_kwargs:
        return None
    values = [_const_int(a) for a in node.args]
    if not values or any(v is None for v in values) or len(values) > 3:
        return None
    try:
        return len(range(*[int(v) for v in values if v is not None]))
    except ValueError:
        return None


def _loop_iter(loop: nodes.For) -> nodes.Node:
    inner = loop.iter
    if isinstance(inner, nodes.Filter) and inner.name == _BUDGET_FILTER and inner.node is not None:
        return inner.node
    return inner


def static_problems(tree: nodes.Template) -> list[tuple[str, int | None]]:
    """What the template's own text shows can run away: (message, line) pairs."""
    problems: list[tuple[str, int | None]] = []
    for call in tree.find_all(nodes.Call):
        length = _range_length(call)
        if length is not None and length > MAX_RANGE:
            problems.append((f"range() of {length:,} items; at most {MAX_RANGE:,}", call.lineno))
    for mul in tree.find_all(nodes.Mul):
        for operand in (mul.left, mul.right):
            times = _const_int(operand)
            if times is not None and times > MAX_RANGE:
                problems.append(
                    (f"repetition by {times:,} can run away; at most {MAX_RANGE:,}", mul.lineno)
                )
    for power in tree.find_all(nodes.Pow):
        exponent = _const_int(power.right)
        if isinstance(power.right, nodes.Pow) or (exponent is not None and exponent > MAX_EXPONENT):
            problems.append((f"a power above ** {MAX_EXPONENT} can run away", power.lineno))
    for flt in tree.find_all(nodes.Filter):
        if flt.name in SIZE_FILTERS:
            limit = MAX_RANGE if flt.name in ("batch", "slice") else MAX_TEXT
            for arg in [*flt.args, *(kw.value for kw in flt.kwargs)]:
                value = _const_int(arg)
                if value is not None and value > limit:
                    problems.append((f"{flt.name}({value:,}) is beyond {limit:,}", flt.lineno))
    for loop in tree.find_all(nodes.For):
        steps = _nested_steps(loop)
        if steps > MAX_LOOP_STEPS:
            problems.append(
                (f"nested loops of {steps:,} steps; at most {MAX_LOOP_STEPS:,}", loop.lineno)
            )
            break
    return problems


def _nested_steps(loop: nodes.For) -> int:
    """Iterations of `loop` and the loops inside it, where their ranges are constants."""
    own = _range_length(_loop_iter(loop)) or 1
    inner = max((_nested_steps(child) for child in _direct_loops(loop)), default=1)
    return own * inner


def _direct_loops(loop: nodes.For) -> list[nodes.For]:
    found: list[nodes.For] = []
    stack: list[nodes.Node] = [*loop.body, *loop.else_]
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.For):
            found.append(node)
        else:
            stack.extend(node.iter_child_nodes())
    return found
