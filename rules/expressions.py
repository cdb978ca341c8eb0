"""Arithmetic expressions over numeric facts, for effect amounts such as `event.amount * 2`.

Parsed with Python's `ast` and a short allow-list (numbers, facts, + - * / // %, unary
minus, min max round floor ceil abs); anything else is refused when the rules are loaded.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

Evaluator = Callable[[dict[str, Any]], float | None]

_FUNCS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "round": lambda x, n=0.0: round(x, int(n)),
    "floor": math.floor,
    "ceil": math.ceil,
    "abs": abs,
}
# (fewest, most) arguments; None = no upper bound
_ARITY: dict[str, tuple[int, int | None]] = {
    "min": (2, None),
    "max": (2, None),
    "round": (1, 2),
    "floor": (1, 1),
    "ceil": (1, 1),
    "abs": (1, 1),
}
MAX_LENGTH = 500
_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b if b else math.nan,
    ast.FloorDiv: lambda a, b: a // b if b else math.nan,
    ast.Mod: lambda a, b: a % b if b else math.nan,
}


class ExpressionError(ValueError):
    pass


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def parse_expression(text: str) -> tuple[Evaluator, list[str]]:
    """Compile `text`; return the evaluator and the facts it reads. Raises ExpressionError."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"expression {text!r} does not parse: {exc.msg}") from exc
    except (RecursionError, MemoryError) as exc:
        raise ExpressionError(f"expression {text!r} is nested too deeply") from exc
    facts: list[str] = []

    def build(node: ast.expr) -> Callable[[dict[str, Any]], float]:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            if isinstance(node.value, bool):
                raise ExpressionError(f"{text!r}: booleans are not numbers")
            value = float(node.value)
            return lambda f: value
        name = _dotted(node)
        if name is not None:
            facts.append(name)

            def read(f: dict[str, Any], name: str = name) -> float:
                v = f.get(name)
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise _Missing(name)
                return float(v)

            return read
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            op = _BINOPS[type(node.op)]
            left, right = build(node.left), build(node.right)
            return lambda f: op(left(f), right(f))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            inner = build(node.operand)
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
            return lambda f: sign * inner(f)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
            and node.args
        ):
            fn = _FUNCS[node.func.id]
            least, most = _ARITY[node.func.id]
            if len(node.args) < least or (most is not None and len(node.args) > most):
                if least == most:
                    want = f"{least} argument" + ("s" if least > 1 else "")
                elif most is None:
                    want = f"{least} or more arguments"
                else:
                    want = f"{least} to {most} arguments"
                raise ExpressionError(
                    f"expression {text!r}: {node.func.id}() takes {want}, not {len(node.args)}"
                )
            args = [build(a) for a in node.args]

            def call(f: dict[str, Any]) -> float:
                values = [a(f) for a in args]
                if any(math.isnan(v) for v in values):
                    return math.nan  # min/max would ignore a NaN that is not first
                return float(fn(*values))

            return call
        raise ExpressionError(
            f"expression {text!r}: {ast.unparse(node)!r} is not allowed; use numbers, facts, "
            "+ - * / // %, and min max round floor ceil abs"
        )

    try:
        body = build(tree.body)
    except RecursionError as exc:
        raise ExpressionError(f"expression {text!r} is nested too deeply") from exc

    def evaluate(f: dict[str, Any]) -> float | None:
        try:
            result = body(f)
        except (_Missing, ValueError, OverflowError, ZeroDivisionError):
            return None  # a missing fact, or floor/ceil/round of a NaN or an infinity
        return None if math.isnan(result) or math.isinf(result) else result

    return evaluate, facts


class _Missing(Exception):
    pass
