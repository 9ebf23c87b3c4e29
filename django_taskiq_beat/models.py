"""The two tables: ``scheduler_job`` (what to send and when) and ``scheduler_run`` (each send)."""

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

from django.db import DataError, OperationalError, models
from django.db.models.functions import Now
from django.utils import timezone

from django_taskiq_beat.bulk import begin_write
from django_taskiq_beat.conf import BACKFILL_CLAIMANT, WAITING_CLAIMANT
from django_taskiq_beat.exceptions import SchedulerValidationError
from django_taskiq_beat.payloads import MAX_COUNT
from django_taskiq_beat.triggers import Trigger, next_slot, trigger_from_row

_T = TypeVar("_T")


_UNREADABLE_ERRORS = (ValueError, TypeError, AttributeError, OverflowError, RecursionError, DataError)


def is_unreadable(error: Exception) -> bool:
    """Whether loading a row failed on a stored value rather than on the database itself.

    Django's SQLite converters raise on text that is not a date, psycopg on '-infinity' or
    a year past 9999, json on nesting too deep, and SQLite on text that is not UTF-8.
    """
    if isinstance(error, OperationalError):
        return "Could not decode to UTF-8" in str(error)
    return isinstance(error, _UNREADABLE_ERRORS)


def read_or(read: Callable[[], _T], unreadable: Callable[[Exception], _T]) -> _T:
    """``read()``; if it fails on a stored value (``is_unreadable``), ``unreadable(error)`` instead."""
    try:
        return read()
    except Exception as exc:
        if not is_unreadable(exc):
            raise
        return unreadable(exc)


def refuse_unreadable_job(job_id: str) -> Callable[[Exception], NoReturn]:
    """For ``read_or``: a job whose row cannot be read is refused with ``SchedulerValidationError``."""

    def refuse(error: Exception) -> NoReturn:
        raise SchedulerValidationError(
            "job_id",
            job_id,
            f"Its stored row cannot be read ({type(error).__name__}: {str(error)[:200]});"
            " fix the row in the database, or delete the job.",
        ) from None

    return refuse


def read_job(read: Callable[[], "SchedulerJob | None"], job_id: str) -> "SchedulerJob | None":
    """``read()`` of one job, refused with ``SchedulerValidationError`` if its row cannot be read.

    Besides values the driver refuses, a required column read as None is refused: MariaDB's
    zero date ``0000-00-00`` reads so, and the job would fail later, further from its cause.
    """
    job = read_or(read, refuse_unreadable_job(job_id))
    if job is not None:
        empty = [
            field.attname
            for field in job._meta.concrete_fields
            if not field.null and field.attname in job.__dict__ and getattr(job, field.attname) is None
        ]
        if empty:
            refuse_unreadable_job(job_id)(ValueError(f"{', '.join(empty)} read as nothing (a zero date?)"))
    return job


def new_id() -> str:
    return str(uuid.uuid4())


class JobKind(models.TextChoices):
    ONE_OFF = "one_off", "one-off"
    PERIODIC = "periodic", "periodic"


class JobStrategy(models.TextChoices):
    IMMEDIATE = "immediate", "immediate"
    ONE_OFF = "one_off", "one-off"
    INTERVAL = "interval", "interval"
    CRONTAB = "crontab", "crontab"


class JobSource(models.TextChoices):
    """Who declared the job: declared sources are kept in line by the sync, not edited in the admin."""

    API = "api", "API"
    ADMIN = "admin", "admin"
    SETTINGS = "settings", "settings"
    TASKIQ = "taskiq", "taskiq label"
    TASKIQ_DJANGO = "taskiq-django", "taskiq-django"


DECLARED_SOURCES = (JobSource.SETTINGS, JobSource.TASKIQ, JobSource.TASKIQ_DJANGO)


class RunStatus(models.TextChoices):
    PENDING = "pending", "pending"  # claimed, written, not yet handed to the broker
    DISPATCHED = "dispatched", "dispatched"
    FAILED = "failed", "failed"
    SKIPPED = "skipped", "skipped"  # not sent, by the job's policy: ``reason`` says why


class JobState(models.TextChoices):
    """What an operator sees: derived from the columns, never stored."""

    ACTIVE = "active", "active"
    FAILING = "failing", "failing"
    PAUSED = "paused", "paused"
    FINISHED = "finished", "finished"


