"""The engine registry: each engine's row in ``scheduler_engine``, its heartbeat, and when it may call others dead.

An engine writes its row when it starts, beats every ``heartbeat_seconds`` (one UPDATE of
``heartbeat_at`` and its counters) and sets ``stopped_at`` on a clean exit. A pending run
claimed by an engine that stopped, or whose heartbeat is older than
``engine_dead_after_seconds``, is re-sent by a live engine at once (``claims.claim_expired``)
instead of at the end of its lease.

The heartbeat runs on a thread and database connection of its own: slow sends, a long
cleanup or a tick waiting on a lock never delay it. Its times are the database's clock
(``DatabaseNow()``), so engines on hosts whose clocks disagree do not misjudge each other.

An engine judges others only while its own heartbeats reach the database on time (at most
two intervals apart), and only once they have done so for ``engine_dead_after_seconds``
with no failed tick meanwhile. An outage that cuts every engine off stops every heartbeat;
after it, each engine waits that long again, by which time every live engine has beaten,
so none takes over another's runs.
"""

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django_taskiq_beat import logs
from django_taskiq_beat.conf import SchedulerConfig
from django_taskiq_beat.dbthread import DatabaseThread
from django_taskiq_beat.models import DatabaseNow, SchedulerEngine

logger = logging.getLogger("django_taskiq_beat.engine")

RETENTION_DAYS = 7  # rows of engines stopped or dead longer ago than this are deleted by the engine's cleanup


def beat(engine_id: str, counts: Mapping[str, int], starting: bool) -> None:
    """One UPDATE of the heartbeat and counters; at start, or if the row is gone, the whole row."""
    row: dict[str, Any] = {"heartbeat_at": DatabaseNow(), **counts}
    if starting:
        row.update(_identity())
    if not SchedulerEngine.objects.filter(pk=engine_id).update(**row):
        SchedulerEngine.objects.create(id=engine_id, **{**_identity(), **row})


def _identity() -> dict[str, Any]:
    from django_taskiq_beat import __version__

    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "version": __version__,
        "started_at": DatabaseNow(),
        "stopped_at": None,
    }


def mark_stopped(engine_id: str, counts: Mapping[str, int]) -> None:
    SchedulerEngine.objects.filter(pk=engine_id).update(stopped_at=DatabaseNow(), heartbeat_at=DatabaseNow(), **counts)


def delete_engines_silent_since(cutoff: datetime) -> int:
    """Rows of engines whose last heartbeat (or stop) is older than ``cutoff``."""
    deleted, _ = SchedulerEngine.objects.filter(heartbeat_at__lt=cutoff).delete()
    return deleted


class Heartbeat:
    """Keeps this engine's row alive and knows whether this engine may judge other engines' heartbeats."""

    def __init__(self, config: SchedulerConfig, counts: Callable[[], Mapping[str, int]]) -> None:
        self.engine_id = config.scheduler_id
        self._interval = config.heartbeat_seconds
        self._on_time = 2 * config.heartbeat_seconds  # the longest gap between beats of a connected engine
        self._dead_after = timedelta(seconds=config.engine_dead_after_seconds)
        self._counts = counts
        self._thread = DatabaseThread(f"taskiq-beat-heartbeat-{self.engine_id}")
        self._task: asyncio.Task[None] | None = None
        self._connected_since: float | None = None  # monotonic: since when the beats have been on time
        self._last_beat = 0.0

    def start(self) -> None:
        self._thread.start()
        self._connected_since = None
        self._task = asyncio.create_task(self._beat_until_stopped(), name=f"taskiq-beat-heartbeat-{self.engine_id}")

    async def stop(self) -> None:
        """Stop beating and mark the row stopped; with the database away the row is left to look dead."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        try:
            await self._thread(mark_stopped, self.engine_id, self._counts())
        except Exception as exc:
            logger.warning(
                "Could not mark this engine stopped (%s); it counts as dead once its heartbeat is old.",
                logs.error_text(exc),
            )
        finally:
            await self._thread.close()

    def disconnected(self) -> None:
        """The database failed this engine (a tick or a lease renewal): stop judging others for a while."""
        self._connected_since = None

    def dead_after(self) -> timedelta | None:
        """``engine_dead_after_seconds`` while this engine may call others dead; None while it may not."""
        now = time.monotonic()
        if self._connected_since is None or now - self._last_beat > self._on_time:
            return None
        return self._dead_after if now - self._connected_since >= self._dead_after.total_seconds() else None

    async def _beat_until_stopped(self) -> None:
        starting = True
        beats = logs.Outage(logger, "Scheduler engine heartbeat")
        while True:
            try:
                await self._thread(beat, self.engine_id, self._counts(), starting)
            except Exception as exc:
                beats.failed(exc, self._interval)
            else:
                beats.succeeded()
                starting = False
                self._beaten(time.monotonic())
            await asyncio.sleep(self._interval)

    def _beaten(self, now: float) -> None:
        """A beat later than ``_on_time`` after the last one means the database was away: start counting again."""
        if self._connected_since is None or now - self._last_beat > self._on_time:
            self._connected_since = now
        self._last_beat = now
