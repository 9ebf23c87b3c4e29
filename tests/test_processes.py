"""Engines as separate processes: several at once, killed, signalled, cut off from the database.

Each engine is a real ``manage.py run_taskiq_beat`` process on the test database. Its
tasks append their task id to a sink file, so sends are counted across processes.
The engines' logs are printed when a test fails.
"""

import signal
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_taskiq_beat import OneOffSchedule, SchedulerApp, SchedulerConfig
from django_taskiq_beat.engine import _MAX_BATCHES_IN_FLIGHT
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from tests.process_broker import broker as process_broker
from tests.processes import EngineProcess, manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
requires_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL only; runs in the PostgreSQL pass of `make test`"
)
FAST = {"SYNC_INTERVAL_SECONDS": 0.5, "CLAIM_TTL_SECONDS": 2, "DISPATCH_RETRY_SECONDS": 1}

EngineFactory = Callable[..., EngineProcess]


@pytest.fixture
def sink(tmp_path: Path) -> Path:
    path = tmp_path / "sink.txt"
    path.touch()
    return path


@pytest.fixture
def engines(tmp_path: Path, sink: Path) -> Iterator[EngineFactory]:
    started: list[EngineProcess] = []

    def start(
        name: str, options: dict[str, Any] | None = None, send_delay: float = 0, arguments: tuple[str, ...] = ()
    ) -> EngineProcess:
        engine = EngineProcess(
            name, tmp_path, {**FAST, **(options or {})}, arguments=arguments, TEST_SINK=str(sink),
            TEST_SEND_DELAY=str(send_delay),
        ).start()
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.stop()
        print(f"----- log of {engine.name} -----\n{engine.log()}")


@pytest.fixture
def app() -> SchedulerApp:
    return SchedulerApp(broker=process_broker, config=SchedulerConfig(default_timezone="UTC"))


def sends(sink: Path) -> Counter[str]:
    return Counter(line for line in sink.read_text().splitlines() if line)


def schedule_due(app: SchedulerApp, count: int) -> list[str]:
    due = OneOffSchedule(run_at=timezone.now())
    return [app.single(task="test.record").schedule(due).id for _ in range(count)]


def all_dispatched(job_count: int) -> bool:
    return (
        SchedulerRun.objects.filter(status=RunStatus.DISPATCHED).count() >= job_count
        and not SchedulerRun.objects.filter(status=RunStatus.PENDING).exists()
    )


def assert_each_slot_dispatched_once(job_ids: list[str]) -> list[str]:
    runs = list(SchedulerRun.objects.values_list("job_id", "status", "id"))
    per_job = Counter(job_id for job_id, _, _ in runs)
    assert set(per_job) == set(job_ids) and set(per_job.values()) == {1}, "a slot has no run or several runs"
    assert {status for _, status, _ in runs} == {RunStatus.DISPATCHED}
    return [run_id for _, _, run_id in runs]


# -- lifecycle -----------------------------------------------------------------------------------------

def test_sigterm_stops_the_engine_with_exit_code_0(engines: EngineFactory) -> None:
    engine = engines("engine-term")
    engine.signal(signal.SIGTERM)
    assert engine.wait() == 0
    assert "Scheduler engine stopped." in engine.log() and "run_taskiq_beat stopped." in engine.log()


def test_sigint_stops_the_engine_with_exit_code_0(engines: EngineFactory) -> None:
    engine = engines("engine-int")
    engine.signal(signal.SIGINT)
    assert engine.wait() == 0


def test_log_level_option_sets_the_engine_loggers(engines: EngineFactory) -> None:
    engine = engines("engine-debug", arguments=("--log-level", "DEBUG"))
    wait_until(lambda: "Scheduler engine synced jobs from storage." in engine.log(), timeout=10, what="a DEBUG line")


def test_banner_names_database_broker_and_jobs(engines: EngineFactory, app: SchedulerApp) -> None:
    schedule_due(app, 2)
    log = engines("engine-banner", {"SYNC_INTERVAL_SECONDS": 30}).log()
    assert f"database : {connection.vendor}" in log
    assert "broker   : SlowInMemoryBroker (tests.process_broker:broker)" in log
    assert "jobs     : 2 total, 2 enabled" in log


def test_job_changed_in_another_process_is_picked_up_within_sync_interval(
    engines: EngineFactory, app: SchedulerApp, sink: Path
) -> None:
    engines("engine-sync", {"SYNC_INTERVAL_SECONDS": 1.0})
    (job_id,) = schedule_due(app, 1)  # this process cannot wake the engine: only the database tells it
    wait_until(lambda: SchedulerJob.objects.get(pk=job_id).dispatch_count == 1, timeout=10, what="the dispatch")
    run = SchedulerRun.objects.get(job_id=job_id)
    assert run.dispatched_at - run.scheduled_for < timedelta(seconds=3)  # sync interval 1 s, generous bound
    assert sends(sink) == Counter({run.id: 1})


# -- several engines: each slot exactly once ----------------------------------------------------------------