_STATE_FILTERS = {
    JobState.ACTIVE: models.Q(is_enabled=True, dispatch_failures=0, consecutive_failures=0),
    JobState.FAILING: models.Q(is_enabled=True)
    & (models.Q(dispatch_failures__gt=0) | models.Q(consecutive_failures__gt=0)),
    JobState.PAUSED: models.Q(is_enabled=False, finished_at__isnull=True),
    JobState.FINISHED: models.Q(is_enabled=False, finished_at__isnull=False),
}


class SchedulerJobQuerySet(models.QuerySet["SchedulerJob"]):
    def in_state(self, state: str) -> "SchedulerJobQuerySet":
        return self.filter(_STATE_FILTERS[JobState(state)])

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state, in one aggregate query."""
        return self.aggregate(**{state.value: models.Count("pk", filter=_STATE_FILTERS[state]) for state in JobState})

    def due(self, moment: datetime) -> "SchedulerJobQuerySet":
        """Enabled jobs whose slot is at or before ``moment``."""
        return self.filter(is_enabled=True, next_run_at__lte=moment)

    def locked(self, job_id: str, *fields: str) -> "SchedulerJob | None":
        """The job (only ``fields``, if named), locked until the transaction ends: its row on
        PostgreSQL, SQLite's write lock (taken before the read, so the transaction can still write).

        A row holding a value the database driver cannot read raises ``SchedulerValidationError``.
        """
        begin_write()
        rows = self.select_for_update().filter(pk=job_id)
        return read_job((rows.only(*fields) if fields else rows).first, job_id)


class RunOutcome(models.TextChoices):
    """What the worker reported (with ``RunOutcomeMiddleware``); empty until it does."""

    UNKNOWN = "", "not reported"
    RUNNING = "running", "running"
    RETRYING = "retrying", "retrying"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"


class SchedulerJob(models.Model):
    """A task to send to the broker, with its trigger and its dispatch state.

    ``next_run_at`` is the next slot (NULL: nothing scheduled). ``finished_at`` marks a
    job with no slot left (a one-off that ran, a window that ended); ``resume`` and
    ``upsert`` leave such a job finished, ``run_now`` runs it once more.
    """

    id = models.CharField(primary_key=True, max_length=255, default=new_id)
    name = models.CharField(max_length=255, null=True, blank=True)
    description = models.TextField(null=True, blank=True)
    task_name = models.CharField(max_length=255, db_index=True)
    kind = models.CharField(max_length=16, choices=JobKind.choices)
    strategy = models.CharField(max_length=16, choices=JobStrategy.choices)
    trigger_payload = models.JSONField(default=dict)
    task_args = models.JSONField(default=list)
    task_kwargs = models.JSONField(default=dict)
    metadata_payload = models.JSONField(default=dict)
    task_labels = models.JSONField(
        default=dict, db_default={}, blank=True, help_text="Taskiq labels sent with every message of the job."
    )
    source = models.CharField(
        max_length=16, choices=JobSource.choices, default=JobSource.API, db_default=JobSource.API, db_index=True
    )
    declaration = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="The declaration in code as last synced; empty once it is no longer declared.",
    )
    overlap = models.CharField(
        max_length=16,
        choices=[("allow", "send anyway"), ("skip", "skip the slot"), ("buffer_one", "one slot waits")],
        default="allow",
        db_default="allow",
        help_text="A slot due while the previous run is unfinished: sent anyway, skipped, or held until it finishes.",
    )
    misfire_grace_seconds = models.FloatField(
        null=True, blank=True, help_text="A slot found later than this is skipped, not sent (empty: never)."
    )
    catch_up = models.CharField(
        max_length=8,
        choices=[("latest", "latest missed slot"), ("all", "every missed slot")],
        default="latest",
        db_default="latest",
        help_text="After an outage: one run for the latest missed slot, or one per missed slot.",
    )
    jitter_seconds = models.FloatField(
        default=0, db_default=0, help_text="Each slot is sent at a delay in [0, jitter), the same in every engine."
    )
    max_runs = models.PositiveIntegerField(
        null=True, blank=True, help_text="The job finishes after this many scheduled sends (run now does not count)."
    )
    remaining_runs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Scheduled sends left before max_runs is reached (empty: no limit)."
    )
    run_now_at = models.DateTimeField(
        null=True, blank=True, help_text="The slot of a pending 'run now': it does not count against max_runs."
    )
    pause_after_failures = models.PositiveIntegerField(
        null=True, blank=True, help_text="Pause the job after this many runs in a row that the worker reported failed."
    )
    skipped_count = models.PositiveIntegerField(
        default=0,
        db_default=0,
        help_text="Slots not sent by the job's policy (missed the grace, or overlapped its previous run).",
    )
    is_enabled = models.BooleanField(default=True)  # indexed with next_run_at (ix_scheduler_job_due)
    next_run_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Kept from taskiq-beat's schema, unindexed: leases live on the runs (``SchedulerRun.lease_expires_at``).
    claimed_by = models.CharField(max_length=128, null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(null=True, blank=True)
    last_dispatched_task_id = models.CharField(max_length=255, null=True, blank=True)
    dispatch_count = models.PositiveIntegerField(default=0)
    dispatch_failures = models.PositiveIntegerField(
        default=0, help_text="Failed sends in a row; sets the retry backoff."
    )
    last_outcome = models.CharField(
        max_length=16,
        choices=RunOutcome.choices,
        default=RunOutcome.UNKNOWN,
        db_default=RunOutcome.UNKNOWN,
        blank=True,
    )
    consecutive_failures = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Runs in a row that the worker reported failed."
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True, help_text="When an operator paused the job.")
    pause_note = models.TextField(null=True, blank=True, help_text="Why it was paused, as the operator said.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = SchedulerJobQuerySet.as_manager()

    class Meta:
        db_table = "scheduler_job"
        verbose_name = "scheduler job"
        # Every index is written again by each claim (it moves ``next_run_at``): only those a query reads.
        indexes = [models.Index(fields=["is_enabled", "next_run_at"], name="ix_scheduler_job_due")]

    def __str__(self) -> str:
        return self.name or self.id

    @property
    def is_declared(self) -> bool:
        """Declared in code: the sync keeps it in line with its declaration."""
        return self.source in DECLARED_SOURCES

    @property
    def is_finished(self) -> bool:
        return self.finished_at is not None

    @property
    def state(self) -> JobState:
        if self.is_finished:
            return JobState.FINISHED
        if not self.is_enabled:
            return JobState.PAUSED
        return JobState.FAILING if self.dispatch_failures or self.consecutive_failures else JobState.ACTIVE

    @property
    def trigger(self) -> Trigger:
        """The trigger rebuilt from the stored columns; raises on a corrupt payload."""
        return trigger_from_row(self.kind, self.strategy, self.trigger_payload)

    def arm(self, now: datetime) -> None:
        """Enable the job on its next slot after ``now``, or finish it when none is left (nor any run of max_runs)."""
        self.next_run_at = None if self.remaining_runs == 0 else next_slot(self.trigger, now, self.created_at)
        self.is_enabled = self.next_run_at is not None
        self.finished_at = None if self.is_enabled else (self.finished_at or now)
        self.unpause()
        self.release_claim()

    def disarm(self, now: datetime, note: str | None = None) -> None:
        """Pause the job without finishing it: no slot until it is resumed, a held one included.

        A stored job's held slots are recorded as skipped here (call with its row locked, then save it).
        """
        if self.is_enabled or self.paused_at is None:  # pausing again keeps when it began
            self.paused_at = now
        if note is not None or self.is_enabled:
            self.pause_note = note
        self.is_enabled = False
        self.next_run_at = None
        self.release_claim()
        if not self._state.adding:
            self.drop_held_slots(now, PAUSED_WHILE_HELD)

    def drop_held_slots(self, now: datetime, why: str) -> None:
        """Record the slots it holds (``overlap="buffer_one"``) as skipped; call with its row locked, then save it.

        For a job paused, or no longer holding slots: a held slot must not go out later on its own,
        say a day after a pause, when the job is resumed.
        """
        dropped = drop_held_slots(self.pk, now, why)
        self.skipped_count = min(self.skipped_count + dropped, MAX_COUNT)

    def unpause(self) -> None:
        self.paused_at = self.pause_note = None

    def release_claim(self) -> None:
        self.claimed_by = self.claimed_at = self.claim_expires_at = None


class SchedulerDashboard(SchedulerJob):
    """The admin's dashboard: a page of its own, listed with the app's screens. No table of its own."""

    class Meta:
        proxy = True
        verbose_name = verbose_name_plural = "dashboard"


PAUSED_WHILE_HELD = "the job was paused while the slot was held"


HELD = models.Q(status=RunStatus.PENDING, claimed_by=WAITING_CLAIMANT)
"""A slot its job's ``overlap="buffer_one"`` holds until the previous run finishes: shown as "waiting"."""
AWAITING_RETRY = models.Q(status=RunStatus.PENDING, claimed_by=BACKFILL_CLAIMANT, error__isnull=False)
"""A backfilled slot whose send failed, pending again until its retry is due: shown as "retry pending"."""
WAITING, RETRY_PENDING = "waiting", "retry pending"
SHOWN_STATUSES = (RunStatus.PENDING, WAITING, RETRY_PENDING, RunStatus.DISPATCHED, RunStatus.FAILED, RunStatus.SKIPPED)
"""The statuses as the admin and the CLI say them (``SchedulerRun.shown_status``), in a run's order."""


