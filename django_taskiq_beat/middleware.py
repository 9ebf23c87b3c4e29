"""``RunOutcomeMiddleware``: the worker reports whether a scheduled task really ran.

Add it to the broker (``broker.with_middlewares(RunOutcomeMiddleware())``). For every
task the scheduler sent (it carries the ``scheduler_run_id`` label; other tasks are
ignored) it writes to the run row: ``running`` with ``started_at`` when the worker
starts it, then ``succeeded``, ``failed`` (with the error) or ``retrying`` (taskiq's
retry middleware will send it again) with ``completed_at``; and the job's last outcome
and count of failures in a row.

Writes never move a run backwards (a late or repeated hook cannot turn ``succeeded``
back into ``running``), and a failure inside the middleware is logged and swallowed:
it must never cost the task its result or its acknowledgement.
"""

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import close_old_connections, connection, transaction
from django.db.models import F
from django.db.models.functions import Least
from django.utils import timezone
from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from django_taskiq_beat import logs
from django_taskiq_beat.bulk import begin_write
from django_taskiq_beat.sending import JOB_LABEL, RUN_LABEL

logger = logging.getLogger("django_taskiq_beat.middleware")

_FINAL = ("succeeded", "failed")


def reports_outcomes(broker: Any) -> bool:
    """Whether the broker's workers record outcomes (it has ``RunOutcomeMiddleware``)."""
    return any(isinstance(middleware, RunOutcomeMiddleware) for middleware in getattr(broker, "middlewares", []))


class RunOutcomeMiddleware(TaskiqMiddleware):
    """Records each scheduled run's outcome as the worker sees it."""

    def __init__(self) -> None:
        super().__init__()
        self._errors: dict[tuple[str, int], str] = {}  # attempt -> the exception on_error saw, for post_execute
        self._said_no_django = False

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        run_id = _run_id(message)
        if run_id is not None:
            await self._safely(message, _mark_running, run_id, timezone.now())
        return message

    async def on_error(self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException) -> None:
        if _run_id(message) is not None and not isinstance(exception, NoResultError):
            self._errors[_attempt(message)] = logs.describe_error(exception)

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        run_id = _run_id(message)
        if run_id is None:
            return
        error = self._errors.pop(_attempt(message), None)
        if isinstance(result.error, NoResultError):
            await self._safely(message, _mark_retrying, run_id, error)
        elif result.is_err:
            await self._safely(
                message, _mark_finished, run_id, "failed", timezone.now(), error or logs.describe_error(result.error)
            )
        else:
            await self._safely(message, _mark_finished, run_id, "succeeded", timezone.now(), None)

    async def _safely(self, message: TaskiqMessage, write: Callable[..., None], run_id: str, *args: Any) -> None:
        """Run a database write off the event loop; log and swallow whatever goes wrong.

        One line per failed write, naming the job and run; the traceback only at DEBUG (a database
        outage in the worker would otherwise print one per task and hook).
        """
        if not apps.ready:
            if not self._said_no_django:  # a setup mistake, not news at every task
                self._said_no_django = True
                logger.warning(
                    "RunOutcomeMiddleware needs Django set up in the worker (call "
                    "django_taskiq_beat.worker.setup_django in the broker's module); outcomes are not "
                    "recorded."
                )
            return
        try:
            await sync_to_async(_on_fresh_connection)(write, run_id, *args)
        except Exception as exc:
            job_id = str(message.labels.get(JOB_LABEL, "?"))
            logger.error(
                "Recording the outcome of job %s (run %s) failed: %s; the task itself is unaffected.",
                logs.job(job_id, task_name=message.task_name),
                run_id,
                logs.error_text(exc),
                exc_info=logs.traceback_at_debug(logger, exc),
                extra={**logs.job_extra(job_id, task_name=message.task_name), "run_id": run_id},
            )


