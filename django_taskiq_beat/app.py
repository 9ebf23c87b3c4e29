"""``SchedulerApp``: the one entry point for code, admin and command alike."""

import functools
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone
from taskiq import AsyncBroker

from django_taskiq_beat import claims, logs
from django_taskiq_beat.builders import ChainScheduleBuilder, SingleScheduleBuilder
from django_taskiq_beat.chains import ChainStep, TaskChain, register_chain_orchestrator
from django_taskiq_beat.conf import SETTINGS_NAME, SchedulerConfig, broker_path, load_broker
from django_taskiq_beat.engine import BeatEngine, SchedulerHealthSnapshot
from django_taskiq_beat.exceptions import JobNotFoundError, SchedulerValidationError
from django_taskiq_beat.models import SchedulerJob, SchedulerRun, read_job
from django_taskiq_beat.payloads import require_text
from django_taskiq_beat.triggers import require_aware, slots_between

logger = logging.getLogger("django_taskiq_beat.app")
_MAX_NOTE_LENGTH = 1000
_MAX_BACKFILL_SLOTS = 1000

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _async_twin(
    method: Callable[Concatenate["SchedulerApp", _P], _R],
) -> Callable[Concatenate["SchedulerApp", _P], Coroutine[Any, Any, _R]]:
    """The ``a``-prefixed twin: the same implementation, run off the event loop."""

    @functools.wraps(method)
    async def twin(self: "SchedulerApp", *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await sync_to_async(method)(self, *args, **kwargs)

    twin.__doc__ = f"Async twin of ``{method.__name__}``."
    return twin


class SchedulerApp:
    """Schedules tasks on ``broker`` and manages the stored jobs.

    ``config`` defaults to ``settings.TASKIQ_BEAT``. Every operation has a sync form
    and an async twin with Django's ``a`` prefix (``aget_job``, ``apause``, ``aresume``,
    ``arun_now``, ``adelete``, ``apurge_runs``, ``abackfill``).
    """

    def __init__(self, *, broker: AsyncBroker, config: SchedulerConfig | None = None) -> None:
        if not isinstance(broker, AsyncBroker):
            raise ImproperlyConfigured(f"broker={broker!r} is not a taskiq broker.")
        self.broker = broker
        self.config = config if config is not None else SchedulerConfig.from_settings()
        self.engine = BeatEngine(broker, self.config)
        register_chain_orchestrator(broker)

    async def start(self) -> None:
        """Start the beat engine in the running event loop (``run_taskiq_beat`` does this)."""
        logger.info("Starting scheduler app.")
        await self.engine.start()
        logger.info("Scheduler app started.")

    async def stop(self) -> None:
        """Stop the engine after the batch in flight."""
        logger.info("Stopping scheduler app.")
        await self.engine.stop()
        logger.info("Scheduler app stopped.")

    def get_health_snapshot(self) -> SchedulerHealthSnapshot:
        """Counters and timestamps of this process's engine (see ``SchedulerHealthSnapshot``)."""
        return self.engine.snapshot()

    def job_changed(self) -> None:
        """Tell this process's engine to look again once the current transaction commits."""
        transaction.on_commit(self.engine.wake)

    def single(
        self, *, task: Any, args: Any = None, kwargs: Any = None, metadata: Any = None, labels: Any = None
    ) -> SingleScheduleBuilder:
        """A builder for one task with fixed ``args`` / ``kwargs``; ``metadata`` is stored only,
        ``labels`` (scalar taskiq labels, e.g. for routing or priority) go with every message."""
        return SingleScheduleBuilder(self, task=task, args=args, kwargs=kwargs, metadata=metadata, labels=labels)

    def chain(
        self,
        *,
        steps: list[ChainStep],
        on_failure: str = "stop",
        max_chain_attempts: int = 1,
        default_step_max_attempts: int = 1,
        default_step_retry_delay_seconds: float = 0.0,
        default_step_timeout_seconds: float | None = None,
        wait_poll_interval_seconds: float = 0.5,
        metadata: Any = None,
        labels: Any = None,
    ) -> ChainScheduleBuilder:
        """A builder for steps run one after another by the orchestrator task (see docs/chains.md)."""
        chain = TaskChain(
            steps=steps,
            on_failure=on_failure,
            max_chain_attempts=max_chain_attempts,
            default_step_max_attempts=default_step_max_attempts,
            default_step_retry_delay_seconds=default_step_retry_delay_seconds,
            default_step_timeout_seconds=default_step_timeout_seconds,
            wait_poll_interval_seconds=wait_poll_interval_seconds,
        )
        return ChainScheduleBuilder(self, chain=chain, metadata=metadata, labels=labels)

    # -- managing jobs -------------------------------------------------------------

    def get_job(self, job_id: str) -> SchedulerJob:
        """The job ``job_id``; raises ``JobNotFoundError``."""
        job = read_job(SchedulerJob.objects.filter(pk=_job_id(job_id)).first, job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    def pause(self, job_id: str, note: str | None = None) -> SchedulerJob:
        """Stop the job until it is resumed; its pending slot is dropped.

        ``paused_at`` records when, and ``note`` (stored as ``pause_note``) why; pausing a
        paused job keeps when it began and replaces the note if one is given.
        """
        if note is not None:
            require_text("note", note, max_length=_MAX_NOTE_LENGTH)
        said = f" (note: {logs.one_line(note)!r})" if note else ""
        return self._change(job_id, "Paused job %s%s.", lambda job, now: job.disarm(now, note), said)

    def resume(self, job_id: str) -> SchedulerJob:
        """Re-enable the job on its next slot from now; a finished job stays finished."""
        return self._change(job_id, "Resumed job %s.", _resume)

    def run_now(self, job_id: str) -> SchedulerJob:
        """Make the job due at once, whatever its state: a pause is cleared, a finished job sent again."""
        return self._change(job_id, "Marked job %s to run now.", _run_now)

    def delete(self, job_id: str) -> None:
        """Delete the job and its run history."""
        with transaction.atomic():
            job = self._locked(job_id, "id", "name", "task_name")  # a row with unreadable columns can still go
            named, extra = logs.job_row(job), logs.job_row_extra(job)  # delete() clears the id
            job.delete()
            self.job_changed()
        logger.info("Deleted job %s and its runs.", named, extra=extra)

    def backfill(self, job_id: str, start: datetime, end: datetime) -> int:
        """Send every slot of the job's trigger in [start, end) that is already past, each its own run.

        Idempotent per slot: a slot that has a run already (sent, failed, skipped or backfilled
        before) is left alone. Returns how many runs it wrote; an engine sends them within
        ``SYNC_INTERVAL_SECONDS`` (a paused job's once it is resumed), each failed send again after
        a backoff. Backfilled sends do not count against ``max_runs``. More than 1,000 slots raise
        ``SchedulerValidationError``.
        """
        start, end = require_aware(start, "start"), require_aware(end, "end")
        if end <= start:
            raise SchedulerValidationError("end", end, "Must be after start.")
        job = self.get_job(job_id)
        now = timezone.now()
        slots = slots_between(job.trigger, job.created_at, start, min(end, now), _MAX_BACKFILL_SLOTS)
        written = claims.backfill(job.id, slots, now)
        self.job_changed()
        logger.info(
            "Backfilled job %s from %s to %s: %s written, %d slot%s had one already.",
            logs.job_row(job),
            logs.when(start),
            logs.when(min(end, now)),
            logs.count(written, "run"),
            len(slots) - written,
            "" if len(slots) - written == 1 else "s",
            extra={**logs.job_row_extra(job), "backfilled_run_count": written, "slot_count": len(slots)},
        )
        return written

    def purge_runs(self, *, finished_before: datetime) -> int:
        """Delete runs that finished before ``finished_before``; returns how many."""
        cutoff = require_aware(finished_before, "finished_before")
        deleted, _ = SchedulerRun.objects.filter(finished_at__lt=cutoff).delete()
        logger.info(
            "Purged run history: %s finished before %s.",
            logs.count(deleted, "run"),
            logs.when(cutoff),
            extra={"deleted_run_count": deleted, "finished_before": cutoff.isoformat()},
        )
        return deleted

    aget_job = _async_twin(get_job)
    apause = _async_twin(pause)
    aresume = _async_twin(resume)
    arun_now = _async_twin(run_now)
    adelete = _async_twin(delete)
    apurge_runs = _async_twin(purge_runs)
    abackfill = _async_twin(backfill)

    def _locked(self, job_id: str, *fields: str) -> SchedulerJob:
        job = SchedulerJob.objects.locked(_job_id(job_id), *fields)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    def _change(
        self, job_id: str, message: str, change: Callable[[SchedulerJob, datetime], None], *message_args: str
    ) -> SchedulerJob:
        """Change the job under its row lock; ``message`` gets the job's description, then ``message_args``."""
        with transaction.atomic():
            job = self._locked(job_id)
            now = timezone.now()
            change(job, now)
            job.updated_at = now
            job.save()
            self.job_changed()
        logger.info(message, logs.job_row(job), *message_args, extra=logs.job_row_extra(job))
        return job


def _job_id(job_id: Any) -> str:
    """A job id that can be looked up on every database (a NUL would be a database error)."""
    return require_text("job_id", job_id)


def _resume(job: SchedulerJob, now: datetime) -> None:
    if job.pause_after_failures is not None:  # its failures are counted anew, or the next one would pause it again
        job.consecutive_failures = 0
    job.unpause()
    if not job.is_finished:
        job.arm(now)


def _run_now(job: SchedulerJob, now: datetime) -> None:
    job.is_enabled, job.next_run_at, job.finished_at = True, now, None
    job.run_now_at = now  # this slot does not count against max_runs
    job.unpause()
    job.release_claim()


@functools.cache
def get_scheduler_app() -> SchedulerApp:
    """The process-wide app built from ``settings.TASKIQ_BEAT``."""
    path = broker_path()
    if not path:
        raise ImproperlyConfigured(f"Set {SETTINGS_NAME}['BROKER'] to 'package.module:broker'.")
    return SchedulerApp(broker=load_broker(path), config=SchedulerConfig.from_settings())


@receiver(setting_changed)
def _forget_app_on_settings_change(setting: str, **kwargs: Any) -> None:
    if setting in (SETTINGS_NAME, "TIME_ZONE"):
        get_scheduler_app.cache_clear()
