"""Builders: validate what to send and when, then create or upsert the job row.

``app.single(...)`` returns a builder; ``schedule`` / ``upsert`` write the row and
their ``a``-prefixed twins do the same from async code. An ``ImmediateDispatch``
is sent through the broker as soon as the row is committed (inside an outer
``transaction.atomic()``, when that one commits).
"""

import logging
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from asgiref.sync import sync_to_async
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from django_taskiq_beat import logs
from django_taskiq_beat.chains import CHAIN_ORCHESTRATOR_TASK_NAME, TaskChain, require_result_backend
from django_taskiq_beat.exceptions import SchedulerValidationError
from django_taskiq_beat.middleware import reports_outcomes
from django_taskiq_beat.models import (
    DECLARED_SOURCES,
    JobKind,
    JobSource,
    JobStrategy,
    RunStatus,
    SchedulerJob,
    SchedulerRun,
)
from django_taskiq_beat.payloads import (
    TaskCall,
    json_identity,
    require_callable_with,
    require_json,
    require_labels,
    require_text,
    task_name_of,
)
from django_taskiq_beat.policies import OVERLAP_BUFFER_ONE, SchedulePolicy
from django_taskiq_beat.sending import UnknownTaskError, find_task, run_from_sync, send_task
from django_taskiq_beat.triggers import (
    ImmediateDispatch,
    OneOffSchedule,
    PeriodicSchedule,
    Trigger,
    timing_of,
    trigger_kind,
)

if TYPE_CHECKING:
    from django_taskiq_beat.app import SchedulerApp

logger = logging.getLogger("django_taskiq_beat.scheduler")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()
"""``upsert(is_enabled=UNSET)``: keep the job's current enabled state."""

_MAX_ID_LENGTH = SchedulerJob._meta.get_field("id").max_length
_RECORD_PATIENCE_SECONDS = 5.0
_MAX_NAME_LENGTH = SchedulerJob._meta.get_field("name").max_length


@dataclass(frozen=True)
class _Identity:
    """What names a job, checked and as plain strings."""

    job_id: str | None
    name: str | None
    description: str | None


def _identity(job_id: Any, name: Any, description: Any) -> _Identity:
    return _Identity(
        job_id=None if job_id is None else require_text("job_id", job_id, max_length=_MAX_ID_LENGTH, allow_blank=False),
        name=None if name is None else require_text("name", name, max_length=_MAX_NAME_LENGTH),
        description=None if description is None else require_text("description", description),
    )


def declared_id_prefix(job_id: str) -> str | None:
    """``settings`` for ``settings:nightly``: the prefix that reserves an id for the sync, or None.

    Compared without case or accents: MariaDB and MySQL compare ids so (their default
    collation), and ``SETTINGS:nightly`` would be the declared job's row there.
    """
    head, colon, _ = job_id.partition(":")
    folded = "".join(c for c in unicodedata.normalize("NFKD", head) if not unicodedata.combining(c)).casefold()
    return folded if colon and folded in DECLARED_SOURCES else None


def _refuse_declared_id(job_id: str | None, source: str) -> None:
    """Ids named after a declared source belong to the sync: code and admin cannot take or change them."""
    prefix = None if job_id is None or source in DECLARED_SOURCES else declared_id_prefix(job_id)
    if prefix:
        raise SchedulerValidationError(
            "job_id",
            job_id,
            f"Ids starting with '{prefix}:' (in any case) are kept for jobs declared in code; choose another id,"
            " or change the declaration.",
        )


def _schedule_text(job: SchedulerJob) -> str:
    """``periodic, active, next slot 14:00:00 UTC`` for a log line."""
    if job.strategy == JobStrategy.IMMEDIATE:
        return "sent at once"
    text = f"{job.get_kind_display()}, {job.state}"
    return text + (f", next slot {logs.when(job.next_run_at)}" if job.is_enabled and job.next_run_at else "")


def _schedule_state(job: SchedulerJob) -> Any:
    """Every column an upsert may change, compared as JSON compares (``json_identity``)."""
    return json_identity([getattr(job, field) for field in _UPSERT_FIELDS])


