"""The engine's storage work: set-based claims of due slots, outcomes, recovery, cleanup.

Everything here is synchronous ORM code run in one transaction per call; the engine
calls it through ``sync_to_async`` and never holds a transaction across an ``await``.

A claim advances the job to its next slot and writes the claimed slot's run row
(``pending``, with a lease) in the same transaction, before anything is sent. So a
process that dies after the claim loses nothing: once its engine is found dead
(``registry``) or the lease expires, any engine re-sends the pending run with the same
id. Which engine claims which row is decided by the database: ``FOR UPDATE SKIP LOCKED``
where it exists, SQLite's single writer otherwise, and the unique key on (job, slot) as
the last line of defence.

The claim also counts the send on its job, so a send that goes through costs one write
of its run and none of its job; only a failed send writes the job again (``record``).
"""

from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import (
    BooleanField,
    Case,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    QuerySet,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Cast

from django_taskiq_beat import bulk, logs
from django_taskiq_beat.conf import BACKFILL_CLAIMANT, BACKFILLED, WAITING_CLAIMANT, SchedulerConfig
from django_taskiq_beat.logs import describe_error
from django_taskiq_beat.models import (
    HELD,
    DatabaseNow,
    JobKind,
    RunOutcome,
    RunStatus,
    SchedulerEngine,
    SchedulerJob,
    SchedulerRun,
    new_id,
    read_or,
)
from django_taskiq_beat.payloads import MAX_COUNT
from django_taskiq_beat.policies import (
    CATCH_UP_ALL,
    MAX_CATCH_UP_SLOTS,
    OVERLAP_ALLOW,
    OVERLAP_BUFFER_ONE,
    jitter_delay,
)
from django_taskiq_beat.triggers import PeriodicSchedule, trigger_from_text

_T = TypeVar("_T")
_D = TypeVar("_D")
_MAX_SLOTS_WALKED = 10_000
_STALE_RUN = timedelta(seconds=SchedulerConfig.stale_run_seconds)


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
    failures: int = 0  # the job's failed sends in a row at the claim: a failed send's retry backs off from it
    job_name: str | None = None  # for log lines
    next_slot: datetime | None = None  # the job's next regular slot after this one: no retry goes past it
    labels: dict[str, Any] = field(default_factory=dict)  # the job's taskiq labels
    send_at: datetime | None = None  # later than the slot by the job's jitter; None: at the slot
    counted: bool = False  # took one of the job's remaining_runs: a failed send gives it back for its retry
    late_on_purpose: bool = False  # a backfilled or held slot: its lag is not the engine's (no lag metric)
    # Already counted on its job as sent (by the claim, or the immediate dispatch, that wrote its run): a send
    # that goes through writes the job only to end a streak of failed sends (``failures``).
    counted_as_sent: bool = False
    # What the job showed as its last send (last_run_at, last_dispatched_task_id) before this one: a failed send
    # that the job still shows puts it back. None: not known here (a run taken over from a dead engine).
    previous: tuple[datetime | None, str | None] | None = None
    # When a take-over leased it (its ``claimed_at`` is then the first claim's); None: leased at ``claimed_at``.
    leased_at: datetime | None = None
    # A backfilled slot of an active job: not its job's next slot, so a failed send puts its run back to pending
    # until its backoff has passed (``record``), where the job's retry would move its next slot.
    retried_in_its_run: bool = False

    @property
    def shown_at(self) -> datetime:
        """The job's ``last_run_at`` for this send: when it goes, at its slot or after its jitter, or at once
        when claimed later than that."""
        return max(self.claimed_at, self.send_at or self.scheduled_for)


@dataclass(frozen=True)
class Unsent:
    """A slot the job's policy did not send at its claim: a ``skipped`` run, or a run held for the previous one."""

    run_id: str
    job_id: str
    task_name: str
    job_name: str | None
    scheduled_for: datetime
    reason: str


@dataclass(frozen=True)
class Outcome:
    """What happened when a claimed slot was sent; ``error`` is ``describe_error``'s storable text."""

    dispatch: Dispatch
    dispatched_at: datetime | None
    finished_at: datetime
    error: str | None


@dataclass(frozen=True)
class Claim:
    dispatches: list[Dispatch]
    row_count: int  # rows taken, including those that failed before sending
    # Rows that failed before sending, never sent: recorded with a retry by ``claim_due``; left to the caller's
    # ``record`` by ``claim_expired``, which has claimed their runs.
    failures: list[Outcome]
    conflicts: int = 0  # slots whose run another writer had recorded first (the unique key on job and slot)
    skips: list[Unsent] = field(default_factory=list)  # slots not sent by their job's policy (recorded)
    held: list[Unsent] = field(default_factory=list)  # slots waiting for their job's previous run (``buffer_one``)
    backfills: int = 0  # of ``dispatches`` (claim_expired): runs a backfill wrote, not runs of a dead engine
    backfill_retries: int = 0  # of ``backfills``: runs whose earlier send failed, tried again after their backoff
    released: int = 0  # of ``dispatches`` (claim_expired): held slots whose previous run has finished


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    max_seconds: float

    def delay(self, failures: int) -> timedelta:
        """Capped exponential backoff: base, 2 x base, 4 x base ... up to the cap."""
        doublings = min(max(failures - 1, 0), 32)  # the cap is reached long before; no float overflow
        return timedelta(seconds=min(self.base_seconds * 2**doublings, self.max_seconds))

    def retry_at(self, failed_at: datetime, failures: int, next_slot: datetime | None) -> datetime:
        """When a job that failed ``failures`` times in a row is tried again: never after its next regular slot.

        What ``record`` stores and what the engine's log line says.
        """
        retry_at = failed_at + self.delay(failures)
        return retry_at if next_slot is None or retry_at < next_slot else next_slot

    def send_again_at(self, outcome: Outcome) -> datetime:
        """When ``outcome``'s failed send is tried again: a scheduled slot never after the job's next one, a slot
        retried in its run (``Dispatch.retried_in_its_run``) whenever its backoff says."""
        dispatch = outcome.dispatch
        next_slot = None if dispatch.retried_in_its_run else dispatch.next_slot
        return self.retry_at(outcome.finished_at, dispatch.failures + 1, next_slot)


def _time_adapter() -> Callable[[datetime | None], Any]:
    """How the database backend stores a datetime (UTC text on SQLite); look it up once per batch."""
    return connection.ops.adapt_datetimefield_value


class UnusableRowError(ValueError):
    """A row holds values the engine cannot use: unreadable, or of the wrong type (written behind the API's back)."""


def _read(rows: QuerySet[Any], fields: Sequence[str], limit: int | None) -> list[tuple[Any, ...]]:
    """The first ``limit`` rows' ``fields`` (None: all), in one query.

    Every read of locked ``rows`` here selects the key too: Django's ``FOR UPDATE OF`` names only tables with a
    selected column, and without it a read of a joined job's columns would lock (or, skipping locked rows, miss)
    the job rows as well.

    Only if a stored value cannot be converted are the rows read one by one, a value that
    cannot be read becoming None, so that one bad row costs only itself (``_require_types``
    reports it). On PostgreSQL the conversion fails in the client after the server ran the
    query, so the transaction and its row locks stay usable.
    """

    def one_by_one(_: Exception) -> list[tuple[Any, ...]]:
        keys = list(rows.values_list("pk", flat=True)[:limit])
        return [_read_row(rows.filter(pk=key), fields) for key in keys]

    return read_or(lambda: list(rows.values_list(*fields)[:limit]), one_by_one)


def _read_row(row: QuerySet[Any], fields: Sequence[str]) -> tuple[Any, ...]:
    return read_or(row.values_list(*fields).get, lambda _: tuple(_read_value(row, field) for field in fields))


def _read_value(row: QuerySet[Any], field: str) -> Any:
    return read_or(lambda: row.values_list("pk", field).get()[1], lambda _: None)


def _require_types(rows: QuerySet[Any], key: str, values: Mapping[str, Any], types: Mapping[str, type]) -> None:
    """Raise ``UnusableRowError`` naming each column whose value is not of its type, with the stored text."""
    wrong = [name for name, kind in types.items() if not isinstance(values[name], kind)]
    if not wrong:
        return
    stored = rows.filter(pk=key).values_list("pk", *(Cast(name, TextField()) for name in wrong)).get()[1:]
    raise UnusableRowError(
        "; ".join(
            f"{name} holds {text!r}, not a {types[name].__name__}" for name, text in zip(wrong, stored, strict=True)
        )
    )


def _or(value: Any, kind: type[_T] | tuple[type[_T], ...], default: _D) -> _T | _D:
    """``value`` if it is a ``kind`` (a column read as expected), else ``default``."""
    return value if isinstance(value, kind) else default


def next_due_at() -> datetime | None:
    """The earliest slot of any enabled job (one index lookup).

    None when there is none, or when the earliest stored slot cannot be read: the engine
    then looks again after ``sync_interval_seconds``, and a claim reports the row once it is due.
    """
    earliest = (
        SchedulerJob.objects.filter(is_enabled=True, next_run_at__isnull=False)
        .order_by("next_run_at")
        .values_list("next_run_at", flat=True)
    )
    return read_or(earliest.first, lambda _: None)


def _lock_for_claiming(queryset: QuerySet[Any]) -> QuerySet[Any]:
    """Make concurrent claimers take disjoint rows; call inside the claim transaction."""
    if connection.features.has_select_for_update_skip_locked:
        of = ("self",) if connection.features.has_select_for_update_of else ()  # MariaDB locks every table read
        return queryset.select_for_update(skip_locked=True, of=of)
    bulk.begin_write()  # SQLite: a second engine reads only after this claim has committed
    return queryset


_DUE_TYPES = {
    "trigger_text": str,
    "task_args": list,
    "task_kwargs": dict,
    "next_run_at": datetime,
    "created_at": datetime,
    "dispatch_failures": int,
    "task_labels": dict,
    "catch_up": str,
    "overlap": str,
}


@dataclass
class _DueJob:
    """The columns a claim reads: loaded with ``values_list``, cheaper than model instances."""

    id: str
    task_name: str
    kind: str
    strategy: str
    trigger_text: str  # ``trigger_payload`` as its JSON text: decoded once per distinct payload (``trigger_from_text``)
    task_args: list[Any]
    task_kwargs: dict[str, Any]
    next_run_at: datetime
    created_at: datetime
    dispatch_failures: int
    name: str | None
    task_labels: dict[str, Any]
    overlap: str
    misfire_grace_seconds: float | None
    catch_up: str
    jitter_seconds: float
    remaining_runs: int | None
    run_now_at: datetime | None
    last_run_at: datetime | None
    last_dispatched_task_id: str | None
    busy: bool  # its overlap is not "allow" and it has an unfinished run (``_busy``)


_DUE_FIELDS = tuple(field.name for field in fields(_DueJob))


_FINAL_OUTCOMES = (RunOutcome.SUCCEEDED, RunOutcome.FAILED)
_STATES: dict[str, str] = {
    RunOutcome.UNKNOWN: "sent, not started",
    RunOutcome.RUNNING: "running",
    RunOutcome.RETRYING: "being retried",
}


def _unfinished(now: datetime, stale: timedelta) -> tuple[Q, Q]:
    """Runs that hold an ``overlap`` job's next slot, as two conditions that each read a range of the
    (job, finished_at) index: not sent yet (``pending``, a held slot included: no ``finished_at``), and
    sent with no final outcome from the worker less than ``stale`` ago."""
    not_sent = Q(status=RunStatus.PENDING, finished_at__isnull=True)
    going = Q(status=RunStatus.DISPATCHED, finished_at__gt=now - stale) & ~Q(outcome__in=_FINAL_OUTCOMES)
    return not_sent, going


@dataclass
class _Overlap:
    """An ``overlap`` job's unfinished runs as its claim goes through its slots: the latest going, the slot held."""

    going: tuple[datetime, str] | None = None  # its slot, and its state in words
    held: datetime | None = None

    def add(self, slot: datetime, status: str, outcome: str, claimed_by: str | None) -> None:
        if claimed_by == WAITING_CLAIMANT:
            self.held = slot
        elif self.going is None or slot > self.going[0]:
            self.going = (slot, "not sent yet" if status == RunStatus.PENDING else _STATES.get(outcome, outcome))

    @property
    def busy(self) -> bool:
        return self.going is not None or self.held is not None

    def previous(self) -> str:
        """``the previous run (14:03:05 UTC, running)``."""
        slot, state = self.going if self.going is not None else (self.held, "held, not sent yet")
        assert slot is not None
        return f"the previous run ({logs.when(slot)}, {state})"


def _busy(now: datetime, stale: timedelta) -> Case:
    """Whether a due job's ``overlap`` must look at its runs: it is not "allow" and it has an unfinished one.

    Read with the due jobs: two index range probes per such job; a job that allows overlap costs nothing.
    """
    not_sent, going = (
        SchedulerRun.objects.filter(condition, job_id=OuterRef("pk")) for condition in _unfinished(now, stale)
    )
    return Case(
        When(overlap=OVERLAP_ALLOW, then=Value(False)), When(Exists(not_sent), then=Value(True)), default=Exists(going)
    )


def _overlaps(jobs: list["_DueJob"], now: datetime, stale: timedelta) -> dict[str, _Overlap]:
    """Each ``overlap`` job's unfinished runs, read for the busy ones only (two queries, none if none is busy).

    All of them: an ``overlap`` job has few (one going, one held, a backfill's at most), and a cut-off
    read could leave out the very run that makes a job busy.
    """
    overlap = {job.id: _Overlap() for job in jobs if job.overlap != OVERLAP_ALLOW}
    busy = [job.id for job in jobs if job.busy is True]
    for condition in _unfinished(now, stale) if busy else ():
        runs = SchedulerRun.objects.filter(condition, job_id__in=busy)
        for job_id, slot, status, outcome, claimed_by in _read(
            runs, ("job_id", "scheduled_for", "status", "outcome", "claimed_by"), None
        ):
            if isinstance(slot, datetime):  # a slot written unreadable behind the API's back holds nothing
                overlap[job_id].add(slot, status, outcome, claimed_by)
    return overlap


def claim_due(
    scheduler_id: str,
    now: datetime,
    limit: int,
    lease: timedelta,
    retry: RetryPolicy,
    ahead: timedelta = timedelta(0),
    stale: timedelta = _STALE_RUN,
) -> Claim:
    """Claim up to ``limit`` jobs with a slot due by ``now + ahead``: advance each job and write its runs.

    The job's policy decides which of its due slots are handled (the latest missed one, or each
    one up to ``MAX_CATCH_UP_SLOTS``) and whether each is sent (a pending run), was found too
    late or while the previous run went on (a ``skipped`` run), or waits for that run (a pending
    run without a lease, held by ``WAITING_CLAIMANT``). A row that cannot be sent (a corrupt trigger, a stored value
    unreadable or of the wrong type) gets a failed run and a retry with backoff instead; the rest
    of the batch goes on.
    """
    with transaction.atomic(), bulk.native_timestamps():
        # An overlap job is not claimed ahead: whether its previous run has finished is judged when its slot is due.
        due = (
            SchedulerJob.objects.due(now + ahead)
            .filter(Q(overlap=OVERLAP_ALLOW) | Q(next_run_at__lte=now))
            .order_by("next_run_at")
            .annotate(busy=_busy(now, stale), trigger_text=Cast("trigger_payload", TextField()))
        )
        locked = _lock_for_claiming(due)
        jobs = [_DueJob(*row) for row in _read(locked, _DUE_FIELDS, limit)]
        _time = _time_adapter()
        now_value, lease_value = _time(now), _time(now + lease)
        overlaps = _overlaps(jobs, now, stale)
        runs: list[tuple[Any, ...]] = []  # scheduler_run rows, and the scheduler_job rows, as bulk writes them
        job_updates: list[tuple[Any, ...]] = []
        dispatches, failures, skips, held = [], [], [], []
        advanced: list[tuple[str, datetime | None, int, int | None]] = []  # job, next slot, failed sends, runs left
        counted_runs: dict[str, str] = {}  # run -> job, for runs that took one of their job's remaining_runs
        for job in jobs:
            try:
                _require_types(locked, job.id, vars(job), _DUE_TYPES)
                slots, next_run_at = _slots(job, now)
            except Exception as exc:  # a corrupt stored row must not stop the batch
                run_id = new_id()
                error = describe_error(exc)
                failed_before = _or(job.dispatch_failures, int, 0)
                failed_sends = min(failed_before + 1, MAX_COUNT)
                job_updates.append(
                    (
                        job.id,
                        _time(retry.retry_at(now, failed_sends, None)),
                        True,
                        None,
                        now_value,
                        error,
                        failed_sends,
                        0,
                        _or(job.remaining_runs, int, None),
                        0,
                        None,
                        None,
                    )
                )
                slot = _or(job.next_run_at, datetime, now)  # an unreadable slot fails at the claim's time
                runs.append((run_id, job.id, _time(slot), RunStatus.FAILED, None, None, error, None, now_value))
                unsent = Dispatch(run_id, job.id, job.task_name or "", [], {}, now, slot, failed_before, job.name)
                failures.append(Outcome(unsent, None, now, error))
                continue
            grace = _or(job.misfire_grace_seconds, (float, int), None)
            jitter = _or(job.jitter_seconds, (float, int), 0)
            remaining = _or(job.remaining_runs, int, None)
            previous = (_or(job.last_run_at, datetime, None), _or(job.last_dispatched_task_id, str, None))
            overlap = overlaps.get(job.id)
            for slot in slots:
                run_id = new_id()
                manual = slot == job.run_now_at  # a run now is always sent, and does not count against max_runs
                reason = None if manual else _skip_reason(now - slot, grace, job.overlap, overlap)
                if reason is not None:
                    runs.append((run_id, job.id, _time(slot), RunStatus.SKIPPED, None, None, None, reason, now_value))
                    skips.append(Unsent(run_id, job.id, job.task_name, job.name, slot, reason))
                    continue
                if not manual and remaining is not None:
                    if remaining == 0:
                        continue
                    remaining -= 1
                    counted_runs[run_id] = job.id
                if overlap is not None and overlap.busy and not manual:  # buffer_one: the first slot waits
                    reason = f"held until {overlap.previous()} finishes"
                    runs.append(
                        (run_id, job.id, _time(slot), RunStatus.PENDING, WAITING_CLAIMANT, None, None, reason, None)
                    )
                    held.append(Unsent(run_id, job.id, job.task_name, job.name, slot, reason))
                    overlap.held = slot
                    continue
                runs.append(
                    (run_id, job.id, _time(slot), RunStatus.PENDING, scheduler_id, lease_value, None, None, None)
                )
                delay = jitter_delay(job.id, slot, jitter)
                dispatches.append(
                    Dispatch(
                        run_id,
                        job.id,
                        job.task_name,
                        job.task_args,
                        job.task_kwargs,
                        now,
                        slot,
                        job.dispatch_failures,
                        job.name,
                        next_run_at,
                        job.task_labels,
                        slot + delay if delay else None,
                        run_id in counted_runs,
                        counted_as_sent=True,
                        previous=previous,
                    )
                )
                previous = (dispatches[-1].shown_at, run_id)  # what the job shows once this one is counted
                if overlap is not None:
                    overlap.add(slot, RunStatus.PENDING, RunOutcome.UNKNOWN, scheduler_id)
            advanced.append((job.id, next_run_at, job.dispatch_failures, remaining))
        written = bulk.insert_ignoring_conflicts(
            "scheduler_run",
            _run_columns(
                "id",
                "job_id",
                "scheduled_for",
                "status",
                "claimed_by",
                "lease_expires_at",
                "error",
                "reason",
                "finished_at",
                "created_at",
                "updated_at",
            ),
            [(*run, now_value, now_value) for run in runs],
        )
        # A slot whose run already existed (another engine, a backfill) is neither sent here nor counted.
        not_counted = Counter(job_id for run_id, job_id in counted_runs.items() if run_id not in written)
        skipped = Counter(skip.job_id for skip in skips if skip.run_id in written)
        sends: dict[str, list[Dispatch]] = {}
        for dispatch in dispatches:
            if dispatch.run_id in written:
                sends.setdefault(dispatch.job_id, []).append(dispatch)
        for job_id, next_run_at, dispatch_failures, remaining in advanced:
            if remaining is not None:
                remaining += not_counted[job_id]
                if remaining == 0:  # max_runs reached: finished
                    next_run_at = None
            sent = sends.get(job_id, [])
            latest = sent[-1] if sent else None
            job_updates.append(
                (
                    job_id,
                    _time(next_run_at),
                    next_run_at is not None,
                    None if next_run_at else now_value,
                    now_value,
                    None,
                    dispatch_failures,
                    skipped[job_id],
                    remaining,
                    len(sent),
                    _time(latest.shown_at) if latest else None,
                    latest.run_id if latest else None,
                )
            )
        # The sends are counted here, as if they will go through: ``record`` writes the job again for a failed
        # one, taking its count back and putting back what it had shown as the job's last send, and for one
        # that ends a streak of failed sends, which stays on the job (error, count, backoff) until then.
        bulk.update_from_values(
            "scheduler_job",
            (
                ("id", "varchar"),
                ("next_run_at", "timestamptz"),
                ("is_enabled", "boolean"),
                ("finished_at", "timestamptz"),
                ("updated_at", "timestamptz"),
                ("last_error", "text"),
                ("dispatch_failures", "integer"),
                ("skipped", "integer"),
                ("remaining_runs", "integer"),
                ("sent", "integer"),
                ("last_run_at", "timestamptz"),
                ("last_dispatched_task_id", "varchar"),
            ),
            (
                ("next_run_at", "v.next_run_at"),
                ("is_enabled", "v.is_enabled"),
                ("finished_at", "v.finished_at"),
                ("updated_at", "v.updated_at"),
                (
                    "last_error",
                    "CASE WHEN v.sent > 0 AND v.dispatch_failures = 0 THEN NULL"
                    " ELSE COALESCE(v.last_error, scheduler_job.last_error) END",
                ),
                ("dispatch_failures", "v.dispatch_failures"),
                ("skipped_count", _added("skipped_count", "v.skipped")),
                ("remaining_runs", "v.remaining_runs"),
                ("run_now_at", "NULL"),
                ("dispatch_count", _added("dispatch_count", "v.sent")),
                ("last_run_at", "COALESCE(v.last_run_at, scheduler_job.last_run_at)"),
                (
                    "last_dispatched_task_id",
                    "COALESCE(v.last_dispatched_task_id, scheduler_job.last_dispatched_task_id)",
                ),
            ),
            job_updates,
        )
    sent = [d for d in dispatches if d.run_id in written]
    return Claim(
        sent,
        len(jobs),
        failures,
        len(dispatches) - len(sent),
        [skip for skip in skips if skip.run_id in written],
        [slot for slot in held if slot.run_id in written],
    )


def _skip_reason(late: timedelta, grace: float | None, policy: str, overlap: _Overlap | None) -> str | None:
    """Why a scheduled slot is not sent (found too late, or due while the previous run goes on); None: it goes."""
    if grace is not None and late > timedelta(seconds=grace):
        return f"missed by {logs.seconds(late.total_seconds())} (misfire grace {logs.seconds(grace)})"
    if overlap is None or not overlap.busy:
        return None
    if policy != OVERLAP_BUFFER_ONE:
        return f"overlap: {overlap.previous()} had not finished"
    if overlap.held is not None:
        return f"overlap: the slot of {logs.when(overlap.held)} already waits for the previous run"
    return None


_RUN_TYPES = {
    "id": "varchar",
    "job_id": "varchar",
    "scheduled_for": "timestamptz",
    "status": "varchar",
    "claimed_by": "varchar",
    "lease_expires_at": "timestamptz",
    "error": "text",
    "reason": "text",
    "finished_at": "timestamptz",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
}


def _run_columns(*names: str) -> list[tuple[str, str]]:
    """``scheduler_run`` columns as (name, SQL type) pairs, for ``bulk.insert_ignoring_conflicts``."""
    return [(name, _RUN_TYPES[name]) for name in names]


def _slots(job: _DueJob, now: datetime) -> tuple[list[datetime], datetime | None]:
    """The slots this claim handles, oldest first, and the job's next slot after them (None: it is done).

    A one-off has its one slot, and a "run now" its own. A periodic job has every slot from its stored one up to now
    (or that slot, if it is claimed ahead): the latest of them with ``catch_up="latest"``, the
    latest ``MAX_CATCH_UP_SLOTS`` with ``"all"``. Walking a long outage's slots stops after
    ``_MAX_SLOTS_WALKED``; the job then goes on from now.
    """
    trigger = trigger_from_text(job.kind, job.strategy, job.trigger_text)
    if job.kind != JobKind.PERIODIC:
        return [job.next_run_at], None
    assert isinstance(trigger, PeriodicSchedule)
    horizon = max(now, job.next_run_at)
    if job.run_now_at is not None and job.run_now_at == job.next_run_at:  # a run now is sent as such, then the grid
        return [job.next_run_at], trigger.next_after(horizon, job.created_at)
    handled: deque[datetime] = deque(
        [job.next_run_at], maxlen=MAX_CATCH_UP_SLOTS if job.catch_up == CATCH_UP_ALL else 1
    )
    following = trigger.next_after(job.next_run_at, job.created_at)
    for _ in range(_MAX_SLOTS_WALKED):
        if following is None or following > horizon:
            return list(handled), following
        handled.append(following)
        following = trigger.next_after(following, job.created_at)
    return list(handled), trigger.next_after(horizon, job.created_at)


_EXPIRED_TYPES = {
    "task_args": list,
    "task_kwargs": dict,
    "created_at": datetime,
    "scheduled_for": datetime,
    "dispatch_failures": int,
    "task_labels": dict,
}


@dataclass
class _ExpiredRun:
    """A pending run and what its job sends: read with ``values_list``, no model instance."""

    id: str
    job_id: str
    task_name: str
    task_args: list[Any]
    task_kwargs: dict[str, Any]
    created_at: datetime  # written by the claim, as the job's ``updated_at``: the claim's version
    scheduled_for: datetime
    dispatch_failures: int
    job_name: str | None
    next_run_at: datetime | None  # the job's next regular slot: a failed send's retry never goes past it
    task_labels: dict[str, Any]
    jitter_seconds: float
    claimed_by: str | None
    reason: str | None  # a held or backfilled slot's, kept when an engine claims it (``backfill``)
    failed_before: bool  # its run holds a failed send's error: a backfilled slot's retry
    job_finished_at: datetime | None


_EXPIRED_FIELDS = tuple(field.name for field in fields(_ExpiredRun))


def claim_expired(
    scheduler_id: str,
    now: datetime,
    limit: int,
    lease: timedelta,
    engines_dead_after: timedelta | None = None,
    stale: timedelta = _STALE_RUN,
) -> Claim:
    """Take over pending runs whose engine died so they are sent again, and held slots now free to go.

    A run is free once its lease has expired, or, given ``engines_dead_after``, once the engine
    that claimed it has stopped or has not beaten for that long (the database's clock). A run
    claimed by a process with no engine row (an immediate dispatch from a web process) waits
    for its lease. A slot held by ``overlap="buffer_one"`` is free once its job has no other
    unfinished run, unless the job is paused. A backfilled run (or one waiting for its retry)
    waits for its paused job's resume, even when the engine that claimed it has died. A run
    keeps its jitter: one claimed early goes at its time. A run that cannot be sent (its job's
    stored arguments unreadable or of the wrong type) is claimed too and returned as a failure,
    for the caller to ``record`` (a failed run and a retry, as for a failed send) instead of
    failing the tick.

    Nothing here writes a job: ``record`` writes jobs before runs, as every writer does, and
    doing that while this transaction holds run locks could deadlock with a writer of
    outcomes (the engine's own, on its connection of its own).
    """
    lapsed = Q(lease_expires_at__lt=now)
    if engines_dead_after is not None:
        gone = SchedulerEngine.objects.gone(DatabaseNow(), engines_dead_after).exclude(pk=scheduler_id)
        lapsed |= Q(claimed_by__in=gone.values("pk"))
    free = lapsed & (~_BACKFILLED | _NOT_PAUSED) | _released(now, stale)
    with transaction.atomic(), bulk.native_timestamps():
        expired = (
            SchedulerRun.objects.filter(free, status=RunStatus.PENDING)
            .order_by("lease_expires_at", "scheduled_for")  # a backfill's runs, oldest first
            .annotate(
                task_name=F("job__task_name"),
                task_args=F("job__task_args"),
                task_kwargs=F("job__task_kwargs"),
                dispatch_failures=F("job__dispatch_failures"),
                job_name=F("job__name"),
                next_run_at=F("job__next_run_at"),
                task_labels=F("job__task_labels"),
                jitter_seconds=F("job__jitter_seconds"),
                job_finished_at=F("job__finished_at"),
                failed_before=ExpressionWrapper(Q(error__isnull=False), output_field=BooleanField()),
            )
        )
        locked = _lock_for_claiming(expired)
        runs = [_ExpiredRun(*row) for row in _read(locked, _EXPIRED_FIELDS, limit)]
        dispatches, unsendable = [], []
        for run in runs:
            next_slot = _or(run.next_run_at, datetime, None)
            # A held or backfilled slot, also one whose engine died: no claim counted it as sent.
            first_send = run.claimed_by in (BACKFILL_CLAIMANT, WAITING_CLAIMANT) or run.reason is not None
            backfilled = run.claimed_by == BACKFILL_CLAIMANT or run.reason == BACKFILLED
            # A finished job's backfill is sent once: nothing could stop its retries (a pause leaves it finished). A
            # paused job's goes back to pending, and waits for its resume.
            retried_in_its_run = backfilled and run.job_finished_at is None
            try:
                _require_types(locked, run.id, vars(run), _EXPIRED_TYPES)
            except UnusableRowError as exc:
                # Never sent: what is recorded is the run, its job, the claim's version (if unreadable,
                # ``now``, which matches no job, so no retry) and the failure count. A run whose own
                # columns are unusable is not retried either: no API can mend it.
                own_columns_usable = isinstance(run.created_at, datetime) and isinstance(run.scheduled_for, datetime)
                claim = Dispatch(
                    run.id,
                    run.job_id,
                    run.task_name or "",
                    [],
                    {},
                    _or(run.created_at, datetime, now),
                    _or(run.scheduled_for, datetime, now),
                    _or(run.dispatch_failures, int, 0),
                    run.job_name,
                    next_slot,
                    counted_as_sent=not first_send,
                    leased_at=now,
                    retried_in_its_run=retried_in_its_run and own_columns_usable,
                )
                unsendable.append(Outcome(claim, None, now, describe_error(exc)))
                continue
            send_at = run.scheduled_for + jitter_delay(
                run.job_id, run.scheduled_for, _or(run.jitter_seconds, (float, int), 0)
            )
            dispatches.append(
                Dispatch(
                    run.id,
                    run.job_id,
                    run.task_name,
                    run.task_args,
                    run.task_kwargs,
                    run.created_at,
                    run.scheduled_for,
                    run.dispatch_failures,
                    run.job_name,
                    next_slot,
                    run.task_labels,
                    send_at if send_at > now else None,
                    late_on_purpose=first_send,
                    counted_as_sent=not first_send,
                    leased_at=now,
                    retried_in_its_run=retried_in_its_run,
                )
            )
        taken = [dispatch.run_id for dispatch in dispatches] + [outcome.dispatch.run_id for outcome in unsendable]
        if taken:
            # A backfilled run shows its failed send's error until it is tried again. The error first: MariaDB and
            # MySQL let later assignments see earlier ones.
            error = Case(When(claimed_by=BACKFILL_CLAIMANT, then=Value(None)), default=F("error"))
            SchedulerRun.objects.filter(id__in=taken).update(
                error=error, claimed_by=scheduler_id, lease_expires_at=now + lease, updated_at=now
            )
    read = {run.id: run for run in runs}
    backfills = [read[d.run_id] for d in dispatches if read[d.run_id].claimed_by == BACKFILL_CLAIMANT]
    return Claim(
        dispatches,
        len(runs),
        unsendable,
        backfills=len(backfills),
        backfill_retries=sum(1 for run in backfills if run.failed_before),
        released=sum(1 for d in dispatches if read[d.run_id].claimed_by == WAITING_CLAIMANT),
    )


_NOT_PAUSED = Q(job__is_enabled=True) | Q(job__finished_at__isnull=False)
_BACKFILLED = Q(claimed_by=BACKFILL_CLAIMANT) | Q(reason=BACKFILLED)  # also once an engine has claimed it


def _released(now: datetime, stale: timedelta) -> Q:
    """Held slots (``buffer_one``) whose job is not paused and has no unfinished run but held ones."""
    held = HELD & Q(lease_expires_at__isnull=True)
    for condition in _unfinished(now, stale):
        others = SchedulerRun.objects.filter(condition, job_id=OuterRef("job_id")).exclude(claimed_by=WAITING_CLAIMANT)
        held &= ~Exists(others)  # type: ignore[assignment]  # django-stubs: Q & takes only a Q (Q & Exists is a Q)
    return held & _NOT_PAUSED


def backfill(job_id: str, slots: list[datetime], now: datetime) -> int:
    """Write a pending run for each slot that has no run yet (whatever became of it): the next engine
    sends them, as it sends a dead engine's runs. Returns how many runs it wrote.

    Its ``reason`` says it was backfilled, for the history and for ``claim_expired``, which reads
    from it how to send the run (late on purpose, counted on its job when sent, retried in its run)
    after an engine that claimed it has died, ``claimed_by`` then naming that engine.
    """
    _time = _time_adapter()
    columns = ("id", "job_id", "scheduled_for", "status", "claimed_by", "lease_expires_at", "reason")
    written = bulk.insert_ignoring_conflicts(
        "scheduler_run",
        _run_columns(*columns, "created_at", "updated_at"),
        [
            (
                new_id(),
                job_id,
                _time(slot),
                RunStatus.PENDING,
                BACKFILL_CLAIMANT,
                _time(now),
                BACKFILLED,
                _time(now),
                _time(now),
            )
            for slot in slots
        ],
    )
    return len(written)


def extend_leases(scheduler_id: str, run_ids: list[str], until: datetime) -> set[str]:
    """Keep the runs this engine holds (claimed, being sent, or sent and not yet recorded) its own.

    Returns those it no longer holds: recorded meanwhile, or taken over by another engine
    that found this one dead. Only then is a second query made, to tell which.
    """
    missed: set[str] = set()
    for chunk in bulk.chunks(run_ids):
        held = SchedulerRun.objects.filter(id__in=chunk, claimed_by=scheduler_id, status=RunStatus.PENDING)
        if held.update(lease_expires_at=until) < len(chunk):
            missed.update(set(chunk).difference(held.values_list("id", flat=True)))
    return missed


def _added(column: str, amount: str) -> str:
    """``column + amount`` in SQL, stopping at ``MAX_COUNT``: a full counter must not make an outcome unstorable."""
    return (
        f"CASE WHEN scheduler_job.{column} > {MAX_COUNT} - {amount} THEN {MAX_COUNT}"
        f" ELSE scheduler_job.{column} + {amount} END"
    )


def record(
    outcomes: list[Outcome], now: datetime, record_runs: bool, retry: RetryPolicy, scheduler_id: str
) -> list[Outcome]:
    """Store the outcomes on their runs, and on their jobs where the claim did not: failed slots get a retry.

    A send that went through writes its job only if no claim counted it (a backfilled or held
    slot), or to end the job's streak of failed sends; a failed one always does, taking back
    what its claim wrote there. A failed backfilled slot is retried in its own run, pending
    again until its backoff has passed (``Dispatch.retried_in_its_run``). Returns the failed
    sends left out because another engine has taken their runs over since (``_taken_over``).

    Set-based SQL only, no model instance: a job row with a value the ORM cannot read
    cannot stop its outcome from being stored. Jobs are written before runs, as a claim, a
    job delete, the job cleanup and the outcome middleware do, so two writers never wait on
    each other's locks in opposite orders.
    """
    _time = _time_adapter()
    sent: dict[str, list[Outcome]] = {}
    failed: dict[str, list[Outcome]] = {}
    in_send_order = sorted(outcomes, key=lambda outcome: outcome.dispatched_at or outcome.finished_at)
    for outcome in in_send_order:
        if outcome.error is not None:
            failed.setdefault(outcome.dispatch.job_id, []).append(outcome)
        elif not outcome.dispatch.counted_as_sent or outcome.dispatch.failures:
            sent.setdefault(outcome.dispatch.job_id, []).append(outcome)
    with transaction.atomic():
        left, counted_elsewhere = _taken_over(failed, sent, scheduler_id)
        if left:
            outcomes = [outcome for outcome in outcomes if outcome.dispatch.run_id not in left]
            failed = {
                job_id: kept
                for job_id, job_outcomes in failed.items()
                if (kept := [outcome for outcome in job_outcomes if outcome.dispatch.run_id not in left])
            }
        bulk.update_from_values(
            "scheduler_job",
            (
                ("id", "varchar"),
                ("sent", "integer"),
                ("last_run_at", "timestamptz"),
                ("last_dispatched_task_id", "varchar"),
            ),
            (
                ("dispatch_count", _added("dispatch_count", "v.sent")),
                ("last_run_at", "COALESCE(v.last_run_at, scheduler_job.last_run_at)"),
                (
                    "last_dispatched_task_id",
                    "COALESCE(v.last_dispatched_task_id, scheduler_job.last_dispatched_task_id)",
                ),
                ("last_error", "NULL"),
                ("dispatch_failures", "0"),
            ),
            [_sent(job_outcomes, counted_elsewhere, _time) for job_outcomes in sent.values()],
        )
        shown_instead = _shown_instead(failed, in_send_order)
        bulk.update_from_values(
            "scheduler_job",
            (
                ("id", "varchar"),
                ("claimed_at", "timestamptz"),
                ("failed", "integer"),
                ("last_error", "text"),
                ("retry_at", "timestamptz"),
                ("now", "timestamptz"),
                ("refund", "integer"),
                ("uncount", "integer"),
                ("run_id", "varchar"),
                ("previous_run_at", "timestamptz"),
                ("previous_task_id", "varchar"),
            ),
            _RETRY,
            [_retry(job_outcomes, now, retry, _time, shown_instead) for job_outcomes in failed.values()],
        )
        _settle_runs(outcomes, record_runs, retry)
    return list(left.values())


def _taken_over(
    failed: Mapping[str, list[Outcome]], sent: Mapping[str, list[Outcome]], scheduler_id: str
) -> tuple[dict[str, Outcome], set[str]]:
    """What another engine has done with these outcomes' runs (``failed`` and ``sent``: by job) since this one
    claimed them. Returns the failed sends, by run, whose runs are no longer ``scheduler_id``'s (taken over, or
    settled), and the sends no claim counted whose runs another engine has already stored as sent, counting them.
    Call it in the transaction that stores the rest, which writes their jobs.

    A run stays claimed by the engine that claimed (or took over) it until it is settled, which
    clears the claim. An engine that stalled past its leases (a database away longer than a lease)
    may find, once it can store again, that another engine has taken its runs and sent them: its
    failures must then neither mark those runs failed nor count on their jobs and retry them (a
    one-off would go out again). Its sends that went through are stored all the same: they happened.
    A held or backfilled slot, which no claim counted, is counted once, by whichever engine stores
    its send first, as a claimed slot is counted once by its claim (without run history, by each).

    Every job the store writes, then those runs, are locked before they are written, in the order
    every writer takes (jobs first): a take-over, which locks runs and skips locked ones, cannot
    come between this read and the writes.
    """
    failures = {outcome.dispatch.run_id: outcome for job_outcomes in failed.values() for outcome in job_outcomes}
    uncounted = {
        outcome.dispatch.run_id
        for job_outcomes in sent.values()
        for outcome in job_outcomes
        if not outcome.dispatch.counted_as_sent
    }
    if not failures and not uncounted:
        return {}, set()
    bulk.begin_write()  # SQLite: no other writer between the read and the writes
    for chunk in bulk.chunks(sorted({*failed, *sent})):
        list(SchedulerJob.objects.select_for_update().filter(pk__in=chunk).order_by("pk").values_list("pk"))
    claimants: dict[str, str | None] = {}
    statuses: dict[str, str] = {}
    for chunk in bulk.chunks(sorted({*failures, *uncounted})):
        runs = SchedulerRun.objects.select_for_update().filter(pk__in=chunk).order_by("pk")
        for run_id, claimant, status in runs.values_list("pk", "claimed_by", "status"):
            claimants[run_id], statuses[run_id] = claimant, status
    left = {run_id: outcome for run_id, outcome in failures.items() if claimants.get(run_id) != scheduler_id}
    # A run gone (settled without run history) may have been a failed send: counting again beats counting never.
    counted = {run_id for run_id in uncounted if statuses.get(run_id) == RunStatus.DISPATCHED}
    return left, counted


STORE_DATA_ERRORS = (DataError, IntegrityError, ValueError, TypeError, OverflowError)
"""What storing raises because of the values, not because the database is away: trying again fails alike."""


def record_each(
    outcomes: list[Outcome], now: datetime, record_runs: bool, retry: RetryPolicy, scheduler_id: str
) -> list[Outcome]:
    """Store outcomes one at a time, after the database refused a batch for its values.

    An outcome whose job cannot be updated still has its run settled, so it is not sent
    again (a failed send only while its run is still this engine's, as ``record`` does);
    returns those whose run could not be settled either.
    """
    refused = []
    for outcome in outcomes:
        try:
            record([outcome], now, record_runs, retry, scheduler_id)
        except STORE_DATA_ERRORS:
            failed = {outcome.dispatch.job_id: [outcome]} if outcome.error is not None else {}
            try:
                with transaction.atomic():
                    if not _taken_over(failed, {}, scheduler_id)[0]:
                        _settle_runs([outcome], record_runs, retry)
            except STORE_DATA_ERRORS:
                refused.append(outcome)
    return refused


def _settle_runs(outcomes: list[Outcome], record_runs: bool, retry: RetryPolicy) -> None:
    """Mark the runs sent or failed and release their leases (or drop them without run history); a failed
    backfilled slot's run goes back to pending, its lease running out when its retry is due, for
    ``claim_expired`` to take it again then."""
    again = [outcome for outcome in outcomes if outcome.error is not None and outcome.dispatch.retried_in_its_run]
    if not record_runs:
        pending = {outcome.dispatch.run_id for outcome in again}
        settled = [outcome.dispatch.run_id for outcome in outcomes if outcome.dispatch.run_id not in pending]
        SchedulerRun.objects.filter(id__in=settled).delete()
        outcomes = again
    _time = _time_adapter()
    bulk.update_from_values(
        "scheduler_run",
        (
            ("id", "varchar"),
            ("status", "varchar"),
            ("dispatched_at", "timestamptz"),
            ("finished_at", "timestamptz"),
            ("broker_task_id", "varchar"),
            ("error", "text"),
            ("claimed_by", "varchar"),
            ("lease_expires_at", "timestamptz"),
            ("updated_at", "timestamptz"),
        ),
        # A worker may already have reported the task's own error: a sent run keeps it.
        (
            ("status", "v.status"),
            ("dispatched_at", "v.dispatched_at"),
            ("finished_at", "v.finished_at"),
            ("broker_task_id", "v.broker_task_id"),
            ("error", "COALESCE(v.error, scheduler_run.error)"),
            ("claimed_by", "v.claimed_by"),
            ("lease_expires_at", "v.lease_expires_at"),
            ("updated_at", "v.updated_at"),
        ),
        [_settled_run(outcome, retry, _time) for outcome in outcomes],
    )


def _settled_run(outcome: Outcome, retry: RetryPolicy, _time: Callable[[datetime | None], Any]) -> tuple[Any, ...]:
    """A run's row for ``_settle_runs``: sent, failed, or pending again with its lease ending at its retry."""
    dispatch, finished_at = outcome.dispatch, _time(outcome.finished_at)
    if outcome.error is None:
        sent_at, task_id = _time(outcome.dispatched_at), dispatch.run_id
        return (dispatch.run_id, RunStatus.DISPATCHED, sent_at, finished_at, task_id, None, None, None, finished_at)
    if dispatch.retried_in_its_run:
        retry_at = _time(retry.send_again_at(outcome))
        return (
            dispatch.run_id,
            RunStatus.PENDING,
            None,
            None,
            None,
            outcome.error,
            BACKFILL_CLAIMANT,
            retry_at,
            finished_at,
        )
    tried_at = _time(outcome.dispatched_at)
    return (dispatch.run_id, RunStatus.FAILED, tried_at, finished_at, None, outcome.error, None, None, finished_at)


# A failed send counts and shows its error on the job, and takes back what its claim wrote there: the
# send's count, and the job's last send where it still names this one. Its retry (with backoff, never
# later than the job's next regular slot) applies only where the job is unchanged since the claim, its
# ``updated_at`` still the claim's version: a job paused, upserted or run now meanwhile keeps what its
# operator set. MariaDB and MySQL let later assignments see earlier ones, so ``last_dispatched_task_id``
# comes after ``last_run_at`` and ``updated_at`` last.
_UNCHANGED = "scheduler_job.updated_at = v.claimed_at"
_STILL_SHOWN = "scheduler_job.last_dispatched_task_id = v.run_id"
_RETRY = (
    (
        "dispatch_count",
        "CASE WHEN scheduler_job.dispatch_count > v.uncount THEN scheduler_job.dispatch_count - v.uncount ELSE 0 END",
    ),
    ("dispatch_failures", _added("dispatch_failures", "v.failed")),
    ("last_error", "v.last_error"),
    ("last_run_at", f"CASE WHEN {_STILL_SHOWN} THEN v.previous_run_at ELSE scheduler_job.last_run_at END"),
    (
        "last_dispatched_task_id",
        f"CASE WHEN {_STILL_SHOWN} THEN v.previous_task_id ELSE scheduler_job.last_dispatched_task_id END",
    ),
    (
        "next_run_at",
        f"CASE WHEN {_UNCHANGED} AND (scheduler_job.next_run_at IS NULL"
        " OR scheduler_job.next_run_at > v.retry_at) THEN v.retry_at ELSE scheduler_job.next_run_at END",
    ),
    ("is_enabled", f"CASE WHEN {_UNCHANGED} THEN TRUE ELSE scheduler_job.is_enabled END"),
    ("finished_at", f"CASE WHEN {_UNCHANGED} THEN NULL ELSE scheduler_job.finished_at END"),
    (
        "remaining_runs",
        f"CASE WHEN {_UNCHANGED} THEN scheduler_job.remaining_runs + v.refund ELSE scheduler_job.remaining_runs END",
    ),
    ("updated_at", f"CASE WHEN {_UNCHANGED} THEN v.now ELSE scheduler_job.updated_at END"),
)


def _sent(
    job_outcomes: list[Outcome], counted_elsewhere: set[str], _time: Callable[[datetime | None], Any]
) -> tuple[Any, ...]:
    """One job's sends that went through, oldest first, as a row for ``record``: those no claim counted, nor another
    engine's store (``_taken_over``), are counted and the latest of them shown; any of them ends the job's streak
    of failed sends."""
    uncounted = [
        outcome
        for outcome in job_outcomes
        if not outcome.dispatch.counted_as_sent and outcome.dispatch.run_id not in counted_elsewhere
    ]
    latest = uncounted[-1] if uncounted else None
    return (
        job_outcomes[0].dispatch.job_id,
        len(uncounted),
        _time(latest.dispatched_at) if latest else None,
        latest.dispatch.run_id if latest else None,
    )


def _shown_instead(
    failed: Mapping[str, list[Outcome]], in_send_order: list[Outcome]
) -> dict[str, tuple[datetime | None, str | None]]:
    """What a job shows as its last send in place of one that these failed sends' claims superseded
    (``Dispatch.previous``) and that another store has found failed since: its latest send that went, in this
    store (``in_send_order``: its outcomes, sorted by send time) or else as the run history has it, or none.
    Without run history the failed run is gone, and the superseded send stays shown.

    Two claims of one job in flight at once (a run now, a slot claimed ahead), both failing: the first stored
    leaves the job alone (it shows the later claim's send), and the later one would put back the first one's.
    Read only for failed sends, under the job locks ``_taken_over`` took.
    """
    superseded = {
        outcome.dispatch.previous[1]: job_id
        for job_id, job_outcomes in failed.items()
        for outcome in job_outcomes
        if outcome.dispatch.previous is not None and outcome.dispatch.previous[1] is not None
    }
    if not superseded:
        return {}
    went_last = {
        outcome.dispatch.job_id: (outcome.dispatched_at, outcome.dispatch.run_id)
        for outcome in in_send_order
        if outcome.error is None
    }
    instead = {}
    for chunk in bulk.chunks(sorted(superseded)):
        for run_id in SchedulerRun.objects.filter(pk__in=chunk, status=RunStatus.FAILED).values_list("pk", flat=True):
            job_id = superseded[run_id]
            instead[run_id] = went_last.get(job_id) or _latest_sent(job_id)
    return instead


def _latest_sent(job_id: str) -> tuple[datetime | None, str | None]:
    """The job's run sent last, as the run history has it (its send time, its id); none if none (or unreadable)."""
    sent = SchedulerRun.objects.filter(job_id=job_id, status=RunStatus.DISPATCHED)
    latest = sent.order_by(F("dispatched_at").desc(nulls_last=True), "-scheduled_for", "-pk")
    return read_or(latest.values_list("dispatched_at", "pk").first, lambda _: None) or (None, None)


def _retry(
    job_outcomes: list[Outcome],
    now: datetime,
    retry: RetryPolicy,
    _time: Callable[[datetime | None], Any],
    shown_instead: Mapping[str, tuple[datetime | None, str | None]],
) -> tuple[Any, ...]:
    """One job's failed sends, oldest first, as a row for ``_RETRY``; only its latest claim can still be its version,
    and only its latest send can still be shown as the job's last: the job then shows the send before it that did
    not fail here, if that is known, or what ``_shown_instead`` found for one that failed in another store. Slots
    retried in their runs only count on the job (no version: no retry)."""
    failed = len(job_outcomes)
    scheduled = [outcome.dispatch for outcome in job_outcomes if not outcome.dispatch.retried_in_its_run]
    if not scheduled:
        job_id, error = job_outcomes[0].dispatch.job_id, job_outcomes[-1].error
        return (job_id, None, failed, error, None, _time(now), 0, 0, None, None, None)
    latest = max(scheduled, key=lambda dispatch: (dispatch.claimed_at, dispatch.scheduled_for))
    # From the latest failure, as the engine's log line computes it; the cap at the next slot is the SQL's.
    retry_at = job_outcomes[-1].finished_at + retry.delay(latest.failures + failed)
    refund = sum(outcome.dispatch.counted for outcome in job_outcomes)  # their retry is the same scheduled send
    uncount = sum(outcome.dispatch.counted_as_sent for outcome in job_outcomes)
    failed_here = {outcome.dispatch.run_id: outcome.dispatch for outcome in job_outcomes}
    previous = latest.previous
    while previous is not None and previous[1] in failed_here:  # a catch-up's earlier slots, failed as well
        previous = failed_here[previous[1]].previous
    if previous is not None:
        previous = shown_instead.get(previous[1] or "", previous)
    previous_run_at, previous_task_id = previous or (None, None)
    return (
        latest.job_id,
        _time(latest.claimed_at),
        failed,
        job_outcomes[-1].error,
        _time(retry_at),
        _time(now),
        refund,
        uncount,
        latest.run_id if previous is not None else None,
        _time(previous_run_at),
        previous_task_id,
    )


# Cleanups delete a chunk per call, so that between chunks the engine's database thread is free for its
# claims (and, on SQLite, its lease renewals): the first purge of a long history must not hold it for minutes.
_RUN_DELETE_CHUNK = 5000
_JOB_DELETE_CHUNK = 500


def delete_runs_finished_before(cutoff: datetime) -> int:
    """One chunk of the runs that finished before ``cutoff``; returns how many (0: none left)."""
    finished = SchedulerRun.objects.filter(finished_at__lt=cutoff).exclude(status=RunStatus.PENDING)
    run_ids = list(finished.values_list("id", flat=True)[:_RUN_DELETE_CHUNK])
    deleted, _ = SchedulerRun.objects.filter(id__in=run_ids).delete()
    return deleted


def delete_jobs_finished_before(cutoff: datetime) -> int:
    """One chunk of completed one-offs (sent at least once, finished before ``cutoff``) with their runs.

    Each job is locked before its runs are deleted (the order every writer keeps); a job
    another writer holds is left for the next cleanup. Only ids are loaded, so a job row
    with an unreadable column goes like any other. Returns how many jobs (0: none left).
    """
    finished = SchedulerJob.objects.filter(
        kind=JobKind.ONE_OFF, is_enabled=False, finished_at__lt=cutoff, dispatch_count__gt=0
    ).exclude(runs__status=RunStatus.PENDING)
    with transaction.atomic():
        job_ids = list(_lock_for_claiming(finished).values_list("id", flat=True)[:_JOB_DELETE_CHUNK])
        _, by_model = SchedulerJob.objects.filter(pk__in=job_ids).only("pk").delete()
    return by_model.get(SchedulerJob._meta.label, 0)
