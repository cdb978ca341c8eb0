"""The console's Rules pages over HTTP (a real server, SQLite and PostgreSQL): the deployed
versions newest first with an Activate button for the roles that may activate, activation
through the rules service (CSRF and permission checked, nothing changed when refused), what
changed between two versions (rules added, removed and changed, programme changes, all
escaped), and the tester: a customer's recent events to pick from, the rules that fire with
their effects and the others with why not, on the stored profile — storing nothing — and a
clear message naming the field for bad JSON or a bad event, never a 500."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from crmflow.ingest import import_file
from crmflow.services import rule_views
from crmflow.services import rules as rules_service
from crmflow.services.errors import Invalid
from crmflow.services.keys import NewKey, create_key
from crmflow.services.permissions import Role
from store.models import Base, ChangeLogRow, RuleVersionRow
from tests.console_helpers import ConsoleServer, csrf_of
from tests.rules_helpers import REPO, deploy_dir, rules_dir

# tables a console request itself writes (its session's last use, the change log)
NOT_BUSINESS = {"console_sessions", "change_log"}


def seed(engine: Engine, tmp_path: Path) -> tuple[str, str]:
    """The example customers and events under examples/rules (v1), then a second version
    (v2, active): earn rate 2, silver from 2,500, big-spender from 1,500, the sales rules
    gone and a VIP rule added whose description holds markup."""
    v1 = deploy_dir(engine, REPO / "examples/rules")
    import_file(engine, REPO / "examples/customers.jsonl", "customers")
    import_file(engine, REPO / "examples/events.jsonl", "events")
    two = tmp_path / "v2"
    shutil.copytree(REPO / "examples/rules", two / "rules")
    program = (REPO / "examples/program.yaml").read_text()
    program = program.replace("earn_rate: 1 ", "earn_rate: 2 ")
    program = program.replace("threshold: 2000}", "threshold: 2500}")
    (two / "program.yaml").write_text(program)
    tags = two / "rules/30-tags.yaml"
    tags.write_text(tags.read_text().replace("event.amount >= 1000", "event.amount >= 1500"))
    (two / "rules/50-sales.yaml").unlink()
    (two / "rules/60-vip.yaml").write_text(
        "rules:\n"
        "  - name: vip-order\n"
        '    description: "<script>alert(1)</script> orders of 5,000 & more"\n'
        "    priority: 60\n"
        "    on: purchase\n"
        "    when: event.amount >= 5000\n"
        "    then:\n"
        "      - add_tag: vip\n"
    )
    v2 = deploy_dir(engine, two / "rules")
    return v1, v2


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every business table, to show a request changed nothing."""
    with engine.connect() as conn:
        return {
            t.name: sorted((tuple(r) for r in conn.execute(select(t))), key=repr)
            for t in Base.metadata.sorted_tables
            if t.name not in NOT_BUSINESS
        }


