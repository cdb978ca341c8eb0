"""The data-migration check, pure: legacy rows in, a report of what would migrate and how well.

Given the source rows (dicts, as `csv.DictReader` reads them), a mapping file and optionally
the rows already in the target, `check_migration` works out:
- record counts: rows in, rows that map cleanly (out) and rows rejected, with the reasons. A
  row is rejected when a required field is blank or its value is invalid; an invalid value in
  an optional field is reported and left empty, and the row still migrates;
- fill rate per mapped field: rows with a valid value / rows in;
- amount reconciliation: the sum of the amount field over every source row whose amount
  reads as a number, against the sum over the rows that migrate (and the target's sum when
  target rows are given): rejected rows show up as a difference;
- duplicates among the rows that migrate: rows sharing a normalised phone (E.164, with the
  mapping's default region) or a normalised e-mail are grouped (blocking on those keys, so
  no comparison of every row with every other); within a group the names are compared
  (difflib ratio): all similar means one person entered twice, otherwise a shared contact;
- invalid values per field with examples (row number, value, reason). Row numbers are the
  CSV's line numbers: the header is line 1, the first row line 2.

`MigrationReport.meets(thresholds)` says pass or fail with the reasons; `summary()` is what the
project's state keeps; `render_html` and `terminal_summary` present it.

A mapping file:

    default_region: CN
    amount_field: lifetime_spend
    name_field: name
    fields:
      - {source: Member Name, target: name, required: true}
      - {source: Mobile, target: phone, transforms: [strip, phone], required: true}
      - {source: Email, target: email, transforms: [strip, email]}
      - {source: Joined, target: member_since, transforms: [strip, date]}
      - {source: Spend, target: lifetime_spend, transforms: [strip, decimal]}
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from jinja2 import Environment
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from projects.models import (
    Id,
    MigrationPolicy,
    MigrationSummary,
    MigrationThresholds,
    Strict,
    migration_failures,
    policy_failures,
)
from rules.source import SourceError, SourceProblem, errors_from_validation, load_yaml

Transform = Literal[
    "strip", "lower", "upper", "title", "phone", "email", "date", "decimal", "integer"
]
MAX_EXAMPLES = 5


def _strip() -> list[Transform]:
    return ["strip"]


class FieldMap(Strict):
    source: str = Field(min_length=1, description="the source column")
    target: Id
    transforms: list[Transform] = Field(default_factory=_strip)
    required: bool = False


class MappingFile(Strict):
    fields: list[FieldMap] = Field(min_length=1)
    default_region: str = Field("CN", pattern=r"^[A-Z]{2}$", description="for phone numbers")
    date_formats: list[str] = Field(default_factory=lambda: ["%Y-%m-%d"], min_length=1)
    amount_field: Id | None = Field(None, description="target field summed for reconciliation")
    name_field: Id | None = Field(None, description="target field compared for similar names")
    name_similarity: float = Field(0.85, gt=0, le=1)

    @field_validator("fields")
    @classmethod
    def _unique(cls, v: list[FieldMap]) -> list[FieldMap]:
        targets = [f.target for f in v]
        dup = sorted({t for t in targets if targets.count(t) > 1})
        if dup:
            raise ValueError(f"target field {dup[0]!r} is mapped twice")
        return v

    @model_validator(mode="after")
    def _known(self) -> MappingFile:
        targets = {f.target: f for f in self.fields}
        for attr in ("amount_field", "name_field"):
            name = getattr(self, attr)
            if name is not None and name not in targets:
                raise ValueError(f"{attr} {name!r} is not a mapped target field")
        if self.amount_field and not {"decimal", "integer"} & set(
            targets[self.amount_field].transforms
        ):
            raise ValueError(f"amount_field {self.amount_field!r} needs a decimal transform")
        return self

    def field(self, transform: str) -> str | None:
        """The first target field with `transform` (the phone field, the e-mail field)."""
        return next((f.target for f in self.fields if transform in f.transforms), None)


def load_mapping(path: Path) -> MappingFile:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise SourceError(
            [SourceProblem(doc.path, 1, "a mapping file is a mapping (fields: [{source, target}])")]
        )
    try:
        return MappingFile.model_validate(doc.data)
    except ValidationError as exc:
        raise SourceError(errors_from_validation(doc, exc)) from exc


# --------------------------------------------------------------------------- transforms


class _Bad(ValueError):
    pass


def _phone(value: str, region: str) -> str:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise _Bad(f"not a phone number ({exc._msg})") from exc
    if not phonenumbers.is_valid_number(number):
        raise _Bad(f"not a valid phone number (region {region})")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _email(value: str) -> str:
    try:
        return str(validate_email(value, check_deliverability=False).normalized)
    except EmailNotValidError as exc:
        raise _Bad(f"not a valid e-mail address: {exc}") from exc


def _date(value: str, formats: list[str]) -> str:
    for fmt in formats:
        try:
            return datetime.strptime(value, fmt).date().isoformat()
        except ValueError:
            continue
    raise _Bad("not a date in the format " + " or ".join(formats))


_NUMBER = re.compile(r"^[+-]?(\d+|\d{1,3}(,\d{3})+)(\.\d+)?$")


def _decimal(value: str) -> Decimal:
    text = value.strip().replace(" ", "")
    if not _NUMBER.match(text):
        raise _Bad("not a number")
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation as exc:
        raise _Bad("not a number") from exc


def _integer(value: str) -> int:
    number = _decimal(value)
    if number != number.to_integral_value():
        raise _Bad("not a whole number")
    return int(number)


def _apply(field: FieldMap, raw: str, mapping: MappingFile) -> Any:
    steps: dict[str, Callable[[Any], Any]] = {
        "strip": lambda v: v.strip(),
        "lower": lambda v: v.lower(),
        "upper": lambda v: v.upper(),
        "title": lambda v: v.title(),
        "phone": lambda v: _phone(v, mapping.default_region),
        "email": _email,
        "date": lambda v: _date(v, mapping.date_formats),
        "decimal": _decimal,
        "integer": _integer,
    }
    value: Any = raw
    for t in field.transforms:
        value = steps[t](value)
    return value


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


# --------------------------------------------------------------------------- report


class InvalidValue(BaseModel):
    row: int
    value: str
    reason: str


class FieldReport(BaseModel):
    source: str
    required: bool
    filled: int
    fill_rate: float
    blank: int
    invalid: int
    examples: list[InvalidValue] = Field(default_factory=list)


class Rejected(BaseModel):
    row: int
    reasons: list[str]


class DuplicateGroup(BaseModel):
    rows: list[int]
    keys: list[str] = Field(description="the shared normalised phone numbers / e-mails")
    names: list[str]
    name_similarity: float | None = Field(None, description="lowest ratio to the first name")
    same_person: bool = Field(description="names similar (or none to compare)")


class MigrationReport(BaseModel):
    source: str
    checked_at: datetime
    rows_in: int
    rows_out: int
    rejected: list[Rejected]
    fields: dict[str, FieldReport]
    invalid_rows: int
    duplicates: list[DuplicateGroup]
    duplicate_rows: int
    amount_field: str | None = None
    amount_source: Decimal | None = None
    amount_mapped: Decimal | None = None
    amount_target: Decimal | None = None
    target_rows: int | None = None
    missing_columns: list[str] = Field(default_factory=list)
    rows: list[dict[str, Any]] = Field(default_factory=list, description="the rows that migrate")
    source_sha256: str | None = Field(None, description="SHA-256 of the source file's bytes")

    def summary(self) -> MigrationSummary:
        return MigrationSummary(
            checked_at=self.checked_at,
            source=self.source,
            rows_in=self.rows_in,
            rows_out=self.rows_out,
            rejected=len(self.rejected),
            fill_rates={k: f.fill_rate for k, f in self.fields.items()},
            duplicate_rows=self.duplicate_rows,
            invalid_rows=self.invalid_rows,
            amount_source=self.amount_source,
            amount_mapped=self.amount_mapped,
            amount_target=self.amount_target,
            source_sha256=self.source_sha256,
        )

    def passes(self, policy: MigrationPolicy) -> tuple[bool, list[str]]:
        """Whether the check opens the template's migration gate, with the reasons it does
        not: the thresholds, and the file the template names."""
        failures = self.missing_reasons() + policy_failures(self.summary(), policy)
        return not failures, failures

    def meets(self, thresholds: MigrationThresholds) -> tuple[bool, list[str]]:
        """Pass or fail against the template's thresholds, with the reasons it fails."""
        failures = self.missing_reasons() + migration_failures(self.summary(), thresholds)
        return not failures, failures

    def missing_reasons(self) -> list[str]:
        return [f"source column {c!r} is missing" for c in self.missing_columns]


