"""Engines as separate processes: several at once, killed, signalled, cut off from the database.

Each engine is a real ``manage.py run_taskiq_beat`` process on the test database. Its
tasks append their task id to a sink file, so sends are counted across processes.
The engines' logs are printed when a test fails.
"""

import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_taskiq_beat import OneOffSchedule, SchedulerApp, SchedulerConfig, __version__
from django_taskiq_beat.engine import _MAX_BATCHES_IN_FLIGHT
from django_taskiq_beat.models import RunStatus, SchedulerEngine, SchedulerJob, SchedulerRun
from tests import faults
from tests.conftest import UNREADABLE_TIMES, store_raw
from tests.process_broker import broker as process_broker
from tests.processes import EngineProcess, child_env, manage, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]
requires_row_locks = pytest.mark.skipif(
    connection.vendor == "sqlite", reason="row locks; runs in the PostgreSQL and MariaDB passes of `make test`"
)
requires_sqlite = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="SQLite only; runs in the SQLite pass of `make test`"
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
    logins: list[str] = []

    def start(
        name: str,
        options: dict[str, Any] | None = None,
        send_delay: float = 0,
        arguments: tuple[str, ...] = (),
        database_user: str | None = None,
        **env: str,
    ) -> EngineProcess:
        if database_user is None:  # MariaDB: a login of the engine's name, by which a test finds its sessions
            database_user = faults.engine_login(name)
            logins.extend([database_user] if database_user else [])
        engine = EngineProcess(
            name,
            tmp_path,
            {**FAST, **(options or {})},
            arguments=arguments,
            database_user=database_user,
            TEST_SINK=str(sink),
            TEST_SEND_DELAY=str(send_delay),
            **env,
        ).start()
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.stop()
        print(f"----- log of {engine.name} -----\n{engine.log()}")
    for login in logins:
        faults.drop_login(login)


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


def test_banner_names_version_database_broker_and_jobs(engines: EngineFactory, app: SchedulerApp) -> None:
    schedule_due(app, 2)
    log = engines("engine-banner", {"SYNC_INTERVAL_SECONDS": 30}).log()
    assert f"django-taskiq-beat {__version__} engine\n  versions : Django " in log
    assert f"database : {connection.vendor}" in log
    assert "broker   : SlowInMemoryBroker (tests.process_broker:broker)" in log
    assert "jobs     : 2 total, 2 enabled" in log


def sent_run(job_id: str) -> bool:
    """The job's run is recorded as sent (its claim counted it on the job before the send)."""
    return SchedulerRun.objects.filter(job_id=job_id, status=RunStatus.DISPATCHED).exists()


def test_job_changed_in_another_process_is_picked_up_within_sync_interval(
    engines: EngineFactory, app: SchedulerApp, sink: Path
) -> None:
    engines("engine-sync", {"SYNC_INTERVAL_SECONDS": 1.0})
    (job_id,) = schedule_due(app, 1)  # this process cannot wake the engine: only the database tells it
    wait_until(lambda: sent_run(job_id), timeout=10, what="the dispatch")
    run = SchedulerRun.objects.get(job_id=job_id)
    assert run.dispatched_at - run.scheduled_for < timedelta(seconds=3)  # sync interval 1 s, generous bound
    assert sends(sink) == Counter({run.id: 1})


# -- several engines: each slot exactly once ----------------------------------------------------------------


@pytest.mark.parametrize("vendor_note", ["postgresql: SKIP LOCKED", "sqlite: single writer", "mysql: SKIP LOCKED"])
def test_three_engine_processes_dispatch_every_slot_exactly_once(
    engines: EngineFactory, app: SchedulerApp, sink: Path, vendor_note: str
) -> None:
    if not vendor_note.startswith(connection.vendor):
        pytest.skip(f"this case is for {vendor_note.split(':')[0]}; it runs in that pass of `make test`")
    slot = timezone.now() + timedelta(seconds=6)  # all three engines are up by then and race for it
    with transaction.atomic():
        job_ids = [app.single(task="test.record").schedule(OneOffSchedule(run_at=slot)).id for _ in range(300)]
    trio = [
        engines(name, {"DISPATCH_BATCH_SIZE": 20}, send_delay=0.002) for name in ("engine-1", "engine-2", "engine-3")
    ]
    wait_until(lambda: all_dispatched(len(job_ids)), timeout=90, what="300 dispatches")
    assert not SchedulerRun.objects.filter(dispatched_at__lt=slot).exists(), "a slot claimed ahead went out early"
    run_ids = assert_each_slot_dispatched_once(job_ids)
    assert sends(sink) == Counter(dict.fromkeys(run_ids, 1))
    working = [engine.name for engine in trio if "INFO django_taskiq_beat.engine Sent job " in engine.log()]
    assert len(working) >= 2, f"the engines did not share the work: only {working} dispatched"