_UPSERT_FIELDS = (
    "name",
    "description",
    "task_name",
    "kind",
    "strategy",
    "trigger_payload",
    "task_args",
    "task_kwargs",
    "metadata_payload",
    "task_labels",
    "declaration",
    "is_enabled",
    "next_run_at",
    "finished_at",
    "claimed_by",
    "claimed_at",
    "claim_expires_at",
    "paused_at",
    "pause_note",
    "remaining_runs",
    *(field.name for field in fields(SchedulePolicy)),
)


@contextmanager
def _job_id_free(job_id: str | None) -> Iterator[None]:
    """``schedule`` creates: a job id that is taken is refused, never overwritten."""
    try:
        yield
    except IntegrityError:
        if job_id is None:
            raise
        raise SchedulerValidationError(
            "job_id", job_id, "A job with this id already exists; use upsert() to change it."
        ) from None


def _apply_policy(job: SchedulerJob, policy: SchedulePolicy, now: Any) -> None:
    """Put ``policy`` on the job, from its next slot; a changed ``max_runs`` keeps the sends already made.

    A limit set on a job that had none counts from now. A limit the sends already reached
    finishes the job; a periodic job finished by its limit goes on when the limit is raised.
    """
    ran_out = job.is_finished and job.remaining_runs == 0
    if job.overlap == OVERLAP_BUFFER_ONE and policy.overlap != OVERLAP_BUFFER_ONE:
        job.drop_held_slots(now, f"the job's overlap became {policy.overlap!r} while the slot was held")
    if policy.max_runs != job.max_runs:
        sent = 0 if job.max_runs is None or job.remaining_runs is None else job.max_runs - job.remaining_runs
        job.remaining_runs = None if policy.max_runs is None else max(policy.max_runs - sent, 0)
    for column, value in policy.columns().items():
        setattr(job, column, value)
    if job.remaining_runs == 0 and not job.is_finished:
        job.is_enabled, job.next_run_at, job.finished_at = False, None, now
        job.release_claim()
    elif ran_out and job.remaining_runs != 0 and job.kind == JobKind.PERIODIC:  # a raised limit: it goes on
        job.finished_at = None
        job.arm(now)