def _name_key(name: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", name.casefold()).split())


def _groups(rows: list[tuple[int, dict[str, Any]]], mapping: MappingFile) -> list[DuplicateGroup]:
    keys = [k for k in (mapping.field("phone"), mapping.field("email")) if k]
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, Any], int] = {}
    shared: dict[int, set[str]] = {}
    for i, (_, row) in enumerate(rows):
        for k in keys:
            v = row.get(k)
            if v is None:
                continue
            j = first.setdefault((k, v), i)
            if j != i:
                parent[find(i)] = find(j)
                shared.setdefault(j, set()).add(str(v))
    members: dict[int, list[int]] = {}
    for i in range(len(rows)):
        members.setdefault(find(i), []).append(i)
    out = []
    for group in members.values():
        if len(group) < 2:
            continue
        names = (
            [str(rows[i][1].get(mapping.name_field) or "") for i in group]
            if (mapping.name_field)
            else []
        )
        ratio = None
        if names and all(names):
            ratio = min(
                difflib.SequenceMatcher(None, _name_key(names[0]), _name_key(n)).ratio()
                for n in names[1:]
            )
        group_keys = sorted({key for i in group for key in shared.get(i, set())})
        out.append(
            DuplicateGroup(
                rows=[rows[i][0] for i in group],
                keys=group_keys,
                names=names,
                name_similarity=round(ratio, 3) if ratio is not None else None,
                same_person=ratio is None or ratio >= mapping.name_similarity,
            )
        )
    out.sort(key=lambda g: g.rows[0])
    return out


