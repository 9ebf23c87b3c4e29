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

from django_taskiq_beat import (
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulePolicy,
    SchedulerApp,
    SchedulerConfig,
)
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
    with redis_server(tmp_path) as redis:
        monkeypatch.setenv("REDIS_URL", redis.url)
        module = importlib.reload(importlib.import_module("tests.worker_project.redis_broker"))
        log_path = tmp_path / "worker.log"
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskiq",
                    "worker",
                    "tests.worker_project.redis_broker:broker",
                    "--workers",
                    "1",
                ],
                env=child_env(REDIS_URL=redis.url),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,  # its worker processes too, to stop them all at the end
            )
        try:
            yield SchedulerApp(broker=module.broker, config=SchedulerConfig(default_timezone="UTC"))
        finally:
            os.killpg(worker.pid, signal.SIGKILL)  # the outcomes are in the database already, or never will be
            worker.wait(timeout=30)
            print(log_path.read_text(errors="replace"))


def test_worker_process_reports_outcomes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with worker_app(tmp_path, monkeypatch) as app:
        due = OneOffSchedule(run_at=timezone.now())
        jobs = {name: app.single(task=f"worker.{name}").schedule(due).id for name in ("ok", "boom", "sync")}
        outcomes = async_to_sync(_send_and_wait_for_outcomes)(app, len(jobs))
    assert outcomes[jobs["ok"]] == ("succeeded", None)
    assert outcomes[jobs["sync"]] == ("succeeded", None)
    assert outcomes[jobs["boom"]] == ("failed", "ValueError: broken in the worker")
    runs = SchedulerRun.objects.filter(job_id__in=jobs.values())
    assert all(run.started_at and run.completed_at and run.duration is not None for run in runs)
    assert SchedulerJob.objects.get(pk=jobs["boom"]).consecutive_failures == 1


async def _send_and_wait_for_outcomes(app: SchedulerApp, expected: int) -> dict[str, Any]:
    """One event loop for the Redis connections: send through the engine, poll the database."""
    try:
        assert await app.engine.run_once() == expected
        for _ in range(600):
            done = await sync_to_async(_finished_outcomes)()
            if len(done) == expected:
                return done
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after 30 s waiting for {expected} outcomes; got {done}")
    finally:
        await app.broker.shutdown()


def _finished_outcomes() -> dict[str, Any]:
    runs = SchedulerRun.objects.filter(outcome__in=["succeeded", "failed"])
    return {run.job_id: (run.outcome, run.error) for run in runs}


def test_a_real_worker_failing_twice_pauses_a_job_with_pause_after_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
