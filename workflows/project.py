"""ProjectWorkflow: one rollout project, id `project-<slug>`, from kick-off to the KPI review.

The project's state (`projects.state.ProjectState`) lives in the workflow. Every user action
is an Update whose validator calls the pure `validate_<op>` (a refusal rejects the update
with the reason and leaves no trace in history) and whose handler applies the pure `<op>` at
`workflow.now()`. `status` is a Query returning `projects.health.status_report`, so
`temporal workflow query --name status` works on a project too.

The main loop sleeps until the next reminder or escalation falls due (`next_wakeup`), or until
an update changes the project, then sends the due notices through an activity and records
them with `mark_sent` only once the activity succeeded. The activity gives every message a
dedupe key derived from the notice's key, so a notice re-sent after a worker restart is a
no-op in the outbox. After the go-live milestone plus the template's `review_weeks`, an
activity measures the KPIs in the store before and after go-live, and the review is kept
beside the state. The project ends when its last stage has finished and the KPI review is
recorded (or when a manager closes it). Long projects continue as new, carrying the state.

Changes that alter what a running project does are behind `workflow.patched()`, so a
project started on older code replays as it ran (tests/test_project_replay.py replays one):
- `project-controls-17`: update handlers apply the project's controls (who may check an
  item, start a stage early, close a severe risk; when a milestone may be done). Validators
  apply them always: they do not run on replay.
- `project-notices-17`: escalation levels keep their policy days, and a back-dated
  project's first notices are one summary per person.
Updates return a `ProjectChange` (what was recorded, by whom, on which day of the team's
clock, any override and its reason), not a sentence.

Its contracts (activity names, models) are in `crmflow.contracts.projects`.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from crmflow.contracts.projects import (
        MEASURE_PROJECT_KPIS,
        REFUSED,
        SEND_PROJECT_NOTICES,
        WORKFLOW_TYPE,
        CheckInput,
        CloseInput,
        DoneInput,
        KpiMeasurement,
        KpiMeasureRequest,
        KpiReviewRecord,
        MigrationCheckInput,
        MigrationCheckResult,
        NoticeBatch,
        ProjectCarry,
        ProjectChange,
        ProjectOutcome,
        ProjectSnapshot,
        RebaselineInput,
        RiskAddInput,
        RiskCloseInput,
        RiskUpdateInput,
        SignOffInput,
        StageInput,
    )
    from journeys.timing import local_instants, parse_clock, zone
    from projects import state as ops
    from projects.health import StatusReport, status_report
    from projects.kpi import baseline_window, review_date, review_kpis
    from projects.reminders import Notice, due_notices, next_wakeup
    from projects.state import (
        ProjectRuleError,
        ProjectState,
    )


CONTROLS_PATCH = "project-controls-17"  # issue 17: who may check, start, close; milestones
NOTICES_PATCH = "project-notices-17"  # issue 17: escalation days, one summary when back-dated


def _refuse(exc: Exception) -> ApplicationError:
    return ApplicationError(str(exc), type=REFUSED, non_retryable=True)


def _local_start(day: date, tz: str) -> datetime:
    """Midnight of `day` on the team's clock, as a UTC instant."""
    return local_instants(day, time(0, 0), zone(tz))[0].astimezone(UTC)


# --------------------------------------------------------------------------- the workflow