def check_migration(
    rows: Iterable[Mapping[str, Any]],
    mapping: MappingFile,
    source: str,
    now: datetime,
    target_rows: Iterable[Mapping[str, Any]] | None = None,
    first_row_number: int = 2,
) -> MigrationReport:
    """Map and measure the source rows (see the module's docstring)."""
    src = [dict(r) for r in rows]
    columns = {c for r in src for c in r}
    missing = [f.source for f in mapping.fields if src and f.source not in columns]
    filled = {f.target: 0 for f in mapping.fields}
    blank = {f.target: 0 for f in mapping.fields}
    invalid: dict[str, list[InvalidValue]] = {f.target: [] for f in mapping.fields}
    rejected: list[Rejected] = []
    out: list[tuple[int, dict[str, Any]]] = []
    invalid_rows = 0
    amount_source: Decimal | None = Decimal(0) if mapping.amount_field else None
    amount_map = next((f for f in mapping.fields if f.target == mapping.amount_field), None)
    for n, row in enumerate(src, start=first_row_number):
        mapped: dict[str, Any] = {}
        reasons: list[str] = []
        bad_row = False
        for f in mapping.fields:
            raw = row.get(f.source)
            if _blank(raw):
                blank[f.target] += 1
                mapped[f.target] = None
                if f.required:
                    reasons.append(f"{f.target} is blank")
                continue
            try:
                value = _apply(f, str(raw), mapping)
            except _Bad as exc:
                bad_row = True
                invalid[f.target].append(InvalidValue(row=n, value=str(raw), reason=str(exc)))
                mapped[f.target] = None
                if f.required:
                    reasons.append(f"{f.target} {raw!r}: {exc}")
                continue
            mapped[f.target] = None if _blank(value) else value
            if mapped[f.target] is None:
                blank[f.target] += 1
            else:
                filled[f.target] += 1
        if amount_map is not None and amount_source is not None:
            raw = row.get(amount_map.source)
            if not _blank(raw):
                # an unreadable amount is counted as invalid above and summed on neither side
                with contextlib.suppress(_Bad):
                    amount_source += _decimal(str(raw))
        invalid_rows += bad_row
        if reasons:
            rejected.append(Rejected(row=n, reasons=reasons))
        else:
            out.append((n, mapped))
    rows_in = len(src)
    fields = {
        f.target: FieldReport(
            source=f.source,
            required=f.required,
            filled=filled[f.target],
            fill_rate=filled[f.target] / rows_in if rows_in else 0.0,
            blank=blank[f.target],
            invalid=len(invalid[f.target]),
            examples=invalid[f.target][:MAX_EXAMPLES],
        )
        for f in mapping.fields
    }
    duplicates = _groups(out, mapping)
    amount_mapped = None
    if mapping.amount_field:
        amount_mapped = sum(
            (
                Decimal(r[mapping.amount_field])
                for _, r in out
                if r[mapping.amount_field] is not None
            ),
            Decimal(0),
        )
    amount_target = target_count = None
    if target_rows is not None:
        target = [dict(r) for r in target_rows]
        target_count = len(target)
        if mapping.amount_field:
            amount_target = Decimal(0)
            for r in target:
                v = r.get(mapping.amount_field)
                if not _blank(v):
                    amount_target += _decimal(str(v))
    return MigrationReport(
        source=source,
        checked_at=now,
        rows_in=rows_in,
        rows_out=len(out),
        rejected=rejected,
        fields=fields,
        invalid_rows=invalid_rows,
        duplicates=duplicates,
        duplicate_rows=sum(len(g.rows) - 1 for g in duplicates),
        amount_field=mapping.amount_field,
        amount_source=amount_source,
        amount_mapped=amount_mapped,
        amount_target=amount_target,
        target_rows=target_count,
        missing_columns=missing,
        rows=[r for _, r in out],
    )


