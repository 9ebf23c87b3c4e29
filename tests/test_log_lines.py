"""What operators read: each log line names its job, and an outage does not flood the log.

The message formats, in-process (``caplog``); then real processes: a 10 s Redis outage
seen in an engine's log, and a ``taskiq worker`` printing each of our lines once.
"""

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from taskiq import InMemoryBroker
from taskiq.kicker import AsyncKicker

from django_taskiq_beat import (
    CHAIN_ORCHESTRATOR_TASK_NAME,
    ChainStep,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulerApp,
    SchedulerConfig,
    TaskChain,
    claims,
    get_scheduler_app,
    logs,
)
from django_taskiq_beat.models import SchedulerJob, SchedulerRun
from django_taskiq_beat.sending import JOB_LABEL
from testproject.tasks import make_broker
from tests.conftest import UNREADABLE_TIMES, store_raw
from tests.processes import REPO, EngineProcess, child_env, redis_server, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
requires_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="Debian's redis-server is not installed"
)
ENGINE = "django_taskiq_beat.engine"


def run(coroutine_function: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(coroutine_function)()


@pytest.fixture
def app(broker: InMemoryBroker) -> SchedulerApp:
    config = SchedulerConfig(
        scheduler_id="engine-a",
        default_timezone="UTC",
        sync_interval_seconds=30,
        dispatch_retry_seconds=5,
        dispatch_retry_max_seconds=300,
        idle_sleep_seconds=0.05,
    )
    return SchedulerApp(broker=broker, config=config)


def broken_broker(broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refusing(message: Any) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379.\nConnection refused.")

    monkeypatch.setattr(broker, "kick", refusing)


def engine_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ENGINE]


# -- the message formats ------------------------------------------------------------------------------


def test_a_sent_slot_names_the_job_its_task_slot_and_run(app: SchedulerApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ENGINE)
    slot = timezone.now().replace(microsecond=0)
    job = app.single(task="system.echo").schedule(
        OneOffSchedule(run_at=slot), job_id="reports.nightly", name="Nightly report"
    )
    run(app.engine.run_once)
    (record,) = engine_records(caplog)
    run_id = SchedulerRun.objects.get(job=job).id
    assert record.getMessage() == (
        f"Sent job 'Nightly report' (reports.nightly), task system.echo, slot {slot:%H:%M:%S} UTC, run {run_id}."
    )
    assert (record.levelname, record.job_id, record.job_name, record.task_name) == (  # type: ignore[attr-defined]
        "INFO",
        "reports.nightly",
        "Nightly report",
        "system.echo",
    )
    assert record.broker_task_id == run_id  # type: ignore[attr-defined]
    assert record.scheduled_for == SchedulerRun.objects.get(job=job).scheduled_for.isoformat()  # type: ignore[attr-defined]


def test_a_failed_send_is_one_warning_with_the_error_the_retry_time_and_attempt(
    app: SchedulerApp, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ENGINE)
    broken_broker(broker, monkeypatch)
    job = app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now()), name="Nightly report")
    SchedulerJob.objects.filter(pk=job.pk).update(dispatch_failures=2)  # two failed sends in a row already
    run(app.engine.run_once)
    (record,) = engine_records(caplog)
    job.refresh_from_db()
    slot = SchedulerRun.objects.get(job=job).scheduled_for
    assert record.getMessage() == (
        f"Send of job 'Nightly report' ({job.id}), task system.echo, slot {logs.when(slot)} failed: ConnectionError:"
        f" Error 111 connecting to 127.0.0.1:6379. Connection refused.; retry at {logs.when(job.next_run_at)},"
        " attempt 4."
    )
    assert record.levelname == "WARNING" and record.exc_info is None  # the traceback is for DEBUG only
    assert job.dispatch_failures == 3 and job.next_run_at - slot > timedelta(seconds=19)  # 5 s doubled twice

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger=ENGINE)
    SchedulerJob.objects.filter(pk=job.pk).update(next_run_at=timezone.now())
    run(app.engine.run_once)
    (failed,) = [record for record in engine_records(caplog) if record.levelno >= logging.WARNING]
    assert failed.exc_info is not None and "attempt 5." in failed.getMessage()  # one record, its traceback with it


def test_a_periodic_jobs_retry_says_when_it_is_its_next_slot(
    app: SchedulerApp, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=ENGINE)
    broken_broker(broker, monkeypatch)
    job = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=2)))
    SchedulerJob.objects.filter(pk=job.pk).update(next_run_at=timezone.now())
    run(app.engine.run_once)
    job.refresh_from_db()
    (record,) = engine_records(caplog)
    assert record.getMessage().endswith(f"; retry at {logs.when(job.next_run_at)} (its next slot), attempt 2.")


