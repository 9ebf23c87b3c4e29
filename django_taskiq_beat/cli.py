"""The operator's command line: ``manage.py taskiq_beat SUBCOMMAND``.

Each subcommand is a function of the parsed options that writes to ``out`` and returns
the exit status; the management command only parses and dispatches. Every change goes
through ``SchedulerApp``. Output is a table for people and, with ``--json``, JSON for
scripts; a job id that does not exist is one line on stderr and exit status 1.
"""

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from django_taskiq_beat import overview
from django_taskiq_beat.app import SchedulerApp
from django_taskiq_beat.describe import declaration_text, describe_schedule, local_time, next_fire_times, relative_time
from django_taskiq_beat.exceptions import SchedulerValidationError
from django_taskiq_beat.health import run_checks
from django_taskiq_beat.models import SchedulerEngine, SchedulerJob, SchedulerRun
from django_taskiq_beat.policies import SchedulePolicy
from django_taskiq_beat.sync import sync_declared

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

OK, FAILED = 0, 1
_RECENT_RUNS = 10


class Output:
    """Where a subcommand writes: data to ``out``, problems to ``err``."""

    def __init__(self, out: "SupportsWrite[str]", err: "SupportsWrite[str]", as_json: bool) -> None:
        self.out, self.err, self.as_json = out, err, as_json

    def json(self, data: Any) -> None:
        self.out.write(json.dumps(data, indent=2, default=_json_value) + "\n")

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def problem(self, text: str) -> None:
        self.err.write(text + "\n")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        cells = [[str(value) for value in row] for row in rows]
        widths = [max([len(header), *(len(row[index]) for row in cells)]) for index, header in enumerate(headers)]
        for row in [list(headers), *cells]:
            self.line("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _ago(moment: datetime | None, now: datetime) -> str:
    return "–" if moment is None else relative_time(moment, now)


def _job_data(job: SchedulerJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "description": job.description,
        "task_name": job.task_name,
        "source": job.source,
        "declared_in": declaration_text(job) or None,
        "schedule": describe_schedule(job),
        "state": job.state.value,
        "kind": job.kind,
        "strategy": job.strategy,
        "trigger": job.trigger_payload,
        "args": job.task_args,
        "kwargs": job.task_kwargs,
        "labels": job.task_labels,
        "metadata": job.metadata_payload,
        "policy": SchedulePolicy.of(job).columns(),
        "remaining_runs": job.remaining_runs,
        "is_enabled": job.is_enabled,
        "next_run_at": job.next_run_at,
        "last_run_at": job.last_run_at,
        "finished_at": job.finished_at,
        "paused_at": job.paused_at,
        "pause_note": job.pause_note,
        "dispatch_count": job.dispatch_count,
        "dispatch_failures": job.dispatch_failures,
        "skipped_count": job.skipped_count,
        "last_error": job.last_error,
        "last_outcome": job.last_outcome,
        "consecutive_failures": job.consecutive_failures,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def _run_data(run: SchedulerRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "scheduled_for": run.scheduled_for,
        "status": run.status,
        "dispatched_at": run.dispatched_at,
        "outcome": run.outcome,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "error": run.error,
        "reason": run.reason,
        "held": run.is_held,
        "awaits_retry": run.awaits_retry,
    }


def _engine_data(engine: SchedulerEngine, dead_after: timedelta) -> dict[str, Any]:
    return {
        "id": engine.id,
        "state": engine.state(dead_after).value,
        "hostname": engine.hostname,
        "pid": engine.pid,
        "version": engine.version,
        "started_at": engine.started_at,
        "heartbeat_at": engine.heartbeat_at,
        "stopped_at": engine.stopped_at,
        "dispatched_count": engine.dispatched_count,
        "failed_dispatch_count": engine.failed_dispatch_count,
        "recovered_run_count": engine.recovered_run_count,
        "claim_conflict_count": engine.claim_conflict_count,
    }


# -- reading ------------------------------------------------------------------------------------------------


def status(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    """Engines and their heartbeats, jobs by state, what is due and overdue (``overview.snapshot``)."""
    now = timezone.now()
    dead_after = timedelta(seconds=app.config.engine_dead_after_seconds)
    seen = overview.snapshot(now)
    engines = [_engine_data(engine, dead_after) for engine in seen.engines]
    summary = {
        "total": seen.job_count,
        "by_state": seen.jobs_by_state,
        "due_now": seen.due_now,
        "next_due_at": seen.next_due_at,
        "overdue": seen.overdue.count,
        "oldest_overdue": seen.overdue.oldest_job_id,
    }
    if out.as_json:
        out.json({"engines": engines, "jobs": summary})
        return OK
    alive = Counter(engine["state"] for engine in engines)
    out.line(f"Engines: {alive['alive']} alive, {alive['dead']} dead, {alive['stopped']} stopped")
    if engines:
        out.table(
            ("ID", "STATE", "HOST", "PID", "VERSION", "HEARTBEAT", "STARTED", "SENT", "FAILED", "RECOVERED"),
            (
                (
                    engine["id"],
                    engine["state"],
                    engine["hostname"],
                    engine["pid"],
                    engine["version"],
                    _ago(engine["heartbeat_at"], now),
                    local_time(engine["started_at"]),
                    engine["dispatched_count"],
                    engine["failed_dispatch_count"],
                    engine["recovered_run_count"],
                )
                for engine in engines
            ),
        )
    out.line()
    late = seen.overdue
    oldest = f" (the oldest, {late.oldest_job_id}, due {_ago(late.oldest_slot, now)})" if late.count else ""
    out.line(
        f"Jobs: {seen.job_count} ({', '.join(f'{count} {state}' for state, count in seen.jobs_by_state.items())});"
        f" {seen.due_now} due now; {late.count} overdue by more than"
        f" {overview.OVERDUE_AFTER.total_seconds():g} s{oldest};"
        f" next due {_ago(seen.next_due_at, now) if seen.next_due_at else '–'}"
    )
    return OK


def health(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    """One line per check, stopping at the first that fails; exit status 1 if one did."""
    checks = run_checks(
        dead_after=timedelta(seconds=app.config.engine_dead_after_seconds),
        max_lag=timedelta(seconds=options["max_lag"]),
    )
    healthy = all(check.ok for check in checks)
    if out.as_json:
        out.json({"healthy": healthy, "checks": [vars(check) for check in checks]})
    else:
        for check in checks:
            out.line(f"{check.name}: {'OK' if check.ok else 'FAILED'} ({check.detail})")
    return OK if healthy else FAILED


def list_jobs(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    """The jobs, soonest first, optionally of one state or task."""
    jobs = SchedulerJob.objects.order_by("next_run_at", "id")
    if options["state"]:
        jobs = jobs.in_state(options["state"])
    if options["task"]:
        jobs = jobs.filter(task_name=options["task"])
    if options["limit"]:
        jobs = jobs[: options["limit"]]
    if out.as_json:
        out.json([_job_data(job) for job in jobs])
        return OK
    now = timezone.now()
    out.table(
        ("ID", "NAME", "TASK", "SCHEDULE", "STATE", "NEXT RUN", "LAST RUN", "SENT"),
        (
            (
                job.id,
                job.name or "",
                job.task_name,
                describe_schedule(job),
                job.state.value,
                _ago(job.next_run_at, now),
                _ago(job.last_run_at, now),
                job.dispatch_count,
            )
            for job in jobs.iterator()
        ),
    )
    return OK


def show(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    """One job: every column, its next fire times and its latest runs."""
    try:
        job = app.get_job(options["job_id"])
    except SchedulerValidationError as exc:
        out.problem(str(exc))
        return FAILED
    runs = list(job.runs.order_by("-scheduled_for")[:_RECENT_RUNS])
    upcoming = next_fire_times(job) if job.is_enabled else []
    if out.as_json:
        out.json({**_job_data(job), "next_fire_times": upcoming, "recent_runs": [_run_data(run) for run in runs]})
        return OK
    now = timezone.now()
    for key, value in _job_data(job).items():
        shown = local_time(value) if isinstance(value, datetime) else value
        out.line(f"{key + ':':22}{'–' if shown in (None, '') else shown}")
    out.line(f"{'next fire times:':22}{', '.join(local_time(moment) for moment in upcoming) or '–'}")
    out.line()
    if not runs:
        out.line("No runs yet.")
        return OK
    out.table(
        ("SCHEDULED FOR", "STATUS", "OUTCOME", "DISPATCHED", "ERROR OR REASON"),
        (
            (
                local_time(run.scheduled_for),
                run.shown_status,
                run.outcome or "–",
                _ago(run.dispatched_at, now),
                (run.error or run.reason or "")[:80],
            )
            for run in runs
        ),
    )
    return OK


# -- changing, through SchedulerApp ----------------------------------------------------------------------


def _each(job_ids: list[str], change: Callable[[str], Any], done: str, out: Output) -> int:
    """Apply ``change`` to each id on its own; a bad or missing id is one line on stderr."""
    status_code = OK
    for job_id in job_ids:
        try:
            change(job_id)
        except SchedulerValidationError as exc:
            out.problem(str(exc))
            status_code = FAILED
            continue
        out.line(f"{done} {job_id}")
    return status_code


def pause(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    return _each(options["job_ids"], lambda job_id: app.pause(job_id, note=options["note"]), "paused", out)


def resume(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    return _each(options["job_ids"], app.resume, "resumed", out)


def run_now(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    return _each(options["job_ids"], app.run_now, "due now:", out)


def delete(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    if not options["yes"]:
        out.problem("delete removes the jobs and their run history: add --yes to confirm.")
        return FAILED
    return _each(options["job_ids"], app.delete, "deleted", out)


def purge_runs(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    cutoff = timezone.now() - timedelta(days=options["older_than"])
    deleted = app.purge_runs(finished_before=cutoff)
    if out.as_json:
        out.json({"deleted": deleted, "finished_before": cutoff})
    else:
        out.line(f"deleted {deleted} run{'' if deleted == 1 else 's'} finished before {local_time(cutoff)}")
    return OK


def sync(app: SchedulerApp, options: dict[str, Any], out: Output) -> int:
    """Bring the jobs declared in code into the database: one line per job, then the errors (exit 1 if any)."""
    report = sync_declared(app, dry_run=options["dry_run"])
    if out.as_json:
        out.json(
            {
                "dry_run": report.dry_run,
                "jobs": [
                    {"job_id": item.job_id, "change": item.change, "declared_in": item.origin}
                    for item in report.changes
                ],
                "errors": [
                    {"job_id": error.job_id, "declared_in": error.origin, "error": str(error.error)}
                    for error in report.errors
                ],
            }
        )
    else:
        would = "would be " if report.dry_run else ""
        out.table(
            ("JOB", "CHANGE", "DECLARED IN"),
            (
                (item.job_id, would + item.change if item.change != "unchanged" else item.change, item.origin)
                for item in report.changes
            ),
        )
        out.line(("Dry run, nothing written: " if report.dry_run else "") + report.summary() + ".")
    for error in report.errors:
        out.problem(f"not synced: {error}")
    return FAILED if report.errors else OK


SUBCOMMANDS: dict[str, Callable[[SchedulerApp, dict[str, Any], Output], int]] = {
    "status": status,
    "health": health,
    "list": list_jobs,
    "show": show,
    "pause": pause,
    "resume": resume,
    "run-now": run_now,
    "delete": delete,
    "purge-runs": purge_runs,
    "sync": sync,
}