class ScheduleBuilder:
    """Turns a validated ``TaskCall`` plus a trigger into a job row."""

    def __init__(self, app: "SchedulerApp") -> None:
        self.app = app

    def task_call(self) -> TaskCall:
        """The validated call this builder schedules; subclasses say what it is."""
        raise NotImplementedError

    # -- validation --------------------------------------------------------------

    def _require_outcomes(self, policy: SchedulePolicy) -> None:
        """A policy that reads the worker's outcomes needs them reported, and kept in the run history."""
        readers = " and ".join(policy.outcome_readers)
        if not reports_outcomes(self.app.broker):
            raise SchedulerValidationError(
                "policy",
                policy,
                f"{readers} read the worker's outcomes: add RunOutcomeMiddleware to the broker"
                " (broker.with_middlewares(RunOutcomeMiddleware())).",
            )
        if not self.app.config.record_runs:
            raise SchedulerValidationError(
                "policy",
                policy,
                f"{readers} read the worker's outcomes from the run history, which RECORD_RUNS=False does not keep.",
            )

    def _validated(
        self,
        trigger: Any,
        job_id: Any,
        name: Any,
        description: Any,
        is_enabled: Any,
        source: JobSource,
        policy: Any = None,
    ) -> tuple[Trigger, TaskCall, _Identity]:
        if not isinstance(trigger, ImmediateDispatch | OneOffSchedule | PeriodicSchedule):
            raise SchedulerValidationError(
                "trigger", trigger, "Expected ImmediateDispatch, OneOffSchedule or PeriodicSchedule."
            )
        if isinstance(trigger, PeriodicSchedule):
            assert self.app.config.default_timezone is not None  # SchedulerConfig resolved it (TIME_ZONE when None)
            trigger = trigger.with_timezone(self.app.config.default_timezone)
        identity = _identity(job_id, name, description)
        _refuse_declared_id(identity.job_id, source)
        if policy is not None and not isinstance(policy, SchedulePolicy):
            raise SchedulerValidationError("policy", policy, "Expected a SchedulePolicy (or None for the default).")
        if policy is not None and policy.outcome_readers:
            self._require_outcomes(policy)
        if is_enabled is not UNSET and not isinstance(is_enabled, bool):
            raise SchedulerValidationError("is_enabled", is_enabled, "Must be True or False.")
        call = self.task_call()
        try:
            task = find_task(self.app.broker, call.task_name)
        except UnknownTaskError as exc:
            raise SchedulerValidationError("task", call.task_name, str(exc)) from None
        require_callable_with(task, call.args, call.kwargs, "")
        return trigger, call, identity

    def validate(
        self,
        trigger: Trigger,
        job_id: str | None = None,
        name: str | None = None,
        description: str | None = None,
        *,
        source: JobSource = JobSource.API,
        policy: SchedulePolicy | None = None,
    ) -> None:
        """Check everything ``schedule``/``upsert`` would, writing nothing (the admin form and the sync use it)."""
        self._validated(trigger, job_id, name, description, UNSET, source, policy)

    # -- schedule ----------------------------------------------------------------

    def schedule(
        self,
        trigger: Trigger | None = None,
        job_id: str | None = None,
        name: str | None = None,
        description: str | None = None,
        is_enabled: bool = True,
        *,
        policy: SchedulePolicy | None = None,
        source: JobSource = JobSource.API,
    ) -> SchedulerJob:
        """Create a job; with no trigger, send the task now (``ImmediateDispatch``).

        ``policy`` says what to do with late slots (default: ``SchedulePolicy()``). ``source``
        records who asked: ``api`` (code) or ``admin`` (the admin's add form).
        """
        job, pending_run = self._create(trigger, job_id, name, description, is_enabled, source, policy)
        if pending_run is not None:
            self._dispatch_now(job, pending_run)
        return job

    async def aschedule(
        self,
        trigger: Trigger | None = None,
        job_id: str | None = None,
        name: str | None = None,
        description: str | None = None,
        is_enabled: bool = True,
        *,
        policy: SchedulePolicy | None = None,
        source: JobSource = JobSource.API,
    ) -> SchedulerJob:
        """Async twin of ``schedule``."""
        job, pending_run = await sync_to_async(self._create)(
            trigger, job_id, name, description, is_enabled, source, policy
        )
        if pending_run is not None:
            await self._adispatch_now(job, pending_run)
        return job

    def _create(
        self,
        trigger: Trigger | None,
        job_id: str | None,
        name: str | None,
        description: str | None,
        is_enabled: bool,
        source: JobSource,
        policy: SchedulePolicy | None,
    ) -> tuple[SchedulerJob, SchedulerRun | None]:
        """Insert the job; returns the run to send now, unless an outer transaction sends it on commit."""
        if source not in (JobSource.API, JobSource.ADMIN):
            raise SchedulerValidationError(
                "source", source, "schedule() takes 'api' or 'admin'; declared jobs are synced."
            )
        trigger, call, identity = self._validated(
            trigger or ImmediateDispatch(), job_id, name, description, is_enabled, source, policy
        )
        if not isinstance(is_enabled, bool):
            raise SchedulerValidationError("is_enabled", is_enabled, "Must be True or False.")
        in_outer_transaction = transaction.get_connection().in_atomic_block
        with _job_id_free(identity.job_id), transaction.atomic():
            job = self._insert(trigger, call, identity, is_enabled, source, None, policy)
            self.app.job_changed()
            pending_run = None
            if isinstance(trigger, ImmediateDispatch):
                # Leased like an engine's claim: if this process dies before the send is
                # recorded, an engine re-sends the run once the lease expires.
                pending_run = SchedulerRun.objects.create(
                    job=job,
                    scheduled_for=job.created_at,
                    claimed_by=self.app.config.scheduler_id,
                    lease_expires_at=job.created_at + timedelta(seconds=self.app.config.claim_ttl_seconds),
                )
                # Counted now, as an engine's claim counts its sends: an engine that re-sends the run (this
                # process died first) counts nothing more, and a failed send still counts, as in taskiq-beat.
                job.dispatch_count, job.last_run_at, job.last_dispatched_task_id = 1, job.created_at, pending_run.id
                job.save(update_fields=["dispatch_count", "last_run_at", "last_dispatched_task_id"])
                if in_outer_transaction:
                    transaction.on_commit(
                        partial(self._dispatch_now, job, pending_run, raise_errors=False), robust=True
                    )
                    pending_run = None
        logger.info(
            "Created job %s: %s.",
            logs.job_row(job),
            _schedule_text(job),
            extra={**logs.job_row_extra(job), "kind": job.kind},
        )
        return job, pending_run

    def _insert(
        self,
        trigger: Trigger,
        call: TaskCall,
        identity: _Identity,
        is_enabled: bool,
        source: str,
        declaration: dict[str, Any] | None,
        policy: SchedulePolicy | None,
    ) -> SchedulerJob:
        now = timezone.now()
        job = SchedulerJob(
            name=identity.name,
            description=identity.description,
            task_name=call.task_name,
            kind=trigger_kind(trigger),
            strategy=trigger.strategy,
            trigger_payload=trigger.to_payload(),
            task_args=call.args,
            task_kwargs=call.kwargs,
            metadata_payload=call.metadata,
            task_labels=call.labels,
            source=source,
            declaration=declaration,
            created_at=now,
            updated_at=now,
            **(policy or SchedulePolicy()).columns(),
            remaining_runs=(policy or SchedulePolicy()).max_runs,
        )
        if identity.job_id is not None:
            job.id = identity.job_id
        if isinstance(trigger, ImmediateDispatch):
            job.is_enabled = False  # sent at once, then finished: never due, and not paused either
        elif is_enabled:
            job.arm(now)
        else:
            job.disarm(now)
        job.save(force_insert=True)
        return job

    # -- upsert ------------------------------------------------------------------

    def upsert(
        self,
        trigger: Trigger,
        job_id: str,
        name: str | None = None,
        description: str | None = None,
        is_enabled: bool | _Unset = UNSET,
        *,
        policy: SchedulePolicy | None = None,
    ) -> SchedulerJob:
        """Create the job ``job_id`` or bring it in line with this definition.

        The slot is kept when nothing that decides it changed. An operator's pause is
        kept unless ``is_enabled`` is passed, and a one-off that already ran is not
        run again unless its trigger changed.
        """
        return self.upsert_as(JobSource.API, trigger, job_id, name, description, is_enabled, policy=policy)[0]

    def upsert_as(
        self,
        source: JobSource,
        trigger: Trigger,
        job_id: str,
        name: str | None = None,
        description: str | None = None,
        is_enabled: bool | _Unset = UNSET,
        declaration: dict[str, Any] | None = None,
        policy: SchedulePolicy | None = None,
    ) -> tuple[SchedulerJob, str]:
        """``upsert`` on behalf of ``source``; returns the job and ``created``, ``updated`` or ``unchanged``.

        The sync upserts declared jobs through it, with the ``declaration`` they were built
        from (kept on the row, so the next sync knows what it last applied).
        """
        if isinstance(trigger, ImmediateDispatch):
            raise SchedulerValidationError(
                "trigger", trigger, "ImmediateDispatch cannot be used with upsert; use schedule() instead."
            )
        if job_id is None:
            raise SchedulerValidationError("job_id", job_id, "upsert needs a job_id.")
        trigger, call, identity = self._validated(trigger, job_id, name, description, is_enabled, source, policy)
        assert identity.job_id is not None  # refused above when None
        for attempt in range(2):
            try:
                with transaction.atomic():
                    existing = SchedulerJob.objects.locked(identity.job_id)
                    if existing is None:
                        job = self._insert(
                            trigger, call, identity, is_enabled is not False, source, declaration, policy
                        )
                        change = "created"
                    else:
                        job = existing
                        changed = self._update(job, trigger, call, identity, is_enabled, declaration, policy)
                        change = "updated" if changed else "unchanged"
                    self.app.job_changed()
                break
            except IntegrityError:  # a concurrent upsert created it first: update that row
                if attempt:
                    raise
        logger.info(
            "Upserted job %s (%s): %s.",
            logs.job_row(job),
            change,
            _schedule_text(job),
            extra={**logs.job_row_extra(job), "kind": job.kind, "job_created": change == "created"},
        )
        return job, change

    async def aupsert(
        self,
        trigger: Trigger,
        job_id: str,
        name: str | None = None,
        description: str | None = None,
        is_enabled: bool | _Unset = UNSET,
        *,
        policy: SchedulePolicy | None = None,
    ) -> SchedulerJob:
        """Async twin of ``upsert``."""
        return await sync_to_async(self.upsert)(trigger, job_id, name, description, is_enabled, policy=policy)

    def _update(
        self,
        job: SchedulerJob,
        trigger: Trigger,
        call: TaskCall,
        identity: _Identity,
        is_enabled: bool | _Unset,
        declaration: dict[str, Any] | None,
        policy: SchedulePolicy | None,
    ) -> bool:
        """Bring the row in line; an upsert that changes nothing writes nothing. Returns whether it wrote.

        ``updated_at`` moves only on a real change: the engine reads it as the job's
        version, to leave an operator's change alone after a failed send.
        """
        now = timezone.now()
        before = _schedule_state(job)
        new_trigger = (trigger_kind(trigger), trigger.strategy, trigger.to_payload())
        kind, strategy, payload = new_trigger
        trigger_changed = (kind, strategy, timing_of(strategy, payload)) != (
            job.kind,
            job.strategy,
            timing_of(job.strategy, job.trigger_payload),
        )
        call_changed = json_identity([call.task_name, call.args, call.kwargs]) != json_identity(
            [job.task_name, job.task_args, job.task_kwargs]
        )
        job.kind, job.strategy, job.trigger_payload = new_trigger
        job.task_name, job.task_args, job.task_kwargs = call.task_name, call.args, call.kwargs
        job.metadata_payload, job.name, job.description = call.metadata, identity.name, identity.description
        job.task_labels, job.declaration = call.labels, declaration
        _apply_policy(job, policy or SchedulePolicy(), now)
        if is_enabled is False:
            job.disarm(now)
        elif job.is_finished:
            if trigger_changed:
                job.arm(now)
        elif (is_enabled is True and not job.is_enabled) or (
            job.is_enabled and (trigger_changed or call_changed or job.next_run_at is None)
        ):
            job.arm(now)
            logger.debug(
                "Recalculated the next slot of job %s: %s.",
                logs.job_row(job),
                _schedule_text(job),
                extra=logs.job_row_extra(job),
            )
        if _schedule_state(job) == before:
            return False
        job.updated_at = now
        job.save()
        return True

    # -- immediate dispatch -------------------------------------------------------

    async def _send(self, job: SchedulerJob, run: SchedulerRun) -> Exception | None:
        """Hand the task to the broker; returns the error instead of raising it."""
        try:
            await send_task(
                self.app.broker,
                job.task_name,
                job.task_args,
                job.task_kwargs,
                job_id=job.id,
                run_id=run.id,
                slot=run.scheduled_for,
                labels=job.task_labels,
                timeout=self.app.config.dispatch_timeout_seconds,
            )
        except Exception as exc:
            return exc
        return None

    def _record(self, job: SchedulerJob, run: SchedulerRun, dispatched_at: Any, error: Exception | None) -> None:
        """Store the outcome of an immediate dispatch on the job and its run."""
        now = timezone.now()
        run.status = RunStatus.FAILED if error else RunStatus.DISPATCHED
        run.dispatched_at, run.finished_at, run.updated_at = dispatched_at, now, now
        run.broker_task_id = None if error else run.id
        run.claimed_by = run.lease_expires_at = None
        run.error = logs.describe_error(error) if error else None
        job.last_run_at, job.updated_at, job.finished_at = dispatched_at, now, now
        job.last_error = run.error
        job.last_dispatched_task_id = None if error else run.id  # counted when its run was written (``_create``)
        with transaction.atomic():
            job.save(
                update_fields=[
                    "last_run_at",
                    "updated_at",
                    "finished_at",
                    "last_error",
                    "dispatch_count",
                    "last_dispatched_task_id",
                ]
            )
            if error is None and not self.app.config.record_runs:
                run.delete()
            else:  # named fields only: the worker may already have written progress, outcome, error
                run.save(
                    update_fields=[
                        "status",
                        "dispatched_at",
                        "finished_at",
                        "updated_at",
                        "broker_task_id",
                        "claimed_by",
                        "lease_expires_at",
                        *(["error"] if error else []),
                    ]
                )
        extra = {**logs.job_extra(job.id, job.name, job.task_name, run.scheduled_for), "broker_task_id": run.id}
        if error is None:
            logger.info("Sent job %s at once (immediate dispatch), run %s.", logs.job_row(job), run.id, extra=extra)
        else:
            logger.error(
                "Immediate dispatch of job %s failed: %s; it is not retried (run_now sends it again).",
                logs.job_row(job),
                logs.error_text(error),
                exc_info=logs.traceback_at_debug(logger, error),
                extra=extra,
            )

    def _record_patiently(
        self, job: SchedulerJob, run: SchedulerRun, dispatched_at: Any, error: Exception | None
    ) -> None:
        """Record the send, trying again through a short database outage.

        The task is already with the broker: a run left pending would be sent again by an
        engine once its lease expires. After ``_RECORD_PATIENCE_SECONDS`` the error is
        raised, and that is what happens (at-least-once, with the same task id).
        """
        deadline = time.monotonic() + _RECORD_PATIENCE_SECONDS
        pause = 0.1
        while True:
            try:
                self._record(job, run, dispatched_at, error)
                return
            except DatabaseError as exc:
                if time.monotonic() + pause > deadline:
                    raise
                logger.warning(
                    "Recording the immediate dispatch of job %s (run %s) failed: %s; trying again in %s.",
                    logs.job_row(job),
                    run.id,
                    logs.error_text(exc),
                    logs.seconds(pause),
                    exc_info=logs.traceback_at_debug(logger, exc),
                    extra={**logs.job_row_extra(job), "run_id": run.id},
                )
                connection.close_if_unusable_or_obsolete()
                time.sleep(pause)
                pause *= 2

    def _dispatch_now(self, job: SchedulerJob, run: SchedulerRun, raise_errors: bool = True) -> None:
        dispatched_at = timezone.now()
        error = run_from_sync(self._send, job, run)
        self._record_patiently(job, run, dispatched_at, error)
        if error is not None and raise_errors:
            raise error

    async def _adispatch_now(self, job: SchedulerJob, run: SchedulerRun) -> None:
        dispatched_at = timezone.now()
        error = await self._send(job, run)
        await sync_to_async(self._record_patiently)(job, run, dispatched_at, error)
        if error is not None:
            raise error