def test_a_row_that_cannot_be_read_is_one_error_naming_the_job_the_column_and_the_retry(
    app: SchedulerApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ENGINE)
    job = app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now()), name="Nightly report")
    value = UNREADABLE_TIMES[connection.vendor][0]
    store_raw("scheduler_job", job.id, "next_run_at", value)
    run(app.engine.run_once)
    (record,) = engine_records(caplog)
    failed = SchedulerRun.objects.get(job=job)
    retry_at = SchedulerJob.objects.filter(pk=job.pk).values_list("next_run_at", flat=True).get()
    assert record.levelname == "ERROR" and record.job_id == job.id  # type: ignore[attr-defined]
    assert record.getMessage() == (
        f"Job 'Nightly report' ({job.id}), task system.echo, slot {logs.when(failed.scheduled_for)} cannot be sent:"
        f" UnusableRowError: next_run_at holds {value!r}, not a datetime; retry at {logs.when(retry_at)}, attempt 2."
    )


def test_names_are_quoted_and_nothing_stored_breaks_a_line() -> None:
    slot = timezone.now().replace(hour=14, minute=0, second=0, microsecond=0)
    assert logs.job("reports.nightly", "Nightly report", "reports.send", slot) == (
        f"'Nightly report' (reports.nightly), task reports.send, slot {slot.astimezone(UTC):%H:%M:%S} UTC"
    )
    assert logs.job("a\nb", "two\nlines") == "'two\\nlines' ('a\\nb')"
    assert logs.when(slot - timedelta(days=400)).endswith(" UTC") and len(logs.when(slot - timedelta(days=400))) == 23
    assert logs.one_line("a\n  b\tc") == "a b c"
    assert logs.count(1, "run") == "1 run" and logs.count(2, "run") == "2 runs"


# -- a failure that repeats: its traceback once, then a short line each time, then its end --------------------