@requires_row_locks
def test_three_engines_as_concurrent_tasks_share_the_work(
    app: SchedulerApp, sink: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    assert sends(sink) == Counter(dict.fromkeys(run_ids, 1))


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


@requires_row_locks
@pytest.mark.parametrize("health_checks", ["on", "off"])
def test_dropped_database_connections_are_reopened(
    engines: EngineFactory, app: SchedulerApp, sink: Path, monkeypatch: pytest.MonkeyPatch, health_checks: str
) -> None:
    monkeypatch.setenv("DB_HEALTH_CHECKS", health_checks)
    engine = engines("engine-cut", {"SYNC_INTERVAL_SECONDS": 0.2})

    # The command's own connection, the one the engine loop ticks on and the heartbeat's: all of them, or
    # the tick's may open only after the others were cut and see nothing broken. (The outcome writer's, on
    # PostgreSQL and MariaDB, opens at its first store, after the cut.)
    wait_until(lambda: faults.sessions(engine.name) >= 3, timeout=10, what="the engine's connections")
    assert faults.cut_sessions(engine.name) >= 3
    (job_id,) = schedule_due(app, 1)
    wait_until(lambda: sent_run(job_id), timeout=30, what="the dispatch")
    if health_checks == "off":  # without Django's health check the broken connection surfaces once
        assert "ERROR django_taskiq_beat.engine Scheduler engine tick failed: OperationalError: " in engine.log()
    assert len(sends(sink)) == 1


# -- the engine registry: heartbeats, and taking over from a killed engine ---------------------------------------


def test_an_engine_keeps_its_row_beating_counting_and_marks_it_stopped(
    engines: EngineFactory, app: SchedulerApp
) -> None:
    engine = engines("engine-registered", {"HEARTBEAT_SECONDS": 0.5, "ENGINE_DEAD_AFTER_SECONDS": 2})
    wait_until(lambda: SchedulerEngine.objects.filter(pk=engine.name).exists(), timeout=10, what="the engine's row")
    first = SchedulerEngine.objects.get(pk=engine.name)
    assert engine.process is not None
    assert (first.hostname, first.pid, first.version, first.stopped_at) == (
        socket.gethostname(),
        engine.process.pid,
        __version__,
        None,
    )
    schedule_due(app, 2)
    wait_until(
        lambda: SchedulerEngine.objects.get(pk=engine.name).dispatched_count == 2,
        timeout=10,
        what="the counters in a heartbeat",
    )
    assert SchedulerEngine.objects.get(pk=engine.name).heartbeat_at > first.heartbeat_at
    engine.signal(signal.SIGTERM)
    assert engine.wait() == 0
    stopped = SchedulerEngine.objects.get(pk=engine.name)
    assert stopped.stopped_at is not None and stopped.dispatched_count == 2


def test_a_killed_engines_claimed_slots_are_sent_once_it_is_declared_dead_not_at_its_lease(
    engines: EngineFactory, app: SchedulerApp, sink: Path
) -> None:
    """Default heartbeat (5 s) and dead-after (15 s); the default 60 s lease cannot be what frees the slots."""
    dead_after = timedelta(seconds=SchedulerConfig().engine_dead_after_seconds)
    defaults = {"CLAIM_TTL_SECONDS": 60}
    survivor = engines("engine-survivor", defaults)
    victim = engines("engine-victim", {**defaults, "CLAIM_AHEAD_SECONDS": 10})
    slot = timezone.now() + timedelta(seconds=8)  # claimed at once by the victim, which sends when it comes
    with transaction.atomic():
        job_ids = [app.single(task="test.record").schedule(OneOffSchedule(run_at=slot)).id for _ in range(5)]
    claimed = SchedulerRun.objects.filter(status=RunStatus.PENDING, claimed_by=victim.name)
    wait_until(lambda: claimed.count() == 5, timeout=10, what="the victim to claim the slots ahead")
    victim.signal(signal.SIGSTOP)  # frozen, then checked: it holds five claims and has sent none
    assert claimed.count() == 5 and not sends(sink)
    victim.signal(signal.SIGKILL)
    victim.wait()
    killed_at = timezone.now()
    last_beat = SchedulerEngine.objects.get(pk=victim.name).heartbeat_at
    wait_until(lambda: all_dispatched(len(job_ids)), timeout=40, what="the survivor to send the victim's slots")
    run_ids = assert_each_slot_dispatched_once(job_ids)
    assert sends(sink) == Counter(dict.fromkeys(run_ids, 1)), "a slot was sent twice"
    sent_at = sorted(SchedulerRun.objects.values_list("dispatched_at", flat=True))
    print(f"sent {sent_at[-1] - killed_at} after the kill, {sent_at[0] - last_beat} after the last heartbeat")
    assert sent_at[0] > last_beat + dead_after, "taken over while the victim's heartbeat was fresh"
    assert sent_at[-1] - killed_at < dead_after + timedelta(seconds=2)
    assert "Re-sending runs left pending by a stopped or dead engine: 5 runs (" in survivor.log()


# -- database outages after a send: each slot still goes out once --------------------------------------------
#
# The engine sends a batch slowly; when the first sends reach the sink the database goes away for longer
# than a lease (and than the three tries after which the engine used to give up), then comes back.

# 20 slots at 0.1 s each, two at a time: a second of sending. A short idle sleep makes the failed ticks'
# backoff short, so the engine tries to store many times during the outage.
SLOW_BATCH = {"DISPATCH_CONCURRENCY": 2, "IDLE_SLEEP_SECONDS": 0.05}
OUTAGE_SECONDS = 4


def sending_a_batch(engine: EngineProcess, app: SchedulerApp, sink: Path) -> list[str]:
    """Schedule 20 due slots at once and wait until the engine has begun sending them."""
    with transaction.atomic():
        job_ids = schedule_due(app, 20)
    wait_until(lambda: bool(sends(sink)), timeout=30, what=f"{engine.name} to start sending")
    return job_ids


def assert_sent_once(job_ids: list[str], sink: Path) -> None:
    wait_until(lambda: all_dispatched(len(job_ids)), timeout=60, what="every run to be recorded dispatched")
    run_ids = assert_each_slot_dispatched_once(job_ids)
    assert sends(sink) == Counter(dict.fromkeys(run_ids, 1)), "a slot was sent more than once"


def assert_outage_logged_briefly(engine: EngineProcess) -> None:
    """A failing activity (tick, lease renewal, heartbeat) prints one traceback, then a line a try, then its end."""
    wait_until(lambda: " works again after " in engine.log(), timeout=10, what="a line saying the outage ended")
    log = engine.log()
    tracebacks = [line for line in log.splitlines() if " ERROR django_taskiq_beat.engine " in line]
    short_lines = [line for line in log.splitlines() if " failed again (" in line]
    ended = log.count(" works again after ")
    assert tracebacks and len(tracebacks) <= 3 + ended, f"a traceback per try, not per outage: {tracebacks}"
    assert short_lines, "the tries after the first one"


def sql(statement: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement)


@pytest.fixture
def cut_off_role() -> Iterator[str]:
    """A login of its own for the engine a test cuts off (set up before the engines, so it outlives them)."""
    role = "engine-cut-off"
    if connection.vendor == "postgresql":
        sql(f'CREATE ROLE "{role}" LOGIN SUPERUSER')
    else:
        faults.engine_login(role)
    yield role
    faults.refuse_logins(role, True)
    if connection.vendor == "postgresql":
        faults.cut_sessions(role)
        sql(f'DROP ROLE "{role}"')
    else:
        faults.drop_login(role)


@contextmanager
def cut_off(engine: EngineProcess, role: str) -> Iterator[list[int]]:
    """Cut the engine's connections again and again, and refuse its new ones, until the block ends.

    Yields the count of sessions cut so far. Terminating backends alone is no outage: a new
    connection commits within a millisecond or two, before the next terminate finds it.
    """
    done = threading.Event()
    cuts = [0]

    def cut() -> None:
        try:
            while not done.wait(0.02):
                cuts[0] += faults.cut_sessions(engine.name)
        finally:
            connection.close()  # this thread's own connection

    faults.refuse_logins(role, True)
    cutter = threading.Thread(target=cut)
    cutter.start()
    try:
        yield cuts
    finally:
        done.set()
        cutter.join()
        faults.refuse_logins(role, False)


@requires_sqlite
def test_sqlite_write_lock_after_a_send_costs_no_repeated_send(
    engines: EngineFactory, app: SchedulerApp, sink: Path
) -> None:
    engine = engines("engine-locked-out", SLOW_BATCH, send_delay=0.1, SQLITE_TIMEOUT_SECONDS="0.2")
    job_ids = sending_a_batch(engine, app, sink)
    locker = sqlite3.connect(connection.settings_dict["NAME"], timeout=10, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # SQLite's one write lock: every write of the engine waits, then fails
        time.sleep(OUTAGE_SECONDS)
        assert "database is locked" in engine.log()
    finally:
        locker.close()
    assert_sent_once(job_ids, sink)
    assert_outage_logged_briefly(engine)


@requires_row_locks
def test_a_database_refusing_writes_after_a_send_costs_no_repeated_send(
    engines: EngineFactory, app: SchedulerApp, sink: Path
) -> None:
    engine = engines("engine-read-only", SLOW_BATCH, send_delay=0.1)
    job_ids = sending_a_batch(engine, app, sink)
    with faults.writes_refused(engine.name):
        time.sleep(OUTAGE_SECONDS)
        assert faults.WRITES_REFUSED[connection.vendor] in engine.log()
    assert_sent_once(job_ids, sink)


@requires_row_locks
def test_connections_cut_again_and_again_cost_no_repeated_send(
    cut_off_role: str, engines: EngineFactory, app: SchedulerApp, sink: Path
) -> None:
    engine = engines("engine-cut-off", SLOW_BATCH, send_delay=0.1, database_user=cut_off_role)
    job_ids = sending_a_batch(engine, app, sink)
    with cut_off(engine, cut_off_role) as cuts:
        time.sleep(OUTAGE_SECONDS)
    # Live sessions were cut mid-batch. Which error the engine then logs depends on the connection that meets
    # the cut first: a health check (CONN_HEALTH_CHECKS) replaces a cut connection, and meets the refused login.
    assert cuts[0] > 0
    assert_sent_once(job_ids, sink)
    assert_outage_logged_briefly(engine)


@requires_row_locks
def test_another_engine_leaves_alone_what_an_engine_cut_off_for_less_than_a_lease_has_sent(
    cut_off_role: str, engines: EngineFactory, app: SchedulerApp, sink: Path
) -> None:
    lease = {"CLAIM_TTL_SECONDS": 2 * OUTAGE_SECONDS}  # renewed each 0.8 s: the outage is half a lease
    first = engines("engine-cut-off", {**SLOW_BATCH, **lease}, send_delay=0.1, database_user=cut_off_role)
    job_ids = sending_a_batch(first, app, sink)
    with cut_off(first, cut_off_role):
        started = time.monotonic()
        second = engines("engine-looking-on", lease)  # starts during the outage, looks for expired leases
        time.sleep(max(OUTAGE_SECONDS - (time.monotonic() - started), 0))
    assert_sent_once(job_ids, sink)
    assert "Re-sending runs left pending" not in second.log()


# -- one unreadable job row ---------------------------------------------------------------------------------


def test_an_unreadable_job_row_costs_only_that_row(engines: EngineFactory, app: SchedulerApp, sink: Path) -> None:
    engine = engines("engine-bad-row", {"DISPATCH_RETRY_SECONDS": 60})
    bad_values = UNREADABLE_TIMES[connection.vendor]
    with transaction.atomic():
        good = schedule_due(app, 3)
        bad = schedule_due(app, len(bad_values))
        for job_id, value in zip(bad, bad_values, strict=True):
            store_raw("scheduler_job", job_id, "next_run_at", value)
    wait_until(lambda: all_dispatched(len(good)), timeout=30, what="the good jobs")
    for job_id, value in zip(bad, bad_values, strict=True):
        (failed,) = SchedulerRun.objects.filter(job_id=job_id)
        assert failed.status == RunStatus.FAILED and "next_run_at" in failed.error and repr(value) in failed.error
        assert SchedulerJob.objects.filter(pk=job_id).values_list("last_error", "dispatch_failures").get() == (
            failed.error,
            1,
        )
        assert f"ERROR django_taskiq_beat.engine Job {job_id}, task test.record, slot " in engine.log()
        assert f"cannot be sent: UnusableRowError: next_run_at holds {value!r}, not a datetime; retry at " in (
            engine.log()
        )
    (later,) = schedule_due(app, 1)
    wait_until(lambda: sent_run(later), timeout=30, what="a job created later")
    assert len(sends(sink)) == len(good) + 1


# -- the command's errors ------------------------------------------------------------------------------------------


def test_bad_broker_path_exits_non_zero_with_a_clear_message() -> None:
    result = manage("run_taskiq_beat", "--broker", "tests.nowhere:broker")
    assert result.returncode != 0
    assert "tests.nowhere:broker" in result.stderr and "does not import" in result.stderr


def test_bad_broker_setting_is_reported_by_the_system_check() -> None:
    result = manage("run_taskiq_beat", env=child_env(TASKIQ_BEAT_OPTIONS='{"BROKER": "testproject.nowhere:broker"}'))
    assert result.returncode != 0 and "django_taskiq_beat.E003" in result.stderr


def fresh_sqlite(tmp_path: Path, *migrate: str) -> dict[str, str]:
    """The environment of a command on a new SQLite database, after ``manage.py migrate`` with each argument list."""
    env = child_env()
    env.pop("DATABASE_URL", None)
    env["SQLITE_PATH"] = str(tmp_path / "fresh.sqlite3")
    for arguments in migrate:
        result = manage("migrate", *arguments.split(), env=env)
        assert result.returncode == 0, result.stderr
    return env


def test_unapplied_migrations_exit_non_zero(tmp_path: Path) -> None:
    result = manage("run_taskiq_beat", env=fresh_sqlite(tmp_path))
    assert result.returncode != 0 and "Unapplied migrations" in result.stderr


def test_a_missing_migration_of_this_app_is_refused_naming_only_this_apps(tmp_path: Path) -> None:
    result = manage("run_taskiq_beat", env=fresh_sqlite(tmp_path, "", "django_taskiq_beat 0003", "sessions zero"))
    assert result.returncode != 0
    assert "Unapplied migrations (django_taskiq_beat.0004_engines" in result.stderr  # and this app's later ones
    assert "sessions" not in result.stderr


def test_another_apps_unapplied_migration_is_a_warning_and_the_engine_runs(tmp_path: Path) -> None:
    """A rolling deploy: the new code's migrations of other apps are not applied yet."""
    engine = EngineProcess("engine-rolling-deploy", tmp_path, {})
    engine.env = fresh_sqlite(tmp_path, "", "sessions zero")  # a database of its own, one app behind
    try:
        engine.start()
        engine.signal(signal.SIGTERM)
        assert engine.wait() == 0
    finally:
        engine.stop()
        print(engine.log())
    assert (
        "WARNING django_taskiq_beat.engine Unapplied migrations of other apps (sessions.0001_initial)" in engine.log()
    )


# -- the health probe against real engines ------------------------------------------------------------------


def test_health_fails_without_an_engine_passes_with_one_and_fails_soon_after_it_is_killed(
    engines: EngineFactory,
) -> None:
    """With the default heartbeat (5 s) and dead-after (15 s), as a Kubernetes probe would see it."""
    dead_after = SchedulerConfig().engine_dead_after_seconds

    def health() -> subprocess.CompletedProcess[str]:
        return manage("taskiq_beat", "health")

    before = health()
    assert before.returncode == 1 and "engines: FAILED" in before.stdout
    engine = engines("engine-probed", {"CLAIM_TTL_SECONDS": 60})
    wait_until(lambda: health().returncode == 0, timeout=15, what="health to pass with a live engine", interval=0.5)
    engine.signal(signal.SIGKILL)
    engine.wait()
    killed_at = time.monotonic()
    wait_until(
        lambda: health().returncode == 1, timeout=dead_after + 5, what="health to fail after the kill", interval=0.5
    )
    assert time.monotonic() - killed_at <= dead_after + 2
    assert "engines: FAILED (no engine alive" in health().stdout and "engine-probed" in health().stdout