@workflow.defn(name=WORKFLOW_TYPE)
class ProjectWorkflow:
    @workflow.init
    def __init__(self, state: ProjectState, carry: ProjectCarry | None = None) -> None:
        # the input is taken here, not in `run`: an update that arrives with the first task
        # (of a new run after continue-as-new, say) is validated before `run` starts
        self.state = state
        self._carry = carry or ProjectCarry()
        self._status_cache: tuple[int, date, StatusReport] | None = None
        self._policy_days = False

    # ------------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, state: ProjectState, carry: ProjectCarry | None = None) -> ProjectOutcome:
        # escalations on their policy days and one summary for a back-dated project; a run
        # that began without them keeps sending as it did
        self._policy_days = workflow.patched(NOTICES_PATCH)
        while not self._finished():
            now = workflow.now()
            notices = due_notices(self.state, now, self._policy_days)
            if notices:
                await self._send(notices)
                continue
            review_at = self._review_at()
            if review_at is not None and review_at <= now:
                await self._review(now)
                continue
            if self._continue_as_new_due():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._carry.runs += 1
                workflow.continue_as_new(args=[self.state, self._carry])
            wake = min(
                (
                    t
                    for t in (next_wakeup(self.state, now, self._policy_days), review_at)
                    if t is not None
                ),
                default=None,
            )
            await self._sleep(wake - now if wake is not None else None)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ProjectOutcome(
            project_id=self.state.project_id,
            finished=self._complete(),
            closed_at=self._carry.closed_at,
            kpi_review=self._carry.kpi_review,
        )

    async def _sleep(self, timeout: timedelta | None) -> None:
        """Until `timeout` passes or an update changes the project."""
        revision = self._carry.revision
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._carry.revision != revision, timeout=timeout)

    def _complete(self) -> bool:
        """Every stage finished and, when the template has KPI targets, the review recorded."""
        st = self.state
        stages_done = all(st.stages[s.id].actual_finish is not None for s in st.plan.stages)
        return stages_done and (st.template.kpis is None or self._carry.kpi_review is not None)

    def _finished(self) -> bool:
        return self._carry.closed_at is not None or self._complete()

    def _continue_as_new_due(self) -> bool:
        info = workflow.info()
        limit = self._carry.history_limit
        if limit is not None and info.get_current_history_length() >= limit:
            return True
        return info.is_continue_as_new_suggested()

    async def _send(self, notices: list[Notice]) -> None:
        batch = NoticeBatch(project_id=self.state.project_id, notices=notices, at=workflow.now())
        sent: list[str] = await workflow.execute_activity(
            SEND_PROJECT_NOTICES,
            batch,
            result_type=list[str],
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=10)),
        )
        done = set(sent)
        covered = [k for n in notices if n.key in done for k in n.covers]
        ops.mark_sent(self.state, [*sent, *covered], workflow.now())

    def _go_live(self) -> date | None:
        review = self.state.template.kpis
        if review is None:
            return None
        ms = self.state.milestones.get(review.after_milestone)
        if ms is None or not ms.done or ms.at is None:
            return None
        return self.state.today(ms.at)

    def _review_at(self) -> datetime | None:
        """When the KPI review falls due: the review date at the reminders' time of day."""
        review, go_live = self.state.template.kpis, self._go_live()
        if review is None or go_live is None or self._carry.kpi_review is not None:
            return None
        at = parse_clock(self.state.template.reminders.send_at)
        day = review_date(review, go_live)
        return local_instants(day, at, zone(self.state.team.timezone))[0].astimezone(UTC)

    async def _review(self, now: datetime) -> None:
        review, go_live = self.state.template.kpis, self._go_live()
        assert review is not None and go_live is not None
        tz = self.state.team.timezone
        b_from, b_to = baseline_window(review, go_live)
        day = review_date(review, go_live)
        req = KpiMeasureRequest(
            metrics=[t.metric for t in review.targets],
            before_from=_local_start(b_from, tz),
            before_to=_local_start(b_to, tz),
            after_from=_local_start(go_live, tz),
            after_to=_local_start(day, tz),
        )
        measured: KpiMeasurement = await workflow.execute_activity(
            MEASURE_PROJECT_KPIS,
            req,
            result_type=KpiMeasurement,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=10)),
        )
        self._carry.kpi_review = KpiReviewRecord(
            recorded_at=workflow.now(),
            go_live=go_live,
            review_date=day,
            before_window=(b_from, b_to),
            after_window=(go_live, day),
            results=review_kpis(review, measured.before, measured.after),
        )
        self._changed()

    def _changed(self) -> None:
        self._carry.revision += 1
        self._status_cache = None

    def _open(self) -> None:
        """Refuse any change to a project that is over."""
        if self._carry.closed_at is not None:
            raise ApplicationError(
                f"project {self.state.name!r} was closed on "
                f"{self.state.today(self._carry.closed_at)} "
                f"by {self._carry.closed_by}",
                type=REFUSED,
                non_retryable=True,
            )
        if self._complete():
            raise ApplicationError(
                f"project {self.state.name!r} is complete", type=REFUSED, non_retryable=True
            )

    def _apply(self, fn: Any, *args: Any) -> Any:
        """Run a pure operation; a refusal becomes a non-retryable ApplicationError."""
        self._open()
        try:
            out = fn(self.state, *args)
        except (ProjectRuleError, ValueError, KeyError) as exc:
            raise _refuse(exc) from exc
        self._changed()
        return out

    def _check(self, fn: Any, *args: Any) -> None:
        self._open()
        try:
            fn(self.state, *args)
        except (ProjectRuleError, ValueError, KeyError) as exc:
            raise _refuse(exc) from exc

    # ------------------------------------------------------------------ queries

    @workflow.query
    def status(self, at: datetime | None = None) -> StatusReport:
        """Plan against actual, health and what is due next, at `at` (default: the
        workflow's time). Cached per change and day: health only depends on the date."""
        now = at or workflow.now()
        today = self.state.today(now)
        cached = self._status_cache
        if cached is not None and cached[0] == self._carry.revision and cached[1] == today:
            return cached[2]
        report = status_report(self.state, now)
        self._status_cache = (self._carry.revision, today, report)
        return report

    @workflow.query
    def extras(self) -> ProjectCarry:
        """The KPI review, whether and why the project was closed, runs so far."""
        return self._carry

    @workflow.query
    def project(self) -> ProjectSnapshot:
        return ProjectSnapshot(state=self.state, carry=self._carry, now=workflow.now())

    # ------------------------------------------------------------------ updates
    #
    # Validators always apply the project's controls (they do not run on replay). Handlers
    # apply them only under the CONTROLS patch: an action a project accepted before the
    # controls existed replays as it was recorded.

    def _strict(self) -> bool:
        return workflow.patched(CONTROLS_PATCH)

    def _result(
        self,
        action: str,
        ref: str,
        by: str,
        message: str,
        override: str | None = None,
        passed: bool | None = None,
    ) -> ProjectChange:
        return ProjectChange(
            action=action,
            ref=ref,
            by=by,
            on=self.state.today(workflow.now()),
            override=override,
            passed=passed,
            message=message,
        )

    @workflow.update
    def check(self, inp: CheckInput) -> ProjectChange:
        strict = self._strict()
        before = len(self.state.overrides)
        st = self._apply(
            ops.check_item, inp.item, inp.by, workflow.now(), inp.note, inp.override, strict
        )
        overrides = self.state.overrides[before:]
        text = f"checked {inp.item} ({st.by})"
        for o in overrides:
            text += f"; override ({o.rule}): {o.reason}"
        override = overrides[0].reason if overrides else None
        return self._result("check", inp.item, st.by or inp.by, text, override)

    @check.validator
    def _check_ok(self, inp: CheckInput) -> None:
        self._check(ops.validate_check_item, inp.item, inp.by, workflow.now(), inp.override)

    @workflow.update
    def done(self, inp: DoneInput) -> ProjectChange:
        strict = self._strict()
        st = self._apply(
            ops.complete_milestone, inp.milestone, inp.by, workflow.now(), inp.note, strict
        )
        by = st.by or inp.by
        return self._result("done", inp.milestone, by, f"milestone {inp.milestone} done ({by})")

    @done.validator
    def _done_ok(self, inp: DoneInput) -> None:
        self._check(ops.validate_complete_milestone, inp.milestone, inp.by, workflow.now())

    @workflow.update
    def signoff(self, inp: SignOffInput) -> ProjectChange:
        strict = self._strict()
        rec = self._apply(
            ops.sign_off, inp.gate, inp.by, workflow.now(), inp.comment, inp.role, strict
        )
        passed = self.state.gates[inp.gate].passed_at is not None
        text = f"{rec.person} signed {inp.gate} as {rec.role}" + (
            "; the gate has passed" if passed else ""
        )
        return self._result("signoff", inp.gate, rec.person, text, passed=passed)

    @signoff.validator
    def _signoff_ok(self, inp: SignOffInput) -> None:
        self._check(ops.validate_sign_off, inp.gate, inp.by, workflow.now(), inp.role)

    @workflow.update
    def risk_add(self, inp: RiskAddInput) -> ProjectChange:
        risk = self._apply(ops.add_risk, inp.risk, inp.by, workflow.now())
        by = risk.history[-1].by
        return self._result("risk_add", risk.id, by, f"risk {risk.id} added ({risk.severity})")

    @risk_add.validator
    def _risk_add_ok(self, inp: RiskAddInput) -> None:
        self._check(ops.validate_add_risk, inp.risk, inp.by, workflow.now())

    @workflow.update
    def risk_update(self, inp: RiskUpdateInput) -> ProjectChange:
        risk = self._apply(ops.update_risk, inp.risk_id, inp.change, inp.by, workflow.now())
        by = risk.history[-1].by
        return self._result("risk_update", risk.id, by, f"risk {risk.id} updated ({risk.severity})")

    @risk_update.validator
    def _risk_update_ok(self, inp: RiskUpdateInput) -> None:
        self._check(ops.validate_update_risk, inp.risk_id, inp.change, inp.by, workflow.now())

    @workflow.update
    def risk_close(self, inp: RiskCloseInput) -> ProjectChange:
        strict = self._strict()
        risk = self._apply(ops.close_risk, inp.risk_id, inp.by, workflow.now(), inp.comment, strict)
        by = risk.history[-1].by
        return self._result("risk_close", risk.id, by, f"risk {risk.id} closed")

    @risk_close.validator
    def _risk_close_ok(self, inp: RiskCloseInput) -> None:
        self._check(ops.validate_close_risk, inp.risk_id, inp.by, workflow.now(), inp.comment)

    @workflow.update
    def risk_reopen(self, inp: RiskCloseInput) -> ProjectChange:
        risk = self._apply(ops.reopen_risk, inp.risk_id, inp.by, workflow.now(), inp.comment)
        by = risk.history[-1].by
        return self._result("risk_reopen", risk.id, by, f"risk {risk.id} reopened")

    @risk_reopen.validator
    def _risk_reopen_ok(self, inp: RiskCloseInput) -> None:
        self._check(ops.validate_reopen_risk, inp.risk_id, inp.by, workflow.now())

    @workflow.update
    def rebaseline(self, inp: RebaselineInput) -> ProjectChange:
        base = self._apply(ops.rebaseline, inp.by, workflow.now(), inp.reason)
        return self._result(
            "rebaseline",
            str(base.number),
            base.by or inp.by,
            f"baseline {base.number} taken; finish {base.plan.finish}",
        )

    @rebaseline.validator
    def _rebaseline_ok(self, inp: RebaselineInput) -> None:
        self._check(ops.validate_rebaseline, inp.by, workflow.now())

    @workflow.update
    def start_stage(self, inp: StageInput) -> ProjectChange:
        strict = self._strict()
        st = self._apply(
            ops.start_stage, inp.stage, inp.by, workflow.now(), inp.on, inp.override, strict
        )
        text = f"stage {inp.stage} started on {st.actual_start}"
        if st.override:
            text += f"; override (dependencies still open): {st.override}"
        return self._result("start_stage", inp.stage, inp.by, text, st.override)

    @start_stage.validator
    def _start_stage_ok(self, inp: StageInput) -> None:
        self._check(
            ops.validate_start_stage, inp.stage, inp.by, workflow.now(), inp.on, inp.override
        )

    @workflow.update
    def finish_stage(self, inp: StageInput) -> ProjectChange:
        strict = self._strict()
        before = len(self.state.overrides)
        st = self._apply(
            ops.finish_stage, inp.stage, inp.by, workflow.now(), inp.on, inp.override, strict
        )
        text = f"stage {inp.stage} finished on {st.actual_finish}"
        override = None
        if len(self.state.overrides) > before:
            override = self.state.overrides[-1].reason
            text += f"; override (dependencies still open): {override}"
        return self._result("finish_stage", inp.stage, inp.by, text, override)

    @finish_stage.validator
    def _finish_stage_ok(self, inp: StageInput) -> None:
        self._check(
            ops.validate_finish_stage, inp.stage, inp.by, workflow.now(), inp.on, inp.override
        )

    @workflow.update
    def record_migration_check(self, inp: MigrationCheckInput) -> MigrationCheckResult:
        failures = self._apply(ops.record_migration_check, inp.summary)
        return MigrationCheckResult(passed=not failures, failures=failures)

    @record_migration_check.validator
    def _record_migration_check_ok(self, inp: MigrationCheckInput) -> None:
        self._check(ops.validate_record_migration_check, inp.summary)

    @workflow.update
    def close(self, inp: CloseInput) -> ProjectChange:
        self._open()
        person = self.state.team.person(inp.by)
        assert person is not None  # the validator made sure
        self._carry.closed_at = workflow.now()
        self._carry.closed_by = person.name
        self._carry.close_reason = inp.reason
        self._changed()
        return self._result(
            "close",
            self.state.project_id,
            person.name,
            f"project {self.state.name} closed by {person.name}",
        )

    @close.validator
    def _close_ok(self, inp: CloseInput) -> None:
        self._open()
        person = self.state.team.person(inp.by)
        if person is None:
            raise ApplicationError(
                f"{inp.by!r} is not on the project's team", type=REFUSED, non_retryable=True
            )
        if not set(person.roles) & set(ops.MANAGERS):
            raise ApplicationError(
                f"{person.name} holds {', '.join(person.roles)}; closing the project needs "
                "project_manager or executive_sponsor",
                type=REFUSED,
                non_retryable=True,
            )