@pytest.mark.parametrize("vendor_note", ["postgresql: SKIP LOCKED", "sqlite: single writer"])
def test_three_engine_processes_dispatch_every_slot_exactly_once(
    engines: EngineFactory, app: SchedulerApp, sink: Path, vendor_note: str
) -> None:
    if not vendor_note.startswith(connection.vendor):
        pytest.skip(f"this case is for {vendor_note.split(':')[0]}; it runs in that pass of `make test`")
    slot = timezone.now() + timedelta(seconds=6)  # all three engines are up by then and race for it
    with transaction.atomic():
        job_ids = [app.single(task="test.record").schedule(OneOffSchedule(run_at=slot)).id for _ in range(300)]
    trio = [engines(name, {"DISPATCH_BATCH_SIZE": 20}, send_delay=0.002) for name in ("engine-1", "engine-2", "engine-3")]
    wait_until(lambda: all_dispatched(len(job_ids)), timeout=90, what="300 dispatches")
    assert not SchedulerRun.objects.filter(dispatched_at__lt=slot).exists(), "a slot claimed ahead went out early"
    run_ids = assert_each_slot_dispatched_once(job_ids)
    assert sends(sink) == Counter({run_id: 1 for run_id in run_ids})
    working = [engine.name for engine in trio if "Scheduler job dispatched." in engine.log()]
    assert len(working) >= 2, f"the engines did not share the work: only {working} dispatched"


@requires_postgres
def test_three_engines_as_concurrent_tasks_share_the_work(app: SchedulerApp, sink: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from asgiref.sync import async_to_sync

    monkeypatch.setenv("TEST_SINK", str(sink))
    apps = [
        SchedulerApp(broker=process_broker, config=SchedulerConfig(scheduler_id=f"task-{n}", dispatch_batch_size=25))
        for n in range(3)
    ]
    job_ids = schedule_due(app, 300)

    async def scenario() -> None:
        import asyncio

        await asyncio.gather(*(each.engine.run_once() for each in apps))

    async_to_sync(scenario)()
    run_ids = assert_each_slot_dispatched_once(job_ids)
    assert sends(sink) == Counter({run_id: 1 for run_id in run_ids})


# -- crashes and outages -----------------------------------------------------------------------------------------

def test_engine_killed_mid_burst_loses_no_slot(engines: EngineFactory, app: SchedulerApp, sink: Path) -> None:
    options = {"DISPATCH_BATCH_SIZE": 25, "DISPATCH_CONCURRENCY": 4}
    first = engines("engine-doomed", options, send_delay=0.02)
    job_ids = schedule_due(app, 300)
    wait_until(
        lambda: SchedulerRun.objects.filter(status=RunStatus.DISPATCHED).count() >= 50, timeout=60, what="the burst"
    )
    first.signal(signal.SIGKILL)
    first.wait()
    assert SchedulerRun.objects.filter(status=RunStatus.DISPATCHED).count() < 300, "the burst ended before the kill"
    engines("engine-restarted", options, send_delay=0.02)
    wait_until(lambda: all_dispatched(len(job_ids)), timeout=90, what="the restarted engine to finish the burst")
    run_ids = assert_each_slot_dispatched_once(job_ids)
    sent = sends(sink)
    assert set(sent) == set(run_ids), "every slot reached the broker"
    repeated = [run_id for run_id, count in sent.items() if count > 1]
    in_flight_bound = _MAX_BATCHES_IN_FLIGHT * options["DISPATCH_BATCH_SIZE"]
    assert len(repeated) <= in_flight_bound, "only batches in flight at the kill may be sent twice"


@requires_postgres
@pytest.mark.parametrize("health_checks", ["on", "off"])
def test_dropped_database_connections_are_reopened(
    engines: EngineFactory, app: SchedulerApp, sink: Path, monkeypatch: pytest.MonkeyPatch, health_checks: str
) -> None:
    monkeypatch.setenv("DB_HEALTH_CHECKS", health_checks)
    engine = engines("engine-cut", {"SYNC_INTERVAL_SECONDS": 0.2})

    def engine_backends(action: str = "1") -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count({action}) FROM pg_stat_activity WHERE application_name = %s", [engine.name]
            )
            return cursor.fetchone()[0]

    # The command's own connection, and the one the engine loop ticks on.
    wait_until(lambda: engine_backends() >= 2, timeout=10, what="the engine's connections")
    assert engine_backends("pg_terminate_backend(pid)") >= 2
    (job_id,) = schedule_due(app, 1)
    wait_until(lambda: SchedulerJob.objects.get(pk=job_id).dispatch_count == 1, timeout=30, what="the dispatch")
    if health_checks == "off":  # without Django's health check the broken connection surfaces once
        assert "Scheduler engine iteration failed; retrying." in engine.log()
    assert len(sends(sink)) == 1


# -- the command's errors ------------------------------------------------------------------------------------------

def test_bad_broker_path_exits_non_zero_with_a_clear_message() -> None:
    result = manage("run_taskiq_beat", "--broker", "tests.nowhere:broker")
    assert result.returncode != 0
    assert "tests.nowhere:broker" in result.stderr and "does not import" in result.stderr


def test_bad_broker_setting_is_reported_by_the_system_check() -> None:
    from tests.processes import child_env

    result = manage("run_taskiq_beat", env=child_env(TASKIQ_BEAT_OPTIONS='{"BROKER": "testproject.nowhere:broker"}'))
    assert result.returncode != 0 and "django_taskiq_beat.E003" in result.stderr


def test_unapplied_migrations_exit_non_zero(tmp_path: Path) -> None:
    from tests.processes import child_env

    env = child_env()
    env.pop("DATABASE_URL", None)
    env["SQLITE_PATH"] = str(tmp_path / "empty.sqlite3")
    result = manage("run_taskiq_beat", env=env)
    assert result.returncode != 0 and "Unapplied migrations" in result.stderr