class ChainScheduleBuilder(ScheduleBuilder):
    """Schedules a task chain: the orchestrator task with the chain as its kwargs."""

    def __init__(self, app: "SchedulerApp", *, chain: TaskChain, metadata: Any = None, labels: Any = None) -> None:
        super().__init__(app)
        self.chain = chain
        user_metadata = require_json(metadata, "metadata", dict)
        self._call = TaskCall(
            task_name=CHAIN_ORCHESTRATOR_TASK_NAME,
            args=[],
            kwargs=chain.to_payload(),
            metadata={"chain": True, "chain_step_count": len(chain.steps), **user_metadata},
            labels=require_labels(labels),
        )

    def task_call(self) -> TaskCall:
        require_result_backend(self.app.broker)
        for index, step in enumerate(self.chain.steps):
            try:
                task = find_task(self.app.broker, step.task_name)
            except UnknownTaskError as exc:
                raise SchedulerValidationError(f"steps[{index}].task", step.task_name, str(exc)) from None
            require_callable_with(task, step.args, step.kwargs, f"steps[{index}].")
        return self._call


class SingleScheduleBuilder(ScheduleBuilder):
    """Schedules one task with fixed args and kwargs."""

    def __init__(
        self,
        app: "SchedulerApp",
        *,
        task: Any,
        args: Any = None,
        kwargs: Any = None,
        metadata: Any = None,
        labels: Any = None,
    ) -> None:
        super().__init__(app)
        task_name = task_name_of(task)
        if task_name == CHAIN_ORCHESTRATOR_TASK_NAME:
            raise SchedulerValidationError(
                "task", task_name, "The chain orchestrator runs chains: schedule them with app.chain(steps=[...])."
            )
        self._call = TaskCall(
            task_name=task_name,
            args=require_json(args, "args", list),
            kwargs=require_json(kwargs, "kwargs", dict),
            metadata=require_json(metadata, "metadata", dict),
            labels=require_labels(labels),
        )

    def task_call(self) -> TaskCall:
        return self._call
