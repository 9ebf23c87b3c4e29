"""The real deployment, end to end: Redis, two schedulers and a worker, all separate processes.

Periodic, cron, one-off and chain jobs sent once per slot by two ``run_taskiq_beat`` processes
and run by a ``taskiq worker``, outcomes included; then the failures a deployment meets: a
scheduler SIGKILLed, a worker killed mid-task, a chain step failing, Redis stopped for seconds.
Every process's log is printed at teardown, so a failing test shows them.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from taskiq.kicker import AsyncKicker

from django_taskiq_beat import (
    ChainStep,
    CrontabTrigger,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    get_scheduler_app,
)
from django_taskiq_beat.models import SchedulerJob, SchedulerRun
from testproject.tasks import make_broker
from tests.processes import REPO, EngineProcess, RedisServer, child_env, redis_server, wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="Debian's redis-server is not installed (CI installs it: apt-get install redis-server)"),
]


# Short leases and retries, so a killed scheduler or a Redis outage shows within seconds.
SCHEDULER_OPTIONS = {"SYNC_INTERVAL_SECONDS": 0.5, "CLAIM_TTL_SECONDS": 2,
                     "DISPATCH_RETRY_SECONDS": 1, "DISPATCH_RETRY_MAX_SECONDS": 2}


@dataclass
class Deployment:
    redis: RedisServer
    worker: subprocess.Popen[bytes]
    schedulers: list[EngineProcess]

    def kill_worker(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=30)


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    """Redis, one worker and two schedulers on the test database; all their logs are printed at the end."""
    with redis_server(tmp_path) as redis:
        url = redis.url
        monkeypatch.setenv("REDIS_URL", url)
        with open(tmp_path / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "taskiq", "worker", "testproject.tasks:broker", "--workers", "1"],
                env=child_env(REDIS_URL=url), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            )
        running = Deployment(redis, worker, [])
        try:
            for name in ("beat-1", "beat-2"):
                engine = EngineProcess(name, tmp_path, tmp_path / "unused-sink", SCHEDULER_OPTIONS,
                                       arguments=("--broker", "testproject.tasks:broker"))
                engine.env["REDIS_URL"] = url
                running.schedulers.append(engine)
                engine.start()
            yield running
        finally:
            for engine in running.schedulers:
                engine.stop()
                print(f"----- {engine.name} -----\n{engine.log()}")
            running.kill_worker()
            for name in ("worker", "redis"):
                print(f"----- {name} -----\n{(tmp_path / f'{name}.log').read_text(errors='replace')}")


def test_jobs_run_once_per_slot_across_processes_with_outcomes(deployment: Deployment) -> None:
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


def test_a_cron_job_fires_on_time_and_a_killed_scheduler_loses_no_slot(deployment: Deployment) -> None:
    app = get_scheduler_app()
    job = app.single(task="demo.heartbeat").schedule(
        PeriodicSchedule(crontab=CrontabTrigger.from_expression("* * * * * *", "UTC"))  # every second
    )
    wait_until(lambda: SchedulerRun.objects.filter(job=job, outcome="succeeded").count() >= 2, timeout=30,
               what="the first cron slots")
    killed = deployment.schedulers[0]
    killed.signal(signal.SIGKILL)
    killed.wait()
    before = SchedulerRun.objects.filter(job=job).count()
    wait_until(lambda: SchedulerRun.objects.filter(job=job, outcome="succeeded").count() >= before + 3, timeout=60,
               what="the surviving scheduler to go on")
    app.pause(job.id)
    wait_until(lambda: not SchedulerRun.objects.filter(job=job).exclude(outcome="succeeded").exists(), timeout=30,
               what="the last slots to finish")
    slots = sorted(SchedulerRun.objects.filter(job=job).values_list("scheduled_for", flat=True))
    assert all(later - earlier == timedelta(seconds=1) for earlier, later in zip(slots, slots[1:], strict=False)), (
        "a slot was lost or sent twice"
    )
    lags = [r.dispatched_at - r.scheduled_for for r in SchedulerRun.objects.filter(job=job)]
    assert max(lags) < timedelta(seconds=10)  # a slot the killed scheduler held waits for its 2 s lease
    assert sorted(lags)[len(lags) // 2] < timedelta(seconds=1)  # on time in the normal case


def test_a_worker_killed_mid_task_leaves_the_run_visibly_running(
    deployment: Deployment, admin_client: Any, settings: Any
) -> None:
    app = get_scheduler_app()
    job = app.single(task="demo.sleep", args=[30]).schedule(OneOffSchedule(run_at=timezone.now()))
    wait_until(lambda: SchedulerRun.objects.filter(job=job, outcome="running").exists(), timeout=30,
               what="the worker to start the long task")
    deployment.kill_worker()
    run = SchedulerRun.objects.get(job=job)
    assert (run.status, run.outcome, run.completed_at) == ("dispatched", "running", None)
    settings.TASKIQ_BEAT = {**settings.TASKIQ_BEAT, "STALE_RUN_SECONDS": 0.1}
    time.sleep(0.3)  # longer than the threshold
    page = admin_client.get("/admin/django_taskiq_beat/schedulerrun/").content.decode()
    assert "stale</strong>: running since" in page


def test_stopping_redis_delays_dispatches_and_loses_none(deployment: Deployment) -> None:
    app = get_scheduler_app()
    periodic = app.single(task="demo.heartbeat").schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=2)))
    wait_until(lambda: SchedulerRun.objects.filter(job=periodic, outcome="succeeded").exists(), timeout=30,
               what="the periodic job to run once")
    deployment.redis.stop()
    stopped_at = timezone.now()
    due_during_outage = [
        app.single(task="demo.add", args=[number, number]).schedule(
            OneOffSchedule(run_at=stopped_at + timedelta(seconds=number))
        )
        for number in range(3)
    ]
    wait_until(lambda: SchedulerRun.objects.filter(job__in=due_during_outage, status="failed").count() >= 3,
               timeout=30, what="the schedulers to try the one-off jobs and fail")
    time.sleep(max(0.0, 5 - (timezone.now() - stopped_at).total_seconds()))  # a five-second outage
    restarted_at = timezone.now()
    deployment.redis.start()
    answering_at = timezone.now()

    def all_ran() -> bool:
        one_offs = SchedulerRun.objects.filter(job__in=due_during_outage, outcome="succeeded").count() == 3
        periodic_again = SchedulerRun.objects.filter(
            job=periodic, outcome="succeeded", dispatched_at__gt=restarted_at
        ).count() >= 2
        return one_offs and periodic_again

    wait_until(all_ran, timeout=60, what="the one-off jobs and the periodic job to run after Redis came back")
    app.pause(periodic.id)
    for job in due_during_outage:
        sent = SchedulerRun.objects.get(job=job, status="dispatched")  # exactly one
        assert restarted_at <= sent.dispatched_at < restarted_at + timedelta(seconds=10)
        assert SchedulerJob.objects.get(pk=job.pk).dispatch_failures == 0
    # The periodic job's slots in the outage were tried, recorded as failed, and folded into
    # one prompt send after it (a retry never goes past the next regular slot).
    assert SchedulerRun.objects.filter(job=periodic, status="failed", dispatched_at__gt=stopped_at).exists()
    first_after = SchedulerRun.objects.filter(job=periodic, status="dispatched", dispatched_at__gt=restarted_at).earliest(
        "dispatched_at"
    )
    assert first_after.dispatched_at - restarted_at < timedelta(seconds=4)
    assert all(run.error for run in SchedulerRun.objects.filter(status="failed")), "a failed dispatch without its error"
    # Connections the outage broke are replaced, not used for one more failing send.
    assert not SchedulerRun.objects.filter(status="failed", dispatched_at__gt=answering_at).exists()


def test_a_chain_step_failing_in_the_worker_fails_the_chain_and_stops_it(deployment: Deployment) -> None:
    app = get_scheduler_app()
    chain = app.chain(
        steps=[ChainStep(task="demo.greet", args=["first"]), ChainStep(task="demo.add", args=["one", 1]),
               ChainStep(task="demo.greet", args=["never"])],
        wait_poll_interval_seconds=0.1,
    ).schedule(OneOffSchedule(run_at=timezone.now()))
    wait_until(lambda: SchedulerRun.objects.filter(job=chain, outcome="failed").exists(), timeout=60,
               what="the chain to fail")
    run = SchedulerRun.objects.get(job=chain)
    assert [step["status"] for step in run.progress["steps"]] == ["succeeded", "failed", "pending"]
    assert "TypeError" in run.progress["steps"][1]["error"]
    assert run.progress["status"] == "failed"
    assert "demo.add" in run.error
    assert SchedulerJob.objects.get(pk=chain.pk).last_outcome == "failed"


def test_the_redis_broker_sends_at_once_after_a_redis_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart closes the connections in the client's pool; the next send must not fail on one."""
    with redis_server(tmp_path) as redis:
        monkeypatch.setenv("REDIS_URL", redis.url)
        broker = make_broker()

        async def send() -> None:
            await AsyncKicker("demo.heartbeat", broker, {}).kiq()

        async def scenario() -> None:
            await broker.startup()
            try:
                await send()
                redis.stop()
                redis.start()
                await send()
            finally:
                await broker.shutdown()

        async_to_sync(scenario)()