def _attempt(message: TaskiqMessage) -> tuple[str, int]:
    """One execution: a retry reuses the task id (and taskiq's retry middleware rewrites the
    first message's labels), but every execution has its own message object."""
    return message.task_id, id(message)


def _run_id(message: TaskiqMessage) -> str | None:
    run_id = message.labels.get(RUN_LABEL)
    return str(run_id) if run_id else None


def _on_fresh_connection(write: Callable[..., None], *args: Any) -> None:
    # A worker has no request cycle: drop a connection the server closed. Not under an open
    # transaction, though: an in-process broker runs the task inside its sender's.
    if not connection.in_atomic_block:
        close_old_connections()
    write(*args)


def _unfinished(run_id: str) -> Any:
    """The run, unless it has a final outcome: no write moves a run backwards."""
    from django_taskiq_beat.models import SchedulerRun

    return SchedulerRun.objects.filter(pk=run_id).exclude(outcome__in=_FINAL)


def _mark_running(run_id: str, now: datetime) -> None:
    _unfinished(run_id).update(outcome="running", started_at=now, updated_at=now)


def _mark_retrying(run_id: str, error: str | None) -> None:
    _unfinished(run_id).update(outcome="retrying", error=error, updated_at=timezone.now())


def _mark_finished(run_id: str, outcome: str, now: datetime, error: str | None) -> None:
    """Store a final outcome on the run and its job, once.

    Takes SQLite's write lock before reading (a transaction that read first cannot write
    once an engine has committed), and writes the job before the run, as the engine does,
    so the two never deadlock on PostgreSQL.
    """
    from django_taskiq_beat.models import SchedulerJob
    from django_taskiq_beat.payloads import MAX_COUNT

    with transaction.atomic():
        begin_write()
        runs = _unfinished(run_id)
        job_id = runs.values_list("job_id", flat=True).first()
        if job_id is None:
            return  # unknown run, or its outcome was already recorded (a repeated delivery)
        failures = Least(F("consecutive_failures") + 1, MAX_COUNT) if outcome == "failed" else 0
        SchedulerJob.objects.filter(pk=job_id).update(last_outcome=outcome, consecutive_failures=failures)
        if not runs.update(outcome=outcome, completed_at=now, error=error, updated_at=now):
            transaction.set_rollback(True)  # a concurrent delivery recorded it first
            return
        if outcome == "failed":
            _pause_if_failing(job_id, now, error)


def _pause_if_failing(job_id: str, now: datetime, error: str | None) -> None:
    """The job's ``pause_after_failures``: once that many runs in a row failed, pause it (``resume`` counts anew)."""
    from django_taskiq_beat.models import PAUSED_WHILE_HELD, SchedulerJob, drop_held_slots
    from django_taskiq_beat.payloads import MAX_COUNT

    jobs = SchedulerJob.objects.filter(pk=job_id, is_enabled=True, pause_after_failures__isnull=False)
    row = jobs.values_list("consecutive_failures", "pause_after_failures", "name", "task_name").first()
    if row is None or row[1] is None or row[0] < row[1]:  # (row[1] is never None: filtered above)
        return
    failures, _, name, task_name = row
    note = f"Paused after {failures} failed runs in a row; the last: {logs.one_line(error or 'no error text')[:500]}"
    jobs.update(
        is_enabled=False,
        next_run_at=None,
        paused_at=now,
        pause_note=note,
        claimed_by=None,
        claimed_at=None,
        claim_expires_at=None,
        updated_at=now,
    )
    dropped = drop_held_slots(job_id, now, PAUSED_WHILE_HELD)
    if dropped:
        SchedulerJob.objects.filter(pk=job_id).update(skipped_count=Least(F("skipped_count") + dropped, MAX_COUNT))
    logger.warning(
        "Paused job %s after %d failed runs in a row (its pause_after_failures): %s",
        logs.job(job_id, name, task_name, None),
        failures,
        logs.one_line(error or ""),
        extra={**logs.job_extra(job_id, name, task_name, None), "consecutive_failures": failures},
    )