def active(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.execute(
            select(RuleVersionRow.version).where(RuleVersionRow.active.is_(True))
        ).scalar_one()


def activate_forms(html: str) -> list[str]:
    return re.findall(r'action="/console/rules/versions/([^/"]+)/activate"', html)


# --------------------------------------------------------------------------- versions


def test_versions_newest_first_with_activate_only_for_who_may(
    console_server: ConsoleServer, engine: Engine, tmp_path: Path
) -> None:
    v1, v2 = seed(engine, tmp_path)
    with console_server.signed_in("marketer") as http:
        r = http.get("/console/rules")
        assert r.status_code == 200
        html = r.text
        assert html.index(v2) < html.index(v1), "newest first"
        assert "Acme Rewards" in html and "active" in html and "CLI" in html
        assert activate_forms(html) == [v1], "only the older version can be activated"
        assert f"/console/rules/diff?a={v1}&amp;b={v2}" in html  # its changes
        assert 'name="a"' in html and 'name="b"' in html  # the compare form
    with console_server.signed_in("viewer") as http:
        html = http.get("/console/rules").text
        assert v1 in html and v2 in html and 'name="a"' in html
        assert activate_forms(html) == [] and "Activate" not in html
        assert "/console/rules/test" in html
    for role in ("operator", "project_manager", "ingest"):
        with console_server.signed_in(role) as http:
            assert http.get("/console/rules").status_code == 403
            assert http.get("/console/rules/test").status_code == 403
    with httpx.Client(base_url=console_server.base) as anonymous:
        r = anonymous.get("/console/rules")
        assert r.status_code == 303 and "/console/login" in r.headers["location"]


def test_no_version_deployed_says_so(console_server: ConsoleServer) -> None:
    with console_server.signed_in("marketer") as http:
        assert "No rules version has been deployed yet" in http.get("/console/rules").text
        assert "nothing to test" in http.get("/console/rules/test").text
        assert "deploy another to compare" in http.get("/console/rules/diff").text


def test_activate_goes_through_the_service_with_csrf_and_permission(
    console_server: ConsoleServer, engine: Engine, tmp_path: Path
) -> None:
    v1, v2 = seed(engine, tmp_path)
    target = f"/console/rules/versions/{v1}/activate"
    with console_server.signed_in("viewer") as http:
        token = csrf_of(http.get("/console/rules").text)
        assert http.post(target, data={"csrf_token": token}).status_code == 403
    with console_server.signed_in("marketer") as http:
        assert http.post(target, data={}).status_code == 403  # no CSRF token
        assert http.post(target, data={"csrf_token": "forged"}).status_code == 403
        assert active(engine) == v2, "refused requests changed nothing"
        token = csrf_of(http.get("/console/rules").text)
        r = http.post(target, data={"csrf_token": token})
        assert r.status_code == 303 and r.headers["location"] == "/console/rules"
        assert active(engine) == v1
        after = http.get("/console/rules").text
        assert f"rules version {v1} is active" in after
        assert activate_forms(after) == [v2]
        gone = http.post(
            "/console/rules/versions/0123456789abcdef/activate", data={"csrf_token": token}
        )
        assert gone.status_code == 303
        assert "no rules version" in http.get("/console/rules").text
    with engine.connect() as conn:
        logged = conn.execute(
            select(ChangeLogRow.actor, ChangeLogRow.status).where(
                ChangeLogRow.target == target, ChangeLogRow.status == 303
            )
        ).all()
    assert logged == [("user:test-marketer", 303)]


# --------------------------------------------------------------------------- diff


def test_diff_shows_rules_added_removed_changed_and_programme_changes(
    console_server: ConsoleServer, engine: Engine, tmp_path: Path
) -> None:
    v1, v2 = seed(engine, tmp_path)
    with console_server.signed_in("viewer") as http:
        r = http.get("/console/rules/diff", params={"a": v1, "b": v2})
        assert r.status_code == 200
        html = r.text
        added = html[html.index('id="added"') : html.index('id="removed"')]
        assert "vip-order" in added
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in added and "<script>alert" not in html
        removed = html[html.index('id="removed"') : html.index('id="changed"')]
        assert "lead-sla-48h" in removed and "assign-hot-lead" in removed
        changed = html[html.index('id="changed"') : html.index('id="programme"')]
        assert "big-spender" in changed and "Changed: when" in changed
        assert '<span class="del">    - event.amount &gt;= 1000</span>' in changed
        assert '<span class="add">    - event.amount &gt;= 1500</span>' in changed
        assert "earn-on-purchase" not in changed, "an unchanged rule is not listed"
        programme = html[html.index('id="programme"') :]
        cells = re.sub(r"\s+", " ", programme)
        assert (
            '<code>points.earn_rate</code></td> <td data-label="Before"><code>1</code></td> '
            '<td data-label="After"><code>2</code></td>'
        ) in cells
        assert (
            '<code>silver.qualify.threshold</code></td> <td data-label="Before"><code>2000</code>'
            '</td> <td data-label="After"><code>2500</code></td>'
        ) in cells
        # nothing chosen: the newest against the one before it, preselected
        picker = http.get("/console/rules/diff").text
        assert f'<option value="{v1}" selected' in picker
        assert 'id="added"' not in picker
        same = http.get("/console/rules/diff", params={"a": v2, "b": v2}).text
        assert "the same version" in same
        missing = http.get("/console/rules/diff", params={"a": v1, "b": "nope"})
        assert missing.status_code == 404 and "no rules version &#39;nope&#39;" in missing.text
        assert http.get("/console/rules/diff", params={"a": "x" * 65, "b": v2}).status_code == 422


# --------------------------------------------------------------------------- tester


def test_tester_lists_a_customers_recent_events_and_prefills_one(
    console_server: ConsoleServer, engine: Engine, tmp_path: Path
) -> None:
    seed(engine, tmp_path)
    with console_server.signed_in("viewer") as http:
        html = http.get("/console/rules/test", params={"customer": "C0002"}).text
        assert "Recent events of C0002" in html
        assert "customer=C0002&amp;event=evt-00008" in html
        picked = http.get("/console/rules/test", params={"customer": "C0002", "event": "evt-00008"})
        assert picked.status_code == 200
        box = picked.text[picked.text.index('name="event"') :]
        assert "&#34;event_id&#34;: &#34;evt-00008&#34;" in box and "599" in box
        unknown = http.get("/console/rules/test", params={"customer": "C9999"}).text
        assert "no customer with id &#39;C9999&#39;" in unknown


def test_tester_shows_fired_rules_effects_and_why_others_do_not_and_stores_nothing(
    console_server: ConsoleServer, engine: Engine, tmp_path: Path
) -> None:
    v1, v2 = seed(engine, tmp_path)
    event = (
        '{"event_id": "console-t1", "type": "purchase", '
        '"occurred_at": "2026-11-20T10:00:00+08:00", "properties": {"amount": 1200}}'
    )
    for role in ("viewer", "marketer"):
        with console_server.signed_in(role) as http:
            token = csrf_of(http.get("/console/rules/test").text)
            before = snapshot(engine)  # signed in: the user's last sign-in is written
            r = http.post(
                "/console/rules/test",
                data={"csrf_token": token, "customer": "C0002", "version": "", "event": event},
            )
            assert r.status_code == 200, r.text
            html = r.text
            result = html[html.index('id="result"') :]
            assert v2 in result and "active" in result and "C0002" in result
            fired = result[: result.index("Not fired")]
            assert "earn-on-purchase" in fired and "event.amount</code> = 1,200" in fired
            assert "points: 2,880" in fired, "1,200 at earn rate 2 and silver's 1.2"
            not_fired = result[result.index("Not fired") :]
            assert "welcome-bonus" in not_fired and "listens to sign_up, not purchase" in not_fired
            assert "upgrade-on-spend" in not_fired
            assert "spend_365d &gt;= 8000 was false" in not_fired
            # the older version, chosen by hand
            older = http.post(
                "/console/rules/test",
                data={"csrf_token": token, "customer": "C0002", "version": v1, "event": event},
            ).text
            assert "not active" in older and "points: 1,440" in older
            assert snapshot(engine) == before, "the tester stored nothing"


@pytest.mark.parametrize(
    ("event", "status", "says"),
    [
        ("{not json", 422, "event: not valid JSON"),
        ("", 422, "paste an event as JSON"),
        ("[1, 2]", 422, "event[0]: an event is a JSON object"),
        ('{"event_id": "x", "type": "purchase"}', 422, "event.occurred_at: required field"),
        (
            '{"event_id": "x", "type": "purchase", "occurred_at": "yesterday"}',
            422,
            "event.occurred_at: Input should be a valid datetime",
        ),
        (
            '{"event_id": "x", "type": "purchase", "occurred_at": "2026-11-20T10:00:00Z",'
            ' "colour": "red"}',
            422,
            "event.colour: unknown field",
        ),
        ('{"amount": NaN}', 422, "NaN is not a JSON number"),
        ("[" * 5000 + "]" * 5000, 422, "event: "),
    ],
)
def test_tester_refuses_a_bad_event_naming_the_field(
    console_server: ConsoleServer,
    engine: Engine,
    tmp_path: Path,
    event: str,
    status: int,
    says: str,
) -> None:
    seed(engine, tmp_path)
    with console_server.signed_in("viewer") as http:
        token = csrf_of(http.get("/console/rules/test").text)
        r = http.post(
            "/console/rules/test",
            data={"csrf_token": token, "customer": "C0002", "version": "", "event": event},
        )
        assert r.status_code == status, r.text[-2000:]
        assert "The test did not run" in r.text and says in r.text.replace("&#39;", "'")
        assert 'id="result"' not in r.text


def test_tester_refuses_an_unknown_customer_or_version_and_a_form_without_csrf(
    console_server: ConsoleServer, engine: Engine, tmp_path: Path
) -> None:
    seed(engine, tmp_path)
    event = '{"event_id": "t", "type": "sign_in", "occurred_at": "2026-11-20T10:00:00Z"}'
    with console_server.signed_in("viewer") as http:
        token = csrf_of(http.get("/console/rules/test").text)
        nobody = http.post(
            "/console/rules/test",
            data={"csrf_token": token, "customer": "C9999", "event": event},
        )
        assert nobody.status_code == 404 and "no customer with id" in nobody.text
        no_version = http.post(
            "/console/rules/test",
            data={"csrf_token": token, "customer": "C0002", "version": "feedface", "event": event},
        )
        assert no_version.status_code == 404 and "no rules version" in no_version.text
        fresh = http.post(
            "/console/rules/test",
            data={
                "csrf_token": token,
                "customer": "",
                "event": event.replace('"type"', '"customer_id": "NEW1", "type"'),
            },
        )
        assert fresh.status_code == 200 and "NEW1" in fresh.text
        assert http.post("/console/rules/test", data={"event": event}).status_code == 403


def test_events_from_json_names_each_field_at_fault() -> None:
    with pytest.raises(Invalid) as bad:
        rule_views.events_from_json('[{"event_id": "a"}, {"type": 3}]')
    fields = {p.field for p in bad.value.problems}
    assert {"event[0].customer_id", "event[0].type", "event[1].event_id", "event[1].type"} <= fields
    one = rule_views.events_from_json(
        '{"event_id": "a", "type": "sign_in", "occurred_at": "2026-01-01T00:00:00Z"}', "C1"
    )
    assert one[0].customer_id == "C1"


def test_who_deployed_is_the_user_or_key_behind_an_api_deploy(
    console_server: ConsoleServer, engine: Engine, tmp_path: Path
) -> None:
    rt = console_server.runtime
    key = create_key(rt, NewKey(name="ci-pipeline", role=Role.marketer))
    for n, origin in enumerate(("api user:test-admin", f"api key:{key.key_id}", "api key:gone")):
        folder = rules_dir(tmp_path / str(n), RULE.format(n=n))
        rules_service.deploy(rt, rules_service.RulesFolder(folder=folder), origin)
    listed = rule_views.version_page(rt)
    assert [v.by for v in listed.versions] == ["key gone", "ci-pipeline", "Ada Admin"]
    with console_server.signed_in("viewer") as http:
        html = http.get("/console/rules").text
    assert "Ada Admin" in html and "ci-pipeline" in html


RULE = """rules:
  - name: rule-{n}
    on: purchase
    then:
      - add_tag: t{n}
"""
