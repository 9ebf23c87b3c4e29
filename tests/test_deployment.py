"""The real deployment, end to end: Redis, two schedulers and a worker, all separate processes.

First scenarios of the multi-process suite: periodic, one-off and chain jobs sent once per slot
across two ``run_taskiq_beat`` processes and run by a ``taskiq worker``, outcomes included.
"""

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.utils import timezone

from django_taskiq_beat import ChainStep, IntervalTrigger, OneOffSchedule, PeriodicSchedule, get_scheduler_app
from django_taskiq_beat.models import SchedulerJob, SchedulerRun
from tests.processes import REPO, EngineProcess, child_env, redis_server, wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="Debian's redis-server is not installed (CI installs it: apt-get install redis-server)"),
]


@pytest.fixture
def deployment(tmp_path: Path, settings: object) -> Iterator[str]:
    """Redis, one worker and two schedulers on the test database; yields the Redis URL."""
    with redis_server(tmp_path) as url:
        env = child_env(REDIS_URL=url)
        with open(tmp_path / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "taskiq", "worker", "testproject.tasks:broker", "--workers", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            )
        engines = []
        try:
            for name in ("beat-1", "beat-2"):
                engine = EngineProcess(name, tmp_path, tmp_path / "unused-sink", {"SYNC_INTERVAL_SECONDS": 0.5},
                                       arguments=("--broker", "testproject.tasks:broker"))
                engine.env["REDIS_URL"] = url
                engines.append(engine.start())
            yield url
        finally:
            for engine in engines:
                engine.stop()
                print(f"----- {engine.name} -----\n{engine.log()}")
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
            print(f"----- worker -----\n{(tmp_path / 'worker.log').read_text(errors='replace')}")


def test_jobs_run_once_per_slot_across_processes_with_outcomes(deployment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", deployment)
    # This process only writes rows; the schedulers (other processes) pick them up through the database.
    app = get_scheduler_app()
    every_second = app.single(task="demo.heartbeat").schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=1)))
    once = app.single(task="demo.add", args=[2, 3]).schedule(OneOffSchedule(run_at=timezone.now()))
    chain = app.chain(steps=[ChainStep(task="demo.greet", args=["step one"]), ChainStep(task="demo.add", args=[1, 1])],
                      wait_poll_interval_seconds=0.1).schedule(OneOffSchedule(run_at=timezone.now()))

    def settled() -> bool:
        periodic_done = SchedulerRun.objects.filter(job=every_second, outcome="succeeded").count() >= 3
        others = SchedulerRun.objects.filter(job__in=[once, chain], outcome="succeeded").count() == 2
        return periodic_done and others

    wait_until(settled, timeout=60, what="three heartbeats, the one-off and the chain to succeed")
    app.pause(every_second.id)
    slots = Counter(SchedulerRun.objects.filter(job=every_second).values_list("scheduled_for", flat=True))
    assert set(slots.values()) == {1}, "a slot was sent twice"
    assert SchedulerRun.objects.filter(job=once).count() == 1
    chain_run = SchedulerRun.objects.get(job=chain)
    assert chain_run.progress["status"] == "succeeded"
    assert [step["status"] for step in chain_run.progress["steps"]] == ["succeeded", "succeeded"]
    assert SchedulerJob.objects.get(pk=once.pk).last_outcome == "succeeded"
