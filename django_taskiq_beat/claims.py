"""The engine's storage work: set-based claims of due slots, outcomes, recovery, cleanup.

Everything here is synchronous ORM code run in one transaction per call; the engine
calls it through ``sync_to_async`` and never holds a transaction across an ``await``.

A claim advances the job to its next slot and writes the claimed slot's run row
(``pending``, with a lease) in the same transaction, before anything is sent. So a
process that dies after the claim loses nothing: once the lease expires, any engine
re-sends the pending run with the same id. Which engine claims which row is decided
by the database: ``FOR UPDATE SKIP LOCKED`` where it exists, SQLite's single writer
otherwise, and the unique key on (job, slot) as the last line of defence.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import QuerySet

from django_taskiq_beat import bulk
from django_taskiq_beat.models import JobKind, RunStatus, SchedulerJob, SchedulerRun, new_id
from django_taskiq_beat.sending import describe_error
from django_taskiq_beat.triggers import PeriodicSchedule, trigger_from_row


@dataclass(frozen=True)
class Dispatch:
    """A claimed slot, ready to send: everything the engine needs without the ORM."""

    run_id: str
    job_id: str
    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    claimed_at: datetime  # the job's ``updated_at`` written by the claim: its version
    scheduled_for: datetime  # the slot; a slot claimed ahead of time is sent when it comes


@dataclass(frozen=True)
class Outcome:
    """What happened when a claimed slot was sent."""

    dispatch: Dispatch
    dispatched_at: datetime | None
    finished_at: datetime
    error: str | None


@dataclass(frozen=True)
class Claim:
    dispatches: list[Dispatch]
    row_count: int  # rows taken, including those that failed before sending
    failed_job_ids: list[str]  # rows whose stored trigger could not be read


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    max_seconds: float

    def delay(self, failures: int) -> timedelta:
        """Capped exponential backoff: base, 2 x base, 4 x base ... up to the cap."""
        doublings = min(max(failures - 1, 0), 32)  # the cap is reached long before; no float overflow
        return timedelta(seconds=min(self.base_seconds * 2**doublings, self.max_seconds))


def _time_adapter() -> Callable[[datetime | None], Any]:
    """How the database backend stores a datetime (UTC text on SQLite); look it up once per batch."""
    return connection.ops.adapt_datetimefield_value


def next_due_at() -> datetime | None:
    """The earliest slot of any enabled job (one index lookup)."""
    return (
        SchedulerJob.objects.filter(is_enabled=True, next_run_at__isnull=False)
        .order_by("next_run_at")
        .values_list("next_run_at", flat=True)
        .first()
    )


def _lock_for_claiming(queryset: QuerySet[Any]) -> QuerySet[Any]:
    """Make concurrent claimers take disjoint rows; call inside the claim transaction."""
    if connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True, of=("self",))
    bulk.begin_write()  # SQLite: a second engine reads only after this claim has committed
    return queryset


_DUE_FIELDS = (
    "id", "task_name", "kind", "strategy", "trigger_payload", "task_args", "task_kwargs", "next_run_at",
    "created_at", "dispatch_failures",
)


@dataclass
class _DueJob:
    """The columns a claim reads: loaded with ``values_list``, cheaper than model instances."""

    id: str
    task_name: str
    kind: str
    strategy: str
    trigger_payload: Any
    task_args: list[Any]
    task_kwargs: dict[str, Any]
    next_run_at: datetime
    created_at: datetime
    dispatch_failures: int


def claim_due(
    scheduler_id: str, now: datetime, limit: int, lease: timedelta, retry: RetryPolicy,
    ahead: timedelta = timedelta(0),
) -> Claim:
    """Claim up to ``limit`` slots due by ``now + ahead``: advance each job and write its pending run."""
    with transaction.atomic():
        due = SchedulerJob.objects.filter(is_enabled=True, next_run_at__lte=now + ahead).order_by("next_run_at")
        jobs = [_DueJob(*row) for row in _lock_for_claiming(due).values_list(*_DUE_FIELDS)[:limit]]
        _time = _time_adapter()
        now_value, lease_value = _time(now), _time(now + lease)
        runs, job_updates, dispatches, failed = [], [], [], []
        for job in jobs:
            run_id = new_id()
            try:
                next_run_at = _next_slot(job, now)
            except Exception as exc:  # a corrupt stored trigger must not stop the batch
                failed.append(job.id)
                error = describe_error(exc)
                retry_at = now + retry.delay(job.dispatch_failures + 1)
                job_updates.append((job.id, _time(retry_at), True, None, now_value, error, job.dispatch_failures + 1))
                runs.append((run_id, job.id, _time(job.next_run_at), RunStatus.FAILED, None, None, error, now_value))
                continue
            job_updates.append((
                job.id, _time(next_run_at), next_run_at is not None, None if next_run_at else now_value, now_value,
                None, job.dispatch_failures,
            ))
            runs.append(
                (run_id, job.id, _time(job.next_run_at), RunStatus.PENDING, scheduler_id, lease_value, None, None)
            )
            dispatches.append(
                Dispatch(run_id, job.id, job.task_name, job.task_args, job.task_kwargs, now, job.next_run_at)
            )
        written = bulk.insert_ignoring_conflicts(
            "scheduler_run",
            ("id", "job_id", "scheduled_for", "status", "claimed_by", "lease_expires_at", "error", "finished_at",
             "created_at", "updated_at"),
            [(*run, now_value, now_value) for run in runs],
        )
        bulk.update_from_values(
            "scheduler_job",
            (("id", "varchar"), ("next_run_at", "timestamptz"), ("is_enabled", "boolean"),
             ("finished_at", "timestamptz"), ("updated_at", "timestamptz"), ("last_error", "text"),
             ("dispatch_failures", "integer")),
            "next_run_at = v.next_run_at, is_enabled = v.is_enabled, finished_at = v.finished_at,"
            " updated_at = v.updated_at, last_error = COALESCE(v.last_error, scheduler_job.last_error),"
            " dispatch_failures = v.dispatch_failures",
            job_updates,
        )
    # A slot whose run already existed was dispatched by someone else: never send it twice.
    return Claim([d for d in dispatches if d.run_id in written], len(jobs), failed)


def _next_slot(job: _DueJob, now: datetime) -> datetime | None:
    """The slot after the one being claimed; None when the job is done (a one-off, an ended window)."""
    trigger = trigger_from_row(job.kind, job.strategy, job.trigger_payload)
    if job.kind != JobKind.PERIODIC:
        return None
    assert isinstance(trigger, PeriodicSchedule)
    return trigger.next_after(max(now, job.next_run_at), job.created_at)


def claim_expired(scheduler_id: str, now: datetime, limit: int, lease: timedelta) -> list[Dispatch]:
    """Take over pending runs whose engine died (lease expired) so they are sent again."""
    with transaction.atomic():
        expired = SchedulerRun.objects.filter(status=RunStatus.PENDING, lease_expires_at__lt=now).order_by(
            "lease_expires_at"
        )
        runs = list(_lock_for_claiming(expired).select_related("job")[:limit])
        if not runs:
            return []
        SchedulerRun.objects.filter(id__in=[run.id for run in runs]).update(
            claimed_by=scheduler_id, lease_expires_at=now + lease, updated_at=now
        )
    return [
        Dispatch(
            run.id, run.job_id, run.job.task_name, run.job.task_args, run.job.task_kwargs, run.created_at,
            run.scheduled_for,
        )
        for run in runs
    ]


def extend_leases(scheduler_id: str, run_ids: list[str], until: datetime) -> None:
    """Keep the runs being sent ours while a slow broker takes its time."""
    SchedulerRun.objects.filter(id__in=run_ids, claimed_by=scheduler_id, status=RunStatus.PENDING).update(
        lease_expires_at=until
    )


def record(outcomes: list[Outcome], now: datetime, record_runs: bool, retry: RetryPolicy) -> None:
    """Store the outcomes on the jobs and their runs; failed slots get a retry.

    Jobs are written before runs, as a claim, a job delete, the job cleanup and the outcome
    middleware do, so two writers never wait on each other's locks in opposite orders.
    """
    _time = _time_adapter()
    sent: dict[str, list[Outcome]] = {}
    for outcome in sorted(outcomes, key=lambda outcome: outcome.dispatched_at or outcome.finished_at):
        if outcome.error is None:
            sent.setdefault(outcome.dispatch.job_id, []).append(outcome)
    with transaction.atomic():
        bulk.update_from_values(
            "scheduler_job",
            (("id", "varchar"), ("sent", "integer"), ("last_run_at", "timestamptz"),
             ("last_dispatched_task_id", "varchar")),
            "dispatch_count = scheduler_job.dispatch_count + v.sent, last_run_at = v.last_run_at,"
            " last_dispatched_task_id = v.last_dispatched_task_id, last_error = NULL, dispatch_failures = 0",
            [
                (job_id, len(job_outcomes), _time(job_outcomes[-1].dispatched_at), job_outcomes[-1].dispatch.run_id)
                for job_id, job_outcomes in sent.items()
            ],
        )
        for outcome in sorted(outcomes, key=lambda outcome: outcome.dispatch.job_id):
            if outcome.error is not None:
                _schedule_retry(outcome, now, retry)
        if record_runs:
            bulk.update_from_values(
                "scheduler_run",
                (("id", "varchar"), ("status", "varchar"), ("dispatched_at", "timestamptz"),
                 ("finished_at", "timestamptz"), ("broker_task_id", "varchar"), ("error", "text")),
                # A worker may already have reported the task's own error: a sent run keeps it.
                "status = v.status, dispatched_at = v.dispatched_at, finished_at = v.finished_at,"
                " broker_task_id = v.broker_task_id, error = COALESCE(v.error, scheduler_run.error),"
                " claimed_by = NULL, lease_expires_at = NULL, updated_at = v.finished_at",
                [_finished_run(outcome, _time) for outcome in outcomes],
            )
        else:
            SchedulerRun.objects.filter(id__in=[outcome.dispatch.run_id for outcome in outcomes]).delete()


def _finished_run(outcome: Outcome, _time: Callable[[datetime | None], Any]) -> tuple[Any, ...]:
    failed = outcome.error is not None
    return (
        outcome.dispatch.run_id,
        RunStatus.FAILED if failed else RunStatus.DISPATCHED,
        _time(outcome.dispatched_at),
        _time(outcome.finished_at),
        None if failed else outcome.dispatch.run_id,
        outcome.error,
    )


def _schedule_retry(outcome: Outcome, now: datetime, retry: RetryPolicy) -> None:
    """Retry a failed slot with backoff, never later than the job's next regular slot.

    A job changed since the claim (paused, upserted, run now) keeps what its
    operator set; only its error and failure count are updated.
    """
    job = SchedulerJob.objects.select_for_update().filter(pk=outcome.dispatch.job_id).first()
    if job is None:
        return
    job.dispatch_failures += 1
    job.last_error = outcome.error
    if job.updated_at == outcome.dispatch.claimed_at:
        retry_at = now + retry.delay(job.dispatch_failures)
        job.next_run_at = min(retry_at, job.next_run_at) if job.next_run_at else retry_at
        job.is_enabled, job.finished_at, job.updated_at = True, None, now
    job.save(update_fields=["dispatch_failures", "last_error", "next_run_at", "is_enabled", "finished_at", "updated_at"])


def delete_runs_finished_before(cutoff: datetime) -> int:
    deleted, _ = SchedulerRun.objects.filter(finished_at__lt=cutoff).exclude(status=RunStatus.PENDING).delete()
    return deleted


_DELETE_CHUNK = 500


def delete_jobs_finished_before(cutoff: datetime) -> int:
    """Completed one-offs (sent at least once, finished before ``cutoff``) and their runs.

    A chunk at a time, each job locked before its runs are deleted (the order every writer
    keeps); a job another writer holds is left for the next cleanup.
    """
    finished = SchedulerJob.objects.filter(
        kind=JobKind.ONE_OFF, is_enabled=False, finished_at__lt=cutoff, dispatch_count__gt=0
    ).exclude(runs__status=RunStatus.PENDING)
    deleted = 0
    while True:
        with transaction.atomic():
            job_ids = list(_lock_for_claiming(finished).values_list("id", flat=True)[:_DELETE_CHUNK])
            if not job_ids:
                return deleted
            _, by_model = SchedulerJob.objects.filter(pk__in=job_ids).delete()
        deleted += by_model.get(SchedulerJob._meta.label, 0)
