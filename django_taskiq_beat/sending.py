"""Handing a job's task to the broker, from async and from sync code.

Every message carries the run id as its taskiq ``task_id`` and two scalar labels
naming the job and the run, so the worker side can report back.
"""

import asyncio
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync, async_to_sync
from django.utils import timezone
from taskiq import AsyncBroker
from taskiq.decor import AsyncTaskiqDecoratedTask

from django_taskiq_beat import logs
from django_taskiq_beat.discovery import discover_tasks

JOB_LABEL = "scheduler_job_id"
RUN_LABEL = "scheduler_run_id"
SLOT_LABEL = "scheduler_slot"
_BROKER_RETRY_FIRST_SECONDS = 1.0
_BROKER_RETRY_MAX_SECONDS = 30.0

logger = logging.getLogger("django_taskiq_beat.engine")

_T = TypeVar("_T")
_started_brokers: "weakref.WeakSet[AsyncBroker]" = weakref.WeakSet()
_startups: "weakref.WeakKeyDictionary[AsyncBroker, asyncio.Future[None]]" = weakref.WeakKeyDictionary()


class UnknownTaskError(LookupError):
    """The broker has no task of that name, even after importing every app's task modules."""

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name
        super().__init__(f"Task '{task_name}' is not registered in Taskiq.")


def find_task(broker: AsyncBroker, task_name: str) -> AsyncTaskiqDecoratedTask[Any, Any]:
    """The broker's task called ``task_name``; imports the installed apps' task modules if needed."""
    task = broker.find_task(task_name)
    if task is None:
        discover_tasks()
        task = broker.find_task(task_name)
    if task is None:
        raise UnknownTaskError(task_name)
    return task


async def ensure_broker_started(broker: AsyncBroker) -> None:
    """Start the broker on first use, unless a worker or the caller already did.

    Concurrent first sends wait for the same startup.
    """
    if broker.is_worker_process or broker in _started_brokers:
        return
    startup = _startups.get(broker)
    if startup is None or startup.get_loop() is not asyncio.get_running_loop():
        startup = _startups[broker] = asyncio.ensure_future(broker.startup())
    try:
        await asyncio.shield(startup)
    finally:
        if startup.done():
            _startups.pop(broker, None)
    _started_brokers.add(broker)


async def start_broker_until_up(broker: AsyncBroker, timeout: float) -> None:
    """Start the broker, trying again with capped exponential backoff until it answers.

    Each failed try is one WARNING line with the error and the next try's time; a try
    taking longer than ``timeout`` counts as failed. Sends meanwhile share the startup
    in flight (``ensure_broker_started``), or fail and are retried like any failed send.
    """
    delay = _BROKER_RETRY_FIRST_SECONDS
    for attempt in itertools.count(1):
        try:
            async with asyncio.timeout(timeout):
                await ensure_broker_started(broker)
        except Exception as exc:
            error = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else logs.error_text(exc)
            next_try = logs.when(timezone.now() + timedelta(seconds=delay))
            logger.warning(
                "Broker startup failed (try %d), next try at %s: %s",
                attempt,
                next_try,
                error,
                exc_info=logs.traceback_at_debug(logger, exc),
            )
            await asyncio.sleep(delay)
            delay = min(2 * delay, _BROKER_RETRY_MAX_SECONDS)
        else:
            if attempt > 1:
                logger.info("Broker started (try %d).", attempt)
            return


async def send_task(
    broker: AsyncBroker,
    task_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    job_id: str,
    run_id: str,
    slot: datetime,
    labels: dict[str, Any],
    timeout: float,
) -> str:
    """Send the task with the run id as ``task_id``; return the broker's task id.

    The job's ``labels`` go with it, then the scheduler's own: the job, the run and the
    slot (ISO 8601, UTC).

    A broker that has not taken it within ``timeout`` seconds raises ``TimeoutError``
    saying so (asyncio's own has no message, only a cancelled cause).
    """
    task = find_task(broker, task_name)
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            await ensure_broker_started(broker)
            sent = await (
                task.kicker()
                .with_task_id(run_id)
                .with_labels(
                    **labels, **{JOB_LABEL: job_id, RUN_LABEL: run_id, SLOT_LABEL: slot.astimezone(UTC).isoformat()}
                )
                .kiq(*args, **kwargs)
            )
    except TimeoutError:
        if not limit.expired():
            raise
        raise TimeoutError(f"no answer from the broker within {timeout:g} s") from None
    return sent.task_id


def run_from_sync(function: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
    """Run a coroutine function from sync code, on a loop that outlives the call.

    Under ``sync_to_async`` (an async caller, ASGI) it runs on the caller's loop.
    Anywhere else (WSGI, shells, commands) it runs on one background loop per process,
    so a broker's connections stay bound to one loop across calls.
    """
    if _caller_event_loop() is not None:
        return async_to_sync(function)(*args)
    return asyncio.run_coroutine_threadsafe(function(*args), _background_loop()).result()


def _caller_event_loop() -> asyncio.AbstractEventLoop | None:
    # asgiref records the async caller's loop in this thread-local (AsyncToSync reads it too)
    # and never clears it, so a loop that has finished is no caller.
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return loop if loop is not None and loop.is_running() else None


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="taskiq-beat-send", daemon=True).start()
        return _loop


def _forget_parent_state() -> None:
    """A forked child (gunicorn --preload) has no send thread and has started no broker."""
    global _loop, _loop_lock
    _loop, _loop_lock = None, threading.Lock()
    _started_brokers.clear()
    _startups.clear()


os.register_at_fork(after_in_child=_forget_parent_state)