def drop_held_slots(job_id: str, now: datetime, why: str) -> int:
    """The job's held slots become skipped runs, ``why`` their reason; returns how many (see ``SchedulerJob``'s)."""
    return SchedulerRun.objects.filter(HELD, job_id=job_id).update(
        status=RunStatus.SKIPPED, reason=f"overlap: {why}", claimed_by=None, finished_at=now, updated_at=now
    )


class SchedulerRunQuerySet(models.QuerySet["SchedulerRun"]):
    def shown_as(self, shown_status: str) -> "SchedulerRunQuerySet":
        """The runs whose ``shown_status`` is this one: ``pending`` leaves the held and retry pending ones out."""
        if shown_status == WAITING:
            return self.filter(HELD)
        if shown_status == RETRY_PENDING:
            return self.filter(AWAITING_RETRY)
        if shown_status == RunStatus.PENDING:
            return self.filter(status=RunStatus.PENDING).exclude(HELD).exclude(AWAITING_RETRY)
        return self.filter(status=shown_status)


class SchedulerRun(models.Model):
    """One dispatch of a job's slot. Its id is the taskiq ``task_id`` of the message."""

    id = models.CharField(primary_key=True, max_length=36, default=new_id)
    # Indexed by the (job, slot) key and the (job, ...) indexes below, which lead with it.
    job = models.ForeignKey(SchedulerJob, on_delete=models.CASCADE, related_name="runs", db_index=False)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    scheduled_for = models.DateTimeField(db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    broker_task_id = models.CharField(max_length=255, null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    reason = models.TextField(
        null=True,
        blank=True,
        help_text="Why a skipped run was not sent, or a held one waits; 'backfilled' for a backfill's.",
    )
    claimed_by = models.CharField(max_length=128, null=True, blank=True)
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="A pending run whose lease has expired is re-sent by any engine."
    )
    outcome = models.CharField(  # db_default: the engine inserts runs with its own SQL
        max_length=16,
        choices=RunOutcome.choices,
        default=RunOutcome.UNKNOWN,
        db_default=RunOutcome.UNKNOWN,
        blank=True,
    )
    started_at = models.DateTimeField(null=True, blank=True, help_text="When the worker started the task.")
    completed_at = models.DateTimeField(null=True, blank=True, help_text="When the worker finished the task.")
    progress = models.JSONField(
        null=True, blank=True, help_text="A chain's state, written by its orchestrator: steps, attempts, outcome."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = SchedulerRunQuerySet.as_manager()

    class Meta:
        db_table = "scheduler_run"
        verbose_name = "scheduler run"
        constraints = [
            models.UniqueConstraint(fields=["job", "scheduled_for"], name="uq_scheduler_run_job_slot"),
        ]
        indexes = [
            models.Index(fields=["job", "finished_at"], name="ix_scheduler_run_job_finished"),
            models.Index(fields=["status", "finished_at"], name="ix_scheduler_run_status_fin"),
            # An overlap job's unfinished runs: (job, pending, no finished_at) and (job, dispatched, finished since).
            models.Index(fields=["job", "status", "finished_at"], name="ix_scheduler_run_job_state"),
        ]

    def __str__(self) -> str:
        """``Run of reports.daily for 2026-12-02 06:00:00 CET``: the admin's title for the run's page."""
        return f"Run of {self.job_id} for {timezone.localtime(self.scheduled_for).strftime('%Y-%m-%d %H:%M:%S %Z')}"

    @property
    def is_held(self) -> bool:
        """A slot its job's ``overlap="buffer_one"`` holds until the previous run finishes ("waiting")."""
        return self.status == RunStatus.PENDING and self.claimed_by == WAITING_CLAIMANT

    @property
    def awaits_retry(self) -> bool:
        """A backfilled slot whose send failed, pending again until its retry is due ("retry pending")."""
        return self.status == RunStatus.PENDING and self.claimed_by == BACKFILL_CLAIMANT and self.error is not None

    @property
    def shown_status(self) -> str:
        """The status as the admin and the CLI say it: ``waiting`` and ``retry pending`` for the pending runs that
        wait for something else than an engine."""
        return WAITING if self.is_held else RETRY_PENDING if self.awaits_retry else self.get_status_display()

    @property
    def duration(self) -> timedelta | None:
        """How long the worker took, once it reported both ends."""
        if self.started_at is None or self.completed_at is None:
            return None
        return self.completed_at - self.started_at


class EngineState(models.TextChoices):
    """What an operator sees of an engine: derived from its heartbeat, never stored."""

    ALIVE = "alive", "alive"
    DEAD = "dead", "dead"  # no heartbeat for ENGINE_DEAD_AFTER_SECONDS: killed, frozen or cut off
    STOPPED = "stopped", "stopped"  # exited cleanly


class DatabaseNow(Now):
    """The database's clock, in UTC as the columns are.

    Django's ``Now()`` is ``CURRENT_TIMESTAMP`` on MariaDB and MySQL: the session's local time,
    while Django stores and reads naive UTC there. On a server not set to UTC every heartbeat
    would be off by its offset, and jump at its daylight-saving changes.
    """

    def as_mysql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return self.as_sql(compiler, connection, template="UTC_TIMESTAMP(6)", **extra_context)


class SchedulerEngineQuerySet(models.QuerySet["SchedulerEngine"]):
    """``now`` may be ``DatabaseNow()``: engines write their heartbeats with the database's clock."""

    def alive(self, now: datetime | models.Func, dead_after: timedelta) -> "SchedulerEngineQuerySet":
        return self.filter(stopped_at__isnull=True, heartbeat_at__gte=now - dead_after)

    def gone(self, now: datetime | models.Func, dead_after: timedelta) -> "SchedulerEngineQuerySet":
        """Engines that stopped or whose heartbeat is older than ``dead_after``: their claims are free."""
        return self.filter(models.Q(stopped_at__isnull=False) | models.Q(heartbeat_at__lt=now - dead_after))

    def dead(self, now: datetime | models.Func, dead_after: timedelta) -> "SchedulerEngineQuerySet":
        return self.filter(stopped_at__isnull=True, heartbeat_at__lt=now - dead_after)

    def on_database_clock(self) -> "SchedulerEngineQuerySet":
        """Each engine with ``database_now``, so ``state`` judges it by the clock its heartbeats use."""
        return self.annotate(database_now=DatabaseNow())


class SchedulerEngine(models.Model):
    """One ``run_taskiq_beat`` process (or any started ``SchedulerApp``), as its heartbeats tell.

    The id is the engine's ``scheduler_id``, which its claims and leases carry. The counters
    are the engine's own since it started, written with each heartbeat.
    """

    id = models.CharField(primary_key=True, max_length=128)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    version = models.CharField(max_length=64)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    dispatched_count = models.PositiveBigIntegerField(default=0)
    failed_dispatch_count = models.PositiveBigIntegerField(default=0)
    recovered_run_count = models.PositiveBigIntegerField(default=0)
    claim_conflict_count = models.PositiveBigIntegerField(default=0)

    objects = SchedulerEngineQuerySet.as_manager()

    class Meta:
        db_table = "scheduler_engine"
        verbose_name = "scheduler engine"
        ordering = ("-heartbeat_at",)

    def __str__(self) -> str:
        return f"{self.id} ({self.hostname}:{self.pid})"

    def state(self, dead_after: timedelta) -> EngineState:
        """Alive, dead or stopped, by the database's clock when loaded ``on_database_clock()``."""
        if self.stopped_at is not None:
            return EngineState.STOPPED
        now = getattr(self, "database_now", None) or timezone.now()
        return EngineState.ALIVE if self.heartbeat_at >= now - dead_after else EngineState.DEAD
