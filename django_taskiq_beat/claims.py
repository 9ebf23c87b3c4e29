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

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F, QuerySet

from django_taskiq_beat.models import JobKind, RunStatus, SchedulerJob, SchedulerRun, new_id
from django_taskiq_beat.sending import describe_error
from django_taskiq_beat.triggers import PeriodicSchedule


@dataclass(frozen=True)
class Dispatch:
    """A claimed slot, ready to send: everything the engine needs without the ORM."""

    run_id: str
    job_id: str
    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    claimed_at: datetime  # the job's ``updated_at`` written by the claim: its version


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
        return timedelta(seconds=min(self.base_seconds * 2 ** max(failures - 1, 0), self.max_seconds))


def next_due_at() -> datetime | None:
    """The earliest slot of any enabled job (one index lookup)."""
    first = (
        SchedulerJob.objects.filter(is_enabled=True, next_run_at__isnull=False)
        .order_by("next_run_at")
        .values_list("next_run_at", flat=True)
        .first()
    )
    return first


def _lock_for_claiming(queryset: QuerySet[Any]) -> QuerySet[Any]:
    """Make concurrent claimers take disjoint rows; call inside the claim transaction."""
    if connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True, of=("self",))
    if connection.vendor == "sqlite":
        # Take SQLite's write lock before reading, so a second engine reads only after
        # this claim has committed (a no-op write is enough to open a write transaction).
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {SchedulerJob._meta.db_table} SET id = id WHERE 0 = 1")
    return queryset


def claim_due(scheduler_id: str, now: datetime, limit: int, lease: timedelta, retry: RetryPolicy) -> Claim:
    """Claim up to ``limit`` due slots: advance each job and write its pending run."""
    with transaction.atomic():
        due = SchedulerJob.objects.filter(is_enabled=True, next_run_at__lte=now).order_by("next_run_at")
        jobs = list(_lock_for_claiming(due)[:limit])
        runs, dispatches, failed = [], [], []
        for job in jobs:
            slot = job.next_run_at
            try:
                _advance(job, now)
            except Exception as exc:  # a corrupt stored trigger must not stop the batch
                failed.append(job.id)
                _fail_unreadable(job, slot, now, describe_error(exc), retry, runs)
                continue
            run = SchedulerRun(
                id=new_id(), job_id=job.id, scheduled_for=slot, status=RunStatus.PENDING,
                claimed_by=scheduler_id, lease_expires_at=now + lease, created_at=now, updated_at=now,
            )
            runs.append(run)
            dispatches.append(Dispatch(run.id, job.id, job.task_name, job.task_args, job.task_kwargs, now))
        SchedulerRun.objects.bulk_create(runs, ignore_conflicts=True)
        written = set(SchedulerRun.objects.filter(id__in=[run.id for run in runs]).values_list("id", flat=True))
        SchedulerJob.objects.bulk_update(
            jobs,
            ["next_run_at", "is_enabled", "finished_at", "updated_at", "last_error", "dispatch_failures"],
        )
    # A slot whose run already existed was dispatched by someone else: never send it twice.
    return Claim([d for d in dispatches if d.run_id in written], len(jobs), failed)


def _advance(job: SchedulerJob, now: datetime) -> None:
    """Move the job past the slot being claimed: the next slot, or finished."""
    trigger = job.trigger
    if job.kind == JobKind.PERIODIC:
        assert isinstance(trigger, PeriodicSchedule)
        job.next_run_at = trigger.next_after(max(now, job.next_run_at or now), job.created_at)
    else:
        job.next_run_at = None
    if job.next_run_at is None:
        job.is_enabled, job.finished_at = False, now
    job.updated_at = now


def _fail_unreadable(
    job: SchedulerJob, slot: datetime | None, now: datetime, error: str, retry: RetryPolicy, runs: list[SchedulerRun]
) -> None:
    job.dispatch_failures += 1
    job.last_error = error
    job.next_run_at = now + retry.delay(job.dispatch_failures)
    job.updated_at = now
    runs.append(SchedulerRun(
        id=new_id(), job_id=job.id, scheduled_for=slot or now, status=RunStatus.FAILED, error=error,
        finished_at=now, created_at=now, updated_at=now,
    ))


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
        Dispatch(run.id, run.job_id, run.job.task_name, run.job.task_args, run.job.task_kwargs, run.created_at)
        for run in runs
    ]


def extend_leases(scheduler_id: str, run_ids: list[str], until: datetime) -> None:
    """Keep the runs being sent ours while a slow broker takes its time."""
    SchedulerRun.objects.filter(id__in=run_ids, claimed_by=scheduler_id, status=RunStatus.PENDING).update(
        lease_expires_at=until
    )


def record(outcomes: list[Outcome], now: datetime, record_runs: bool, retry: RetryPolicy) -> None:
    """Store the outcomes on the runs and their jobs; failed slots get a retry."""
    with transaction.atomic():
        runs = [_finished_run(outcome) for outcome in outcomes]
        if record_runs:
            SchedulerRun.objects.bulk_update(
                runs, ["status", "dispatched_at", "finished_at", "broker_task_id", "error", "claimed_by",
                       "lease_expires_at", "updated_at"],
            )
        else:
            SchedulerRun.objects.filter(id__in=[run.id for run in runs]).delete()
        sent = []
        for outcome in outcomes:
            if outcome.error is None:
                job = SchedulerJob(id=outcome.dispatch.job_id)
                job.dispatch_count = F("dispatch_count") + 1  # type: ignore[assignment]
                job.last_run_at, job.last_dispatched_task_id = outcome.dispatched_at, outcome.dispatch.run_id
                job.last_error, job.dispatch_failures = None, 0
                sent.append(job)
            else:
                _schedule_retry(outcome, now, retry)
        SchedulerJob.objects.bulk_update(
            sent, ["dispatch_count", "last_run_at", "last_dispatched_task_id", "last_error", "dispatch_failures"]
        )


def _finished_run(outcome: Outcome) -> SchedulerRun:
    failed = outcome.error is not None
    return SchedulerRun(
        id=outcome.dispatch.run_id,
        status=RunStatus.FAILED if failed else RunStatus.DISPATCHED,
        dispatched_at=outcome.dispatched_at,
        finished_at=outcome.finished_at,
        broker_task_id=None if failed else outcome.dispatch.run_id,
        error=outcome.error,
        claimed_by=None,
        lease_expires_at=None,
        updated_at=outcome.finished_at,
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


def delete_jobs_finished_before(cutoff: datetime) -> int:
    """Completed one-offs (sent at least once, finished before ``cutoff``) and their runs."""
    finished = SchedulerJob.objects.filter(
        kind=JobKind.ONE_OFF, is_enabled=False, finished_at__lt=cutoff, dispatch_count__gt=0
    ).exclude(runs__status=RunStatus.PENDING)
    deleted, by_model = finished.delete()
    return by_model.get(SchedulerJob._meta.label, 0)
