"""Outcomes recorded by a real ``taskiq worker`` process over a real Redis broker."""

import asyncio
import importlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.utils import timezone

from django_taskiq_beat import OneOffSchedule, SchedulerApp, SchedulerConfig
from django_taskiq_beat.models import SchedulerJob, SchedulerRun
from tests.processes import REPO, child_env, redis_server

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.processes,
    pytest.mark.skipif(
        shutil.which("redis-server") is None,
        reason="Debian's redis-server is not installed (CI installs it: apt-get install redis-server)",
    ),
]


@contextmanager
def worker_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SchedulerApp]:
    """A real ``taskiq worker`` on a throwaway Redis, and an app on the same broker module; the
    worker's log is printed at the end."""
    with worker_app(tmp_path, monkeypatch) as app:
        job = app.single(task="worker.boom").schedule(
            PeriodicSchedule(interval=IntervalTrigger(hours=1)), policy=SchedulePolicy(pause_after_failures=2)
        )
        async_to_sync(_fail_twice)(app, job.id)
    job = SchedulerJob.objects.get(pk=job.id)
    assert (job.state, job.consecutive_failures, job.next_run_at) == ("paused", 2, None)
    assert job.pause_note == "Paused after 2 failed runs in a row; the last: ValueError: broken in the worker"


async def _fail_twice(app: SchedulerApp, job_id: str) -> None:
    """Send the job twice through the engine, each time waiting for the worker's failed outcome."""
    try:
        for expected in (1, 2):
            await app.arun_now(job_id)
            assert await app.engine.run_once() == 1
            for _ in range(600):
                if await SchedulerRun.objects.filter(job_id=job_id, outcome="failed").acount() == expected:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"timed out waiting for failed outcome {expected}")
    finally:
        await app.broker.shutdown()
