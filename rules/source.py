"""Reading YAML files with line numbers, so every error names the file and the line.

Every YAML language of crmflow reads its files through here: rules and the programme,
journeys, project templates and plans, migration checks, schedules. `load_yaml` returns the
data and a map from each node's path (keys and list indexes) to its line; `SourceProblem`
carries file, line and message; `SourceError` (raised for any of those files) lists them;
`errors_from_validation` turns a pydantic error into SourceProblems using that map.

Every file is read with limits, because a YAML file can be a weapon: a file larger than
its `YamlLimits`, nesting deeper (5,000 `[` used to overflow the stack), more aliases than
allowed, an alias inside its own anchor, or aliases that expand to more values than allowed
(a "billion laughs" file reached 2.9 GB) is refused with the line at fault before anything is
built. A key given twice in one mapping is an error
naming both lines (PyYAML keeps the last one silently).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

LinePath = tuple[str | int, ...]

# Kept here (not in models) so messages can recognise them without a circular import.
NAME_PATTERN = r"^[a-z][a-z0-9_.:-]{0,63}$"
RULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


@dataclass(frozen=True)
class SourceProblem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class SourceError(ValueError):
    """One or more problems in a YAML source file (rules, journeys, projects, schedules …);
    `errors` lists each with its file and line."""

    def __init__(self, errors: list[SourceProblem]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass
class YamlDoc:
    path: str
    data: Any
    lines: dict[LinePath, int]
    text: str

    def line_of(self, path: LinePath) -> int | None:
        """The line of the deepest node on `path` that the file has."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def _walk(node: yaml.Node, path: LinePath, lines: dict[LinePath, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            lines[(*path, k)] = key.start_mark.line + 1
            _walk(value, (*path, k), lines)
            lines[(*path, k)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines)


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so `on:` or `no` stay strings."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    # 1e3, 1.5e3, .5e3: numbers in YAML 1.2 that PyYAML's 1.1 resolver reads as text
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


@dataclass(frozen=True)
class YamlLimits:
    """How much one YAML text may hold: bytes, nesting (through aliases too), aliases, and
    values with its aliases expanded."""

    bytes: int = 1_000_000  # PyYAML reads about 200 KB a second: 5 s at most
    depth: int = 50
    aliases: int = 1_000
    nodes: int = 100_000


FILE_LIMITS = YamlLimits()


class YamlLimitError(yaml.MarkedYAMLError):
    """A text over one of the limits, or with a key given twice; `problem_mark` is its line."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _LimitedLoader(Yaml12Loader):
    """Composes with a depth limit and an alias count (PyYAML's composer recurses per level
    and would follow any number of aliases)."""

    def __init__(self, stream: str, limits: YamlLimits) -> None:
        super().__init__(stream)
        self._limits = limits
        self._depth = 0
        self._aliases = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > self._limits.aliases:
                raise YamlLimitError(
                    f"more than {self._limits.aliases:,} aliases (*name)", event.start_mark
                )
            return super().compose_node(parent, index)
        self._nodes += 1  # stop composing a flat list of a million values early
        if self._nodes > self._limits.nodes:
            raise YamlLimitError(f"more than {self._limits.nodes:,} values", event.start_mark)
        self._depth += 1
        try:
            if self._depth > self._limits.depth:
                raise YamlLimitError(
                    f"nested more than {self._limits.depth} levels deep", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_graph(root: yaml.Node, limits: YamlLimits) -> None:
    """Refuse an alias inside its own anchor, an expansion past the limits and a key given
    twice. Sizes and depths are memoised per node, so a file of shared aliases is checked in
    linear time though it expands exponentially."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}  # through aliases too: a chain of them nests deeper than text
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            children = _children(node)
            size = 1 + sum(sizes[id(child)] for child in children)
            if size > limits.nodes:
                raise YamlLimitError(
                    f"expands to more than {limits.nodes:,} values through its aliases",
                    node.start_mark,
                )
            depth = 1 + max((depths[id(child)] for child in children), default=0)
            if depth > limits.depth:
                raise YamlLimitError(
                    f"nested more than {limits.depth} levels deep through its aliases",
                    node.start_mark,
                )
            sizes[key] = size
            depths[key] = depth
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YamlLimitError("an alias refers to a node that contains it", node.start_mark)
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: dict[str, yaml.Mark] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        first = seen.get(key.value)
        if first is not None:
            raise YamlLimitError(
                f"key {key.value!r} is given twice, on line {first.line + 1} and line "
                f"{key.start_mark.line + 1}; keep one",
                key.start_mark,
            )
        seen[key.value] = key.start_mark


def _load_node(
    text: str, limits: YamlLimits = FILE_LIMITS, *, construct: bool = True
) -> tuple[yaml.Node | None, Any]:
    if len(text) * 4 > limits.bytes:  # at most 4 bytes a character: count when it may matter
        size = len(text.encode("utf-8"))
        if size > limits.bytes:
            raise YamlLimitError(f"{size:,} bytes; the limit is {limits.bytes:,}", None)
    loader = _LimitedLoader(text, limits)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_graph(node, limits)
        return node, loader.construct_document(node) if construct else None
    finally:
        loader.dispose()