# --------------------------------------------------------------------------- presenting


def terminal_summary(
    report: MigrationReport, thresholds: MigrationThresholds | None = None
) -> dict[str, Any]:
    """The report's figures as a flat dict for the terminal (and --json)."""
    out: dict[str, Any] = {
        "source": report.source,
        "rows_in": report.rows_in,
        "rows_out": report.rows_out,
        "rejected": len(report.rejected),
        "fill_rates": {k: round(f.fill_rate, 4) for k, f in report.fields.items()},
        "invalid": {k: f.invalid for k, f in report.fields.items() if f.invalid},
        "invalid_rows": report.invalid_rows,
        "duplicate_groups": len(report.duplicates),
        "duplicate_rows": report.duplicate_rows,
        "amount_source": str(report.amount_source) if report.amount_source is not None else None,
        "amount_mapped": str(report.amount_mapped) if report.amount_mapped is not None else None,
        "amount_target": str(report.amount_target) if report.amount_target is not None else None,
        "missing_columns": report.missing_columns,
        "source_sha256": report.source_sha256,
    }
    if thresholds is not None:
        passed, reasons = report.meets(thresholds)
        out["passed"] = passed
        out["reasons"] = reasons
    return out


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Migration check: {{ r.source }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
.pass { color: #1a7f37; } .fail { color: #c62828; }
</style></head><body>
<h1>Migration check: {{ r.source }}</h1>
<p>Checked {{ r.checked_at.strftime("%Y-%m-%d %H:%M") }} UTC.
{% if r.source_sha256 %}Source SHA-256 <code>{{ r.source_sha256 }}</code>.{% endif %}
{% if verdict is not none %}
<strong class="{{ 'pass' if verdict else 'fail' }}">{{ 'PASS' if verdict else 'FAIL' }}</strong>
{% endif %}</p>
{% if reasons %}<ul>{% for x in reasons %}<li class="fail">{{ x }}</li>{% endfor %}</ul>{% endif %}
<h2>Records</h2>
<table><tr><th>rows in</th><th>rows out</th><th>rejected</th><th>rows with invalid values</th>
<th>duplicate rows</th>{% if r.target_rows is not none %}<th>target rows</th>{% endif %}</tr>
<tr><td>{{ r.rows_in }}</td><td>{{ r.rows_out }}</td><td>{{ r.rejected|length }}</td>
<td>{{ r.invalid_rows }}</td><td>{{ r.duplicate_rows }}</td>
{% if r.target_rows is not none %}<td>{{ r.target_rows }}</td>{% endif %}</tr></table>
{% if r.amount_field %}<h2>Amounts ({{ r.amount_field }})</h2>
<table><tr><th>source</th><th>migrated</th><th>difference</th>
{% if r.amount_target is not none %}<th>target</th>{% endif %}</tr>
<tr><td>{{ r.amount_source }}</td><td>{{ r.amount_mapped }}</td>
<td>{{ r.amount_source - r.amount_mapped }}</td>
{% if r.amount_target is not none %}<td>{{ r.amount_target }}</td>{% endif %}</tr></table>
{% endif %}
<h2>Fields</h2>
<table><tr><th>field</th><th>source column</th><th>required</th><th>fill rate</th><th>blank</th>
<th>invalid</th><th>examples</th></tr>
{% for name, f in r.fields.items() %}<tr><td>{{ name }}</td><td>{{ f.source }}</td>
<td>{{ 'yes' if f.required else '' }}</td><td>{{ '%.1f%%' % (f.fill_rate * 100) }}</td>
<td>{{ f.blank }}</td><td>{{ f.invalid }}</td><td>{% for e in f.examples %}
row {{ e.row }}: {{ e.value }} ({{ e.reason }})<br>{% endfor %}</td></tr>{% endfor %}</table>
{% if r.duplicates %}<h2>Duplicates</h2>
<table><tr><th>rows</th><th>shared</th><th>names</th><th>likely</th></tr>
{% for g in r.duplicates %}<tr><td>{{ g.rows|join(', ') }}</td><td>{{ g.keys|join(', ') }}</td>
<td>{{ g.names|join(' / ') }}</td>
<td>{{ 'same person' if g.same_person else 'shared contact' }}</td></tr>{% endfor %}
</table>{% endif %}
{% if r.rejected %}<h2>Rejected rows</h2>
<table><tr><th>row</th><th>reasons</th></tr>
{% for x in r.rejected %}<tr><td>{{ x.row }}</td><td>{{ x.reasons|join('; ') }}</td></tr>
{% endfor %}</table>{% endif %}
</body></html>
"""
_ENV = Environment(autoescape=True, keep_trailing_newline=True)


def render_html(
    report: MigrationReport,
    thresholds: MigrationThresholds | None = None,
    outcome: tuple[bool, list[str]] | None = None,
) -> str:
    """The report as an HTML page (every value escaped); `outcome`, the verdict and reasons
    when the caller judged more than the thresholds (the template's policy, the store)."""
    verdict: bool | None
    verdict, reasons = report.meets(thresholds) if thresholds is not None else (None, [])
    if outcome is not None:
        verdict, reasons = outcome
    return _ENV.from_string(_HTML).render(r=report, verdict=verdict, reasons=reasons)
