"""The real deployment, end to end: Redis, two schedulers and a worker, all separate processes.

Periodic, cron, one-off and chain jobs sent once per slot by two ``run_taskiq_beat`` processes
and run by a ``taskiq worker`` with two processes, outcomes included; then the failures a
deployment meets: a scheduler SIGKILLed while it holds a claim, a worker killed mid-task, a
chain step failing, Redis stopped for seconds. "Once" is checked where a duplicate would show:
in the Redis stream, which keeps every message sent. Every process's log is printed at
teardown, so a failing test shows them.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from redis import Redis
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
    pytest.mark.processes,
    pytest.mark.skipif(
        shutil.which("redis-server") is None,
        reason="Debian's redis-server is not installed (CI installs it: apt-get install redis-server)",
    ),
]

# Short leases and retries, so a killed scheduler or a Redis outage shows within seconds.
SCHEDULER_OPTIONS = {
    "SYNC_INTERVAL_SECONDS": 0.5,
    "CLAIM_TTL_SECONDS": 2,
    "DISPATCH_RETRY_SECONDS": 1,
    "DISPATCH_RETRY_MAX_SECONDS": 2,
}
# Seen within SYNC_INTERVAL_SECONDS and sent at once, with slack for seven processes on two cores.
ON_TIME = timedelta(seconds=3)


@dataclass
class Deployment:
    redis: RedisServer
    log_dir: Path
    schedulers: list[EngineProcess] = field(default_factory=list)
    worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        """``taskiq worker`` with two processes, so a chain's steps can run beside its orchestrator."""
        with open(self.log_dir / "worker.log", "ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "taskiq", "worker", "testproject.tasks:broker", "--workers", "2"],
                env=child_env(REDIS_URL=self.redis.url),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group; a graceful stop takes taskiq ~30 s."""
        if self.worker is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=30)

    def sends(self) -> Counter[str]:
        """How many times each task id was put on the broker (the stream keeps acknowledged messages)."""
        with Redis.from_url(self.redis.url) as client:
            return Counter(json.loads(fields[b"data"])["task_id"] for _, fields in client.xrange("taskiq"))

    def assert_sent_once(self, runs: Iterable[SchedulerRun]) -> None:
        """Each dispatched run reached the broker exactly once; a failed one never did."""
        sends = self.sends()
        for run in runs:
            expected = 1 if run.status == "dispatched" else 0
            assert sends[run.id] == expected, f"run {run.id} ({run.status}) was put on the broker {sends[run.id]} times"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """Redis, one worker and two schedulers on the test database; all their logs are printed at the end."""
    with redis_server(tmp_path) as redis:
        running = Deployment(redis, tmp_path)
        try:
            running.start_worker()
            for name in ("beat-1", "beat-2"):
                engine = EngineProcess(
                    name, tmp_path, SCHEDULER_OPTIONS, broker="testproject.tasks:broker", REDIS_URL=redis.url
                )
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


def lags(runs: Iterable[SchedulerRun]) -> list[timedelta]:
    return [run.dispatched_at - run.scheduled_for for run in runs if run.dispatched_at is not None]


def test_jobs_run_once_per_slot_and_on_time_across_processes_with_outcomes(deployment: Deployment) -> None:
    # This process only writes rows; the schedulers (other processes) pick them up through the database.
    app = get_scheduler_app()
    every_second = app.single(task="demo.heartbeat").schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=1)))
    once = app.single(task="demo.add", args=[2, 3]).schedule(OneOffSchedule(run_at=timezone.now()))
    chain = app.chain(
        steps=[ChainStep(task="demo.greet", args=["step one"]), ChainStep(task="demo.add", args=[1, 1])],
        wait_poll_interval_seconds=0.1,
    ).schedule(OneOffSchedule(run_at=timezone.now()))

    def settled() -> bool:
        periodic_done = SchedulerRun.objects.filter(job=every_second, outcome="succeeded").count() >= 3
        others = SchedulerRun.objects.filter(job__in=[once, chain], outcome="succeeded").count() == 2
        return periodic_done and others

    wait_until(settled, timeout=60, what="three heartbeats, the one-off and the chain to succeed")
    app.pause(every_second.id)
    wait_until(
        lambda: not SchedulerRun.objects.filter(status="pending").exists(),
        timeout=10,
        what="the last claimed slot to be sent",
    )
    runs = list(SchedulerRun.objects.all())
    deployment.assert_sent_once(runs)
    slots = sorted(run.scheduled_for for run in runs if run.job_id == every_second.id)
    assert all(later - earlier == timedelta(seconds=1) for earlier, later in pairwise(slots)), "a slot was skipped"
    assert max(lags(runs)) < ON_TIME
    assert SchedulerRun.objects.filter(job=once).count() == 1
    chain_run = SchedulerRun.objects.get(job=chain)
    assert chain_run.progress["status"] == "succeeded"
    assert [(step["task_name"], step["status"]) for step in chain_run.progress["steps"]] == [
        ("demo.greet", "succeeded"),
        ("demo.add", "succeeded"),
    ]
    worker_log = (deployment.log_dir / "worker.log").read_text(errors="replace")
    assert worker_log.index("[demo.greet] Hello, step one!") < worker_log.index("[demo.add] 1 + 1 = 2"), (
        "the chain's steps did not run one after the other"
    )
    assert SchedulerJob.objects.get(pk=once.pk).last_outcome == "succeeded"


def test_a_cron_job_fires_on_time_and_a_scheduler_killed_holding_a_claim_loses_no_slot(
    deployment: Deployment,
) -> None:
    app = get_scheduler_app()
    job = app.single(task="demo.heartbeat").schedule(
        PeriodicSchedule(crontab=CrontabTrigger.from_expression("* * * * * *", "UTC"))  # every second
    )
    wait_until(
        lambda: SchedulerRun.objects.filter(job=job, outcome="succeeded").count() >= 2,
        timeout=30,
        what="the first cron slots",
    )
    held = kill_a_scheduler_holding_an_unsent_claim(deployment, job)
    wait_until(
        lambda: (
            SchedulerRun.objects.filter(job=job, scheduled_for__gt=held.scheduled_for, outcome="succeeded").count() >= 3
        ),
        timeout=60,
        what="the surviving scheduler to go on",
    )
    app.pause(job.id)
    wait_until(
        lambda: not SchedulerRun.objects.filter(job=job).exclude(outcome="succeeded").exists(),
        timeout=30,
        what="the last slots to finish",
    )
    taken_over = SchedulerRun.objects.get(pk=held.pk)
    assert taken_over.status == "dispatched", "the killed scheduler's claim was never sent"
    runs = list(SchedulerRun.objects.filter(job=job))
    deployment.assert_sent_once(runs)
    slots = sorted(run.scheduled_for for run in runs)
    assert all(later - earlier == timedelta(seconds=1) for earlier, later in pairwise(slots)), "a slot was lost"
    # The killed scheduler's slot waited for its 2 s lease; the others were on time.
    assert taken_over.dispatched_at - taken_over.scheduled_for < timedelta(seconds=10)
    assert sorted(lags(runs))[len(runs) // 2] < timedelta(seconds=1)


def kill_a_scheduler_holding_an_unsent_claim(deployment: Deployment, job: SchedulerJob) -> SchedulerRun:
    """SIGKILL the scheduler holding a claimed slot it has not sent; returns that slot's run.

    The holder is frozen (SIGSTOP) first, then checked: still pending and not in the stream
    means not sent, so the kill loses it unless another scheduler takes it over. Otherwise it
    is let go (SIGCONT) and the next claim is tried.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        claimed = SchedulerRun.objects.filter(job=job, status="pending", claimed_by__isnull=False).first()
        if claimed is None:
            time.sleep(0.01)
            continue
        holder = next(engine for engine in deployment.schedulers if engine.name == claimed.claimed_by)
        holder.signal(signal.SIGSTOP)
        time.sleep(0.05)  # a command already on its way to Redis lands
        if SchedulerRun.objects.filter(pk=claimed.pk, status="pending").exists() and not deployment.sends()[claimed.id]:
            holder.signal(signal.SIGKILL)
            holder.wait()
            return claimed
        holder.signal(signal.SIGCONT)
    raise AssertionError("timed out after 30 s waiting for a scheduler to hold an unsent claim")


def test_a_worker_killed_mid_task_leaves_the_run_visibly_running(
    deployment: Deployment, admin_client: Any, settings: Any
) -> None:
    app = get_scheduler_app()
    job = app.single(task="demo.sleep", args=[30]).schedule(OneOffSchedule(run_at=timezone.now()))
    wait_until(
        lambda: SchedulerRun.objects.filter(job=job, status="dispatched", outcome="running").exists(),
        timeout=30,
        what="the worker to start the long task",
    )
    deployment.kill_worker()
    deployment.start_worker()  # a worker coming back does not finish the run it never saw end
    time.sleep(3)
    run = SchedulerRun.objects.get(job=job)
    assert (run.status, run.outcome, run.completed_at) == ("dispatched", "running", None)
    settings.TASKIQ_BEAT = {**settings.TASKIQ_BEAT, "STALE_RUN_SECONDS": 1}  # it started more than 3 s ago
    page = admin_client.get("/admin/django_taskiq_beat/schedulerrun/").content.decode()
    assert "stale</strong>: running since" in page


def test_stopping_redis_delays_dispatches_and_loses_none(deployment: Deployment) -> None:
    app = get_scheduler_app()
    periodic = app.single(task="demo.heartbeat").schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=2)))
    wait_until(
        lambda: SchedulerRun.objects.filter(job=periodic, outcome="succeeded").exists(),
        timeout=30,
        what="the periodic job to run once",
    )
    deployment.redis.stop()
    stopped_at = timezone.now()
    due_during_outage = [
        app.single(task="demo.add", args=[number, number]).schedule(
            OneOffSchedule(run_at=stopped_at + timedelta(seconds=number))
        )
        for number in range(3)
    ]
    wait_until(
        lambda: (
            SchedulerRun.objects.filter(job__in=due_during_outage, status="failed").values("job").distinct().count()
            == 3
        ),
        timeout=30,
        what="the schedulers to try each one-off job and fail",
    )
    time.sleep(max(0.0, 5 - (timezone.now() - stopped_at).total_seconds()))  # a five-second outage
    restarted_at = timezone.now()
    deployment.redis.start()
    answering_at = timezone.now()

    def all_ran() -> bool:
        one_offs = SchedulerRun.objects.filter(job__in=due_during_outage, outcome="succeeded").count() >= 3
        periodic_again = (
            SchedulerRun.objects.filter(job=periodic, outcome="succeeded", dispatched_at__gt=restarted_at).count() >= 2
        )
        return one_offs and periodic_again

    wait_until(all_ran, timeout=60, what="the one-off jobs and the periodic job to run after Redis came back")
    app.pause(periodic.id)
    wait_until(
        lambda: not SchedulerRun.objects.filter(status="pending").exists(),
        timeout=10,
        what="the last claimed slot to be sent",
    )
    deployment.assert_sent_once(SchedulerRun.objects.all())
    for job in due_during_outage:
        sent = SchedulerRun.objects.get(job=job, status="dispatched")  # exactly one
        assert restarted_at <= sent.dispatched_at < restarted_at + timedelta(seconds=10)
        assert SchedulerJob.objects.get(pk=job.pk).dispatch_failures == 0
    # The periodic job's slots in the outage were tried, recorded as failed, and folded into
    # one prompt send after it (a retry never goes past the next regular slot).
    assert SchedulerRun.objects.filter(job=periodic, status="failed", dispatched_at__gt=stopped_at).exists()
    first_after = SchedulerRun.objects.filter(
        job=periodic, status="dispatched", dispatched_at__gt=restarted_at
    ).earliest("dispatched_at")
    assert first_after.dispatched_at - restarted_at < timedelta(seconds=6)
    assert all(run.error for run in SchedulerRun.objects.filter(status="failed")), "a failed dispatch without its error"
    # Connections the outage broke are replaced, not used for one more failing send.
    assert not SchedulerRun.objects.filter(status="failed", dispatched_at__gt=answering_at).exists()