def yaml_limit_problem(text: str, path: str, limits: YamlLimits) -> SourceProblem | None:
    """The limit `text` breaks (size, depth, aliases, expansion, a key twice), or None; a
    text that is merely not valid YAML is left for `parse_yaml` to report."""
    try:
        _load_node(text, limits, construct=False)
    except YamlLimitError as exc:
        mark = exc.problem_mark
        return SourceProblem(path, mark.line + 1 if mark else None, f"refused: {exc.problem}")
    except yaml.YAMLError:
        return None
    return None


def yaml_load(text: str) -> Any:
    """The data of a YAML text, read with the limits (raises yaml.YAMLError)."""
    return _load_node(text)[1]


def parse_yaml(text: str, path: str, limits: YamlLimits = FILE_LIMITS) -> YamlDoc:
    try:
        node, data = _load_node(text, limits)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, YamlLimitError):
            raise SourceError([SourceProblem(path, line, f"refused: {problem}")]) from exc
        raise SourceError([SourceProblem(path, line, f"not valid YAML: {problem}")]) from exc
    except ValueError as exc:  # a date that does not exist (2025-02-30): PyYAML has no mark
        line = _impossible_date_line(text)
        raise SourceError(
            [SourceProblem(path, line, f"not a valid date: {exc}; expected YYYY-MM-DD")]
        ) from exc
    lines: dict[LinePath, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return YamlDoc(path=path, data=data, lines=lines, text=text)


_DATE = re.compile(r"(?<![\w.-])(\d{4})-(\d{1,2})-(\d{1,2})(?![\w.-]*\d{3,})")


def _impossible_date_line(text: str) -> int | None:
    """The first line holding a YYYY-MM-DD that is no calendar date."""
    for number, line in enumerate(text.splitlines(), start=1):
        for match in _DATE.finditer(line):
            try:
                date(*(int(g) for g in match.groups()))
            except ValueError:
                return number
    return None


def load_yaml(path: Path, limits: YamlLimits = FILE_LIMITS) -> YamlDoc:
    try:
        with path.open("rb") as f:
            raw = f.read(limits.bytes + 1)  # never more than the limit into memory
        if len(raw) > limits.bytes:
            size = path.stat().st_size
            raise SourceError(
                [
                    SourceProblem(
                        str(path), None, f"refused: {size:,} bytes; the limit is {limits.bytes:,}"
                    )
                ]
            )
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError([SourceProblem(str(path), None, f"cannot read the file: {exc}")]) from exc
    return parse_yaml(text, str(path), limits)


def _message(err: Any) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        name = err["loc"][-1] if err["loc"] else None
        return f"required field '{name}' is missing" if name is not None else "required field"
    if kind in ("literal_error", "enum"):
        return msg.replace("Input should be", "expected")
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        if pattern == NAME_PATTERN:
            return (
                f"{err['input']!r} is not a valid name; expected lower case letters, digits "
                "and _ . : - starting with a letter"
            )
        if pattern == RULE_NAME_PATTERN:
            return (
                f"{err['input']!r} is not a valid rule name; expected letters, digits and "
                "_ . : - (no spaces), starting with a letter or digit"
            )
    return msg


def data_path(data: Any, loc: tuple[Any, ...], base: LinePath = ()) -> LinePath:
    """The part of a pydantic location that exists in the data (union tags left out)."""
    path: list[str | int] = list(base)
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
        else:
            continue
        path.append(part)
    return tuple(path)


def errors_from_validation(
    doc: YamlDoc, exc: ValidationError, data: Any = None, base: LinePath = ()
) -> list[SourceProblem]:
    """SourceProblems for `exc`, raised validating `data` (default: the whole file) at `base`."""
    out = []
    target = doc.data if data is None else data
    for err in exc.errors(include_url=False):
        loc = data_path(target, tuple(err["loc"]), base)
        field = ".".join(str(p) for p in loc)
        where = f"{field}: " if field else ""
        out.append(SourceProblem(doc.path, doc.line_of(loc), f"{where}{_message(err)}"))
    return out


def not_mapping(doc: YamlDoc, what: str, example: str) -> SourceError | None:
    """The error for a file whose top level is no mapping (an empty file, a list …)."""
    if isinstance(doc.data, dict):
        return None
    found = "an empty file" if doc.data is None else f"a {type(doc.data).__name__}"
    return SourceError(
        [SourceProblem(doc.path, 1, f"{what} is a mapping ({example}), not {found}")]
    )


def load_model(path: Path, model: type[M], what: str, example: str) -> M:
    """Read a YAML file and validate it as `model`; every problem names its file and line."""
    doc = load_yaml(path)
    bad = not_mapping(doc, what, example)
    if bad:
        raise bad
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise SourceError(errors_from_validation(doc, exc)) from exc