def test_a_database_outage_prints_one_traceback_then_one_line_per_failed_tick_then_its_end(
    app: SchedulerApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ENGINE)
    real_claim, calls = claims.claim_due, [0]

    def down_for_five_ticks(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] <= 5:
            raise OperationalError('connection to server at "db" failed:\nConnection refused')
        return real_claim(*args)

    monkeypatch.setattr(claims, "claim_due", down_for_five_ticks)

    async def scenario() -> None:  # stops once the engine says it works again: no tick after that is waited for
        await app.start()
        deadline = time.monotonic() + 20
        while not any("works again" in r.getMessage() for r in engine_records(caplog)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await app.stop()

    run(scenario)
    lines = [record for record in engine_records(caplog) if "tick" in record.getMessage()]
    assert [(record.levelname, record.exc_info is not None) for record in lines] == [
        ("ERROR", True),
        *[("WARNING", False)] * 4,
        ("INFO", False),
    ]
    assert lines[0].getMessage() == (
        'Scheduler engine tick failed: OperationalError: connection to server at "db" failed: Connection refused;'
        " trying again in 0.1 s."
    )
    assert lines[1].getMessage().startswith("Scheduler engine tick failed again (2 in a row): OperationalError: ")
    assert re.fullmatch(r"Scheduler engine tick works again after 5 failures in [\d.]+ s\.", lines[-1].getMessage())


def test_an_outage_logs_its_first_failure_with_the_traceback_and_the_rest_without(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger(ENGINE)
    caplog.set_level(logging.INFO, logger=ENGINE)
    outage = logs.Outage(logger, "Scheduler engine heartbeat")
    for _ in range(3):
        outage.failed(OperationalError("gone"), 5)
    outage.succeeded()
    outage.succeeded()  # nothing more to say
    assert caplog.messages[:3] == [
        "Scheduler engine heartbeat failed: OperationalError: gone; trying again in 5 s.",
        "Scheduler engine heartbeat failed again (2 in a row): OperationalError: gone; trying again in 5 s.",
        "Scheduler engine heartbeat failed again (3 in a row): OperationalError: gone; trying again in 5 s.",
    ]
    assert caplog.messages[3].startswith("Scheduler engine heartbeat works again after 3 failures in ")
    assert len(caplog.records) == 4 and [r.exc_info is not None for r in caplog.records] == [True, False, False, False]


# -- real processes --------------------------------------------------------------------------------

OUTAGE_SECONDS = 10
JOB_COUNT = 50
# A failed send is retried after 1 s, then every 2 s: at most 5 retries in a 10 s outage.
OPTIONS = {"SYNC_INTERVAL_SECONDS": 0.5, "DISPATCH_RETRY_SECONDS": 1, "DISPATCH_RETRY_MAX_SECONDS": 2}
RETRIES_IN_OUTAGE = 5
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+) (?P<message>.*)$")


@requires_redis
@pytest.mark.processes
def test_a_ten_second_broker_outage_logs_one_line_per_job_per_retry(tmp_path: Path) -> None:
    app = get_scheduler_app()
    with redis_server(tmp_path) as redis:
        engine = EngineProcess("beat-outage", tmp_path, OPTIONS, broker="testproject.tasks:broker", REDIS_URL=redis.url)
        try:
            engine.start()
            first = app.single(task="demo.heartbeat").schedule(OneOffSchedule(run_at=timezone.now()))
            wait_until(
                lambda: SchedulerRun.objects.filter(job=first, status="dispatched").exists(),
                timeout=30,
                what="a send with the broker up",
            )
            redis.stop()
            outage_from = len(engine.log())
            stopped = time.monotonic()
            with transaction.atomic():
                job_ids = [
                    app.single(task="demo.heartbeat").schedule(OneOffSchedule(run_at=timezone.now())).id
                    for _ in range(JOB_COUNT)
                ]
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
            outage = engine.log()[outage_from:]
            redis.start()
            wait_until(
                lambda: SchedulerRun.objects.filter(job_id__in=job_ids, status="dispatched").count() == JOB_COUNT,
                timeout=60,
                what="every job to be sent once the broker is back",
            )
        finally:
            engine.stop()
            print(f"----- {engine.name} -----\n{engine.log()}")
    lines = outage.splitlines()
    print(f"{len(lines)} log lines during the {OUTAGE_SECONDS} s outage")
    assert len(lines) <= JOB_COUNT * (1 + RETRIES_IN_OUTAGE) + 10
    assert "Traceback" not in outage, "a traceback at INFO level"
    parsed = [match for line in lines if (match := LOG_LINE.match(line))]
    assert len(parsed) == len(lines), "a log line that is not one record (a traceback, a multi-line message)"
    failed_sends = [match["message"] for match in parsed if match["message"].startswith("Send of job ")]
    assert failed_sends and all(match["level"] == "WARNING" for match in parsed if match["message"] in failed_sends)
    named = Counter(job_id for message in failed_sends for job_id in job_ids if f"job {job_id}," in message)
    assert sum(named.values()) == len(failed_sends), "a failed send's line does not name its job"
    assert set(named) == set(job_ids), "a job whose failed sends were not logged"
    assert max(named.values()) <= 1 + RETRIES_IN_OUTAGE
    assert all(", task demo.heartbeat, slot " in message and "; retry at " in message for message in failed_sends)


@requires_redis
def test_a_worker_prints_each_of_our_lines_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """taskiq's worker configures the root logger; the project's LOGGING must not add a second handler."""
    with redis_server(tmp_path) as redis:
        log_path = tmp_path / "worker.log"
        with open(log_path, "ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "taskiq", "worker", "testproject.tasks:broker", "--workers", "1"],
                env=child_env(REDIS_URL=redis.url),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        try:
            monkeypatch.setenv("REDIS_URL", redis.url)
            broker = make_broker()
            chain = TaskChain(
                steps=[ChainStep(task="demo.greet", args=["once"]), ChainStep(task="demo.add", args=[1, 2])],
                wait_poll_interval_seconds=0.1,
            )

            async def send_chain() -> None:
                await broker.startup()
                try:
                    await AsyncKicker(CHAIN_ORCHESTRATOR_TASK_NAME, broker, {JOB_LABEL: "nightly-chain"}).kiq(
                        **chain.to_payload()
                    )
                finally:
                    await broker.shutdown()

            async_to_sync(send_chain)()
            wait_until(lambda: "[demo.add] 1 + 2 = 3" in log_path.read_text(), timeout=60, what="the chain's last step")
            time.sleep(1)  # the orchestrator sees the result within its poll interval and logs the chain's end
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
            print(f"----- worker -----\n{log_path.read_text(errors='replace')}")
    ours = [line for line in log_path.read_text().splitlines() if "django_taskiq_beat" in line]
    assert len(ours) == 3, "each of the chain's three lines (two steps, the chain) printed once"
    assert [line.split(" django_taskiq_beat.chains ", 1)[1] for line in ours] == [
        "Chain of job nightly-chain: step 0 (demo.greet) completed, attempt 1 of 1.",
        "Chain of job nightly-chain: step 1 (demo.add) completed, attempt 1 of 1.",
        "Chain of job nightly-chain completed: 2 steps, chain attempt 1.",
    ]