def test_a_chain_step_failing_in_the_worker_fails_the_chain_and_stops_it(deployment: Deployment) -> None:
    app = get_scheduler_app()
    chain = app.chain(
        steps=[
            ChainStep(task="demo.greet", args=["first"]),
            ChainStep(task="demo.add", args=["one", 1]),
            ChainStep(task="demo.greet", args=["never"]),
        ],
        wait_poll_interval_seconds=0.1,
    ).schedule(OneOffSchedule(run_at=timezone.now()))
    wait_until(
        lambda: SchedulerRun.objects.filter(job=chain, outcome="failed").exists(), timeout=60, what="the chain to fail"
    )
    run = SchedulerRun.objects.get(job=chain)
    assert [step["status"] for step in run.progress["steps"]] == ["succeeded", "failed", "pending"]
    assert "TypeError" in run.progress["steps"][1]["error"]
    assert run.progress["status"] == "failed"
    assert "demo.add" in run.error
    assert SchedulerJob.objects.get(pk=chain.pk).last_outcome == "failed"


@pytest.fixture
def redis_not_started(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server on a free port that a test starts later, or never."""
    redis = RedisServer(tmp_path)
    yield redis
    redis.stop()
    with contextlib.suppress(FileNotFoundError):
        print(f"----- redis -----\n{(tmp_path / 'redis.log').read_text(errors='replace')}")


@contextlib.contextmanager
def scheduler(redis: RedisServer, log_dir: Path, name: str = "beat-early") -> Iterator[EngineProcess]:
    engine = EngineProcess(name, log_dir, SCHEDULER_OPTIONS, broker="testproject.tasks:broker", REDIS_URL=redis.url)
    try:
        yield engine.start()
    finally:
        engine.stop()
        print(f"----- {engine.name} -----\n{engine.log()}")


def test_the_scheduler_starts_with_redis_down_and_sends_once_redis_is_up(
    redis_not_started: RedisServer, tmp_path: Path
) -> None:
    app = get_scheduler_app()
    with scheduler(redis_not_started, tmp_path) as engine:
        wait_until(
            lambda: "Broker startup failed (try 2), next try at " in engine.log(),
            timeout=30,
            what="the scheduler to retry the broker's startup",
        )
        job = app.single(task="demo.add", args=[1, 2]).schedule(OneOffSchedule(run_at=timezone.now()))
        wait_until(
            lambda: SchedulerRun.objects.filter(job=job, status="failed").exists(),
            timeout=30,
            what="a send to fail while Redis is down",
        )
        redis_not_started.start()
        wait_until(
            lambda: SchedulerRun.objects.filter(job=job, status="dispatched").exists(),
            timeout=30,
            what="the send once Redis is up",
        )
        wait_until(lambda: "Broker started (try " in engine.log(), timeout=60, what="the broker's startup")
        run = SchedulerRun.objects.get(job=job, status="dispatched")
        with Redis.from_url(redis_not_started.url) as client:
            sent = [json.loads(fields[b"data"])["task_id"] for _, fields in client.xrange("taskiq")]
        assert sent == [run.id]
    failed_tries = [line for line in engine.log().splitlines() if "Broker startup failed" in line]
    assert all(line.split()[2:4] == ["WARNING", "django_taskiq_beat.engine"] for line in failed_tries)
    assert f"connecting to 127.0.0.1:{redis_not_started.port}" in failed_tries[0]


def test_sigterm_while_the_broker_is_down_exits_0(redis_not_started: RedisServer, tmp_path: Path) -> None:
    with scheduler(redis_not_started, tmp_path) as engine:
        wait_until(lambda: "Broker startup failed (try 1)" in engine.log(), timeout=30, what="a failed broker startup")
        engine.signal(signal.SIGTERM)
        assert engine.wait() == 0
        assert "run_taskiq_beat stopped." in engine.log()


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
