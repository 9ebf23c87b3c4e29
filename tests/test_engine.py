"""The engine in-process: the reference's 12 scenarios, then what the design adds.

The engine drives its own event loop and reaches the database through Django's async
ORM thread, so these tests commit for real (``transaction=True``).
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import DEFAULT_DB_ALIAS, OperationalError, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from taskiq import InMemoryBroker

from django_taskiq_beat import (
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulerApp,
    SchedulerConfig,
    claims,
    logs,
)
from django_taskiq_beat.dbthread import DatabaseThread
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from tests.conftest import UNREADABLE_TIMES, Recorder, store_raw

pytestmark = pytest.mark.django_db(transaction=True)


def run(coroutine_function: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(coroutine_function)()


def make_config(**overrides: Any) -> SchedulerConfig:
    options: dict[str, Any] = {"scheduler_id": "engine-a", "default_timezone": "UTC", "sync_interval_seconds": 30.0}
    return SchedulerConfig(**{**options, **overrides})


def due_one_off(app: SchedulerApp, task: str = "system.echo", **kwargs: Any) -> SchedulerJob:
    return app.single(task=task, **kwargs).schedule(OneOffSchedule(run_at=timezone.now()))


def force_due(job: SchedulerJob) -> None:
    SchedulerJob.objects.filter(pk=job.pk).update(next_run_at=timezone.now() - timedelta(milliseconds=1))


def insert_job(task_name: str, **fields: Any) -> SchedulerJob:
    """A row written behind the API's back (a task since removed, a corrupt payload)."""
    now = timezone.now()
    values = {
        "task_name": task_name,
        "kind": "one_off",
        "strategy": "one_off",
        "trigger_payload": {"run_at": now.isoformat()},
        "next_run_at": now,
        "created_at": now,
        "updated_at": now,
    }
    return SchedulerJob.objects.create(**{**values, **fields})


def break_broker(broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch, failures: int = 10**6) -> list[int]:
    """Make ``kick`` raise for the next ``failures`` calls; returns the attempt counter."""
    attempts = [0]
    real_kick = broker.kick

    async def flaky_kick(message: Any) -> None:
        attempts[0] += 1
        if attempts[0] <= failures:
            raise ConnectionError("boom")
        await real_kick(message)

    monkeypatch.setattr(broker, "kick", flaky_kick)
    return attempts


@pytest.fixture
def app(broker: InMemoryBroker) -> SchedulerApp:
    return SchedulerApp(broker=broker, config=make_config())


# -- the reference's test_engine.py ----------------------------------------------------------------


def test_engine_dispatches_one_off_job(app: SchedulerApp, recorder: Recorder) -> None:
    job = due_one_off(app, args=[7])
    assert run(app.engine.run_once) == 1
    job.refresh_from_db()
    assert (job.is_enabled, job.next_run_at, job.dispatch_count, job.is_finished) == (False, None, 1, True)
    runs = list(SchedulerRun.objects.filter(job=job))
    assert [(r.status, r.broker_task_id, r.scheduled_for) for r in runs] == [
        ("dispatched", runs[0].id, runs[0].scheduled_for)
    ]
    assert job.last_dispatched_task_id == runs[0].id
    assert recorder.calls == [("system.echo", (7,), {})]


def test_engine_continues_batch_after_unknown_task(app: SchedulerApp, recorder: Recorder) -> None:
    unknown = insert_job("tests.unknown")
    known = due_one_off(app)
    run(app.engine.run_once)
    unknown.refresh_from_db()
    known.refresh_from_db()
    assert known.dispatch_count == 1 and recorder.names() == ["system.echo"]
    assert unknown.is_enabled and unknown.next_run_at > timezone.now()
    assert "Task 'tests.unknown' is not registered in Taskiq." in unknown.last_error
    assert SchedulerRun.objects.get(job=unknown).status == RunStatus.FAILED


def test_engine_retries_after_dispatch_error(
    app: SchedulerApp, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_broker(broker, monkeypatch)
    job = due_one_off(app)
    before = timezone.now()
    run(app.engine.run_once)
    job.refresh_from_db()
    assert job.is_enabled and not job.is_finished and job.dispatch_count == 0
    assert before + timedelta(seconds=4) < job.next_run_at < timezone.now() + timedelta(seconds=6)
    assert "boom" in job.last_error
    failed = SchedulerRun.objects.get(job=job)
    assert failed.status == RunStatus.FAILED and "boom" in failed.error


def test_engine_restores_jobs_from_storage(app: SchedulerApp, broker: InMemoryBroker, recorder: Recorder) -> None:
    job = due_one_off(app)
    second = SchedulerApp(broker=broker, config=make_config(scheduler_id="engine-b"))
    assert run(second.engine.run_once) == 1
    assert SchedulerJob.objects.get(pk=job.pk).dispatch_count == 1


def test_engine_is_woken_at_once_when_this_process_schedules_a_job(app: SchedulerApp, recorder: Recorder) -> None:
    async def scenario() -> float:
        await app.start()
        await asyncio.sleep(0.2)  # the engine is now asleep for sync_interval_seconds=30
        started = asyncio.get_running_loop().time()
        await app.single(task="system.echo").aschedule(OneOffSchedule(run_at=timezone.now()))
        while not recorder.calls:
            await asyncio.sleep(0.01)
        elapsed = asyncio.get_running_loop().time() - started
        await app.stop()
        return elapsed

    assert run(scenario) < 5  # generous: without the wake-up it would take 30 s


def test_engine_dispatches_periodic_job_multiple_times(app: SchedulerApp, recorder: Recorder) -> None:
    job = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=1)))
    force_due(job)

    async def scenario() -> None:
        await app.engine.run_once()
        await asyncio.sleep(1.1)
        await app.engine.run_once()

    run(scenario)
    job.refresh_from_db()
    assert job.dispatch_count >= 2 and job.is_enabled
    assert SchedulerRun.objects.filter(job=job, status=RunStatus.DISPATCHED).count() >= 2


def test_engine_logs_each_send_and_its_batches_only_at_debug(
    app: SchedulerApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_taskiq_beat.engine")
    job = due_one_off(app)
    run(app.engine.run_once)
    messages = [record.getMessage() for record in caplog.records if record.name == "django_taskiq_beat.engine"]
    (run_id,) = SchedulerRun.objects.filter(job=job).values_list("id", flat=True)
    assert messages == [f"Sent job {job.id}, task system.echo, slot {logs.when(job.next_run_at)}, run {run_id}."]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="django_taskiq_beat.engine")
    due_one_off(app)
    run(app.engine.run_once)
    assert "Dispatching scheduler jobs batch: 1 slot." in caplog.messages
    assert "Claimed scheduler jobs: 1 due slot, 0 failed before sending, 0 held by another engine." in caplog.messages


@pytest.mark.parametrize(("level", "expected"), [(logging.INFO, False), (logging.DEBUG, True)])
def test_engine_sync_log_is_debug(
    app: SchedulerApp, caplog: pytest.LogCaptureFixture, level: int, expected: bool
) -> None:
    caplog.set_level(level, logger="django_taskiq_beat.engine")
    run(app.engine.run_once)
    messages = [record.getMessage() for record in caplog.records]
    assert ("Scheduler engine synced jobs from storage." in messages) is expected


def test_engine_claims_job_once_across_multiple_schedulers(
    app: SchedulerApp, broker: InMemoryBroker, recorder: Recorder
) -> None:
    job = due_one_off(app)
    other = SchedulerApp(broker=broker, config=make_config(scheduler_id="engine-b", claim_ttl_seconds=5))

    async def scenario() -> None:
        await asyncio.gather(app.engine.run_once(), other.engine.run_once())

    run(scenario)
    assert recorder.names() == ["system.echo"]
    assert SchedulerRun.objects.filter(job=job).count() == 1
    assert not SchedulerJob.objects.get(pk=job.pk).is_enabled


def test_engine_keeps_claim_alive_during_slow_dispatch(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SchedulerApp(broker=broker, config=make_config(claim_ttl_seconds=1))
    other = SchedulerApp(broker=broker, config=make_config(scheduler_id="engine-b", claim_ttl_seconds=1))
    real_kick = broker.kick

    async def slow_kick(message: Any) -> None:
        await asyncio.sleep(1.2)
        await real_kick(message)

    monkeypatch.setattr(broker, "kick", slow_kick)
    job = due_one_off(slow)

    async def scenario() -> None:
        async def late_engine() -> None:
            await asyncio.sleep(1.05)
            await other.engine.run_once()

        await asyncio.gather(slow.engine.run_once(), late_engine())

    run(scenario)
    assert recorder.names() == ["system.echo"]
    assert list(SchedulerRun.objects.filter(job=job).values_list("status", flat=True)) == ["dispatched"]


def test_engine_cleans_old_runs_when_retention_is_enabled(broker: InMemoryBroker) -> None:
    app = SchedulerApp(broker=broker, config=make_config(run_history_retention_days=0))
    job = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))
    day_ago = timezone.now() - timedelta(days=1)
    SchedulerRun.objects.create(job=job, scheduled_for=day_ago, finished_at=day_ago, status=RunStatus.DISPATCHED)
    run(app.engine.run_once)
    assert not SchedulerRun.objects.exists()
    assert app.get_health_snapshot().cleaned_run_count == 1


def test_engine_cleans_old_completed_one_off_jobs_when_retention_is_enabled(broker: InMemoryBroker) -> None:
    app = SchedulerApp(broker=broker, config=make_config(completed_job_retention_days=0))
    later = OneOffSchedule(run_at=timezone.now() + timedelta(hours=1))
    done = app.single(task="system.echo").schedule()  # an immediate job: sent and finished
    paused = app.single(task="system.echo").schedule(later, is_enabled=False)
    active = app.single(task="system.echo").schedule(later)
    periodic = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))
    app.pause(periodic.id)
    SchedulerJob.objects.filter(pk=done.pk).update(finished_at=timezone.now() - timedelta(days=1))
    run(app.engine.run_once)
    assert set(SchedulerJob.objects.values_list("id", flat=True)) == {paused.id, active.id, periodic.id}
    assert not SchedulerRun.objects.filter(job_id=done.id).exists()
    assert app.get_health_snapshot().cleaned_job_count == 1


def test_completed_jobs_are_cleaned_a_chunk_at_a_time(broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    app = SchedulerApp(broker=broker, config=make_config(completed_job_retention_days=0))
    done = [app.single(task="system.echo").schedule().id for _ in range(5)]  # immediate jobs: sent and finished
    kept = app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now() + timedelta(hours=1)))
    SchedulerJob.objects.filter(pk__in=done).update(finished_at=timezone.now() - timedelta(days=1))
    monkeypatch.setattr(claims, "_JOB_DELETE_CHUNK", 2)
    assert [claims.delete_jobs_finished_before(timezone.now()) for _ in range(4)] == [2, 2, 1, 0]
    assert list(SchedulerJob.objects.values_list("id", flat=True)) == [kept.id]
    assert not SchedulerRun.objects.filter(job_id__in=done).exists()
    done = [app.single(task="system.echo").schedule().id for _ in range(3)]
    SchedulerJob.objects.filter(pk__in=done).update(finished_at=timezone.now() - timedelta(days=1))
    run(app.engine.run_once)  # the engine's cleanup goes chunk after chunk until none is left
    assert list(SchedulerJob.objects.values_list("id", flat=True)) == [kept.id]
    assert app.get_health_snapshot().cleaned_job_count == 3


def test_run_history_is_cleaned_a_chunk_at_a_time(app: SchedulerApp, monkeypatch: pytest.MonkeyPatch) -> None:
    job = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))
    old = timezone.now() - timedelta(days=40)
    SchedulerRun.objects.bulk_create(
        [
            SchedulerRun(
                job=job, scheduled_for=old + timedelta(seconds=n), status=RunStatus.DISPATCHED, finished_at=old
            )
            for n in range(7)
        ]
    )
    monkeypatch.setattr(claims, "_RUN_DELETE_CHUNK", 3)
    assert [claims.delete_runs_finished_before(timezone.now()) for _ in range(4)] == [3, 3, 1, 0]


# -- the reference's scheduler scenarios that need the engine -----------------------------------------


def test_scheduler_app_start_and_stop(app: SchedulerApp) -> None:
    async def scenario() -> tuple[bool, bool]:
        await app.start()
        running = app.get_health_snapshot().is_running
        await app.stop()
        return running, app.get_health_snapshot().is_running

    assert run(scenario) == (True, False)


def test_scheduler_app_exposes_health_snapshot(broker: InMemoryBroker) -> None:
    snapshot = SchedulerApp(broker=broker, config=make_config(scheduler_id="health")).get_health_snapshot()
    assert (snapshot.scheduler_id, snapshot.is_running, snapshot.sync_count, snapshot.dispatched_job_count) == (
        "health",
        False,
        0,
        0,
    )


# -- what the design adds ------------------------------------------------------------------------------------


def test_work_is_split_into_batches_and_all_due_slots_go_out(broker: InMemoryBroker, recorder: Recorder) -> None:
    app = SchedulerApp(broker=broker, config=make_config(dispatch_batch_size=2))
    for _ in range(5):
        due_one_off(app)
    assert run(app.engine.run_once) == 5
    assert app.get_health_snapshot().dispatched_job_count == 5


def test_dispatch_concurrency_is_a_limit(broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    app = SchedulerApp(broker=broker, config=make_config(dispatch_concurrency=2))
    in_flight, peak = [0], [0]
    real_kick = broker.kick

    async def counting_kick(message: Any) -> None:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.02)
        in_flight[0] -= 1
        await real_kick(message)

    monkeypatch.setattr(broker, "kick", counting_kick)
    for _ in range(6):
        due_one_off(app)
    assert run(app.engine.run_once) == 6
    assert peak[0] == 2


def test_failure_backoff_doubles_and_is_capped(broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    app = SchedulerApp(broker=broker, config=make_config(dispatch_retry_seconds=2, dispatch_retry_max_seconds=5))
    break_broker(broker, monkeypatch)
    job = due_one_off(app)
    delays = []
    for _ in range(4):
        force_due(job)
        before = timezone.now()
        run(app.engine.run_once)
        job.refresh_from_db()
        delays.append(round((job.next_run_at - before).total_seconds()))
    assert delays == [2, 4, 5, 5]
    assert job.dispatch_failures == 4
    assert SchedulerRun.objects.filter(job=job, status=RunStatus.FAILED).count() == 4


def test_retry_never_passes_the_next_regular_slot(broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    app = SchedulerApp(broker=broker, config=make_config(dispatch_retry_seconds=60, dispatch_retry_max_seconds=600))
    break_broker(broker, monkeypatch)
    job = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=10)))
    force_due(job)
    run(app.engine.run_once)
    job.refresh_from_db()
    assert job.next_run_at <= timezone.now() + timedelta(seconds=10)
    assert job.is_enabled


def test_broker_outage_then_recovery(
    broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    app = SchedulerApp(broker=broker, config=make_config(dispatch_retry_seconds=1))
    break_broker(broker, monkeypatch, failures=1)
    job = due_one_off(app)

    async def scenario() -> None:
        await app.engine.run_once()
        await asyncio.sleep(1.1)
        await app.engine.run_once()

    run(scenario)
    job.refresh_from_db()
    assert (job.dispatch_count, job.dispatch_failures, job.last_error, job.is_finished) == (1, 0, None, True)
    statuses = sorted(SchedulerRun.objects.filter(job=job).values_list("status", flat=True))
    assert statuses == ["dispatched", "failed"] and recorder.names() == ["system.echo"]


def test_hanging_broker_is_bounded_by_the_send_timeout(broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    app = SchedulerApp(broker=broker, config=make_config(dispatch_timeout_seconds=0.2))

    async def hanging_kick(message: Any) -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(broker, "kick", hanging_kick)
    job = due_one_off(app)
    run(app.engine.run_once)
    failed = SchedulerRun.objects.get(job=job)
    assert failed.status == RunStatus.FAILED and "TimeoutError" in failed.error


def test_corrupt_payload_fails_its_job_and_the_batch_goes_on(app: SchedulerApp, recorder: Recorder) -> None:
    corrupt = insert_job(
        "system.echo", kind="periodic", strategy="crontab", trigger_payload={"crontab": {"minute": "99"}}
    )
    healthy = due_one_off(app)
    run(app.engine.run_once)
    corrupt.refresh_from_db()
    assert SchedulerJob.objects.get(pk=healthy.pk).dispatch_count == 1
    assert corrupt.is_enabled and corrupt.next_run_at > timezone.now() and "minute" in corrupt.last_error
    assert SchedulerRun.objects.get(job=corrupt).status == RunStatus.FAILED


def test_overdue_periodic_job_fires_once_then_realigns(app: SchedulerApp, recorder: Recorder) -> None:
    job = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=10)))
    SchedulerJob.objects.filter(pk=job.pk).update(next_run_at=timezone.now() - timedelta(seconds=95))
    run(app.engine.run_once)
    job.refresh_from_db()
    assert job.dispatch_count == 1 and len(recorder.calls) == 1
    grid_offset = (job.next_run_at - job.created_at.replace(microsecond=0)).total_seconds()
    assert grid_offset % 10 == 0 and timezone.now() < job.next_run_at <= timezone.now() + timedelta(seconds=10)


def test_window_end_finishes_the_job_after_its_last_slot(app: SchedulerApp) -> None:
    start = timezone.now().replace(microsecond=0) + timedelta(seconds=1)
    window = PeriodicSchedule(
        interval=IntervalTrigger(seconds=1), start_at=start, end_at=start + timedelta(milliseconds=500)
    )
    job = app.single(task="system.echo").schedule(window)
    assert job.next_run_at == start  # the only slot inside the window

    async def scenario() -> None:
        await asyncio.sleep((start - timezone.now()).total_seconds() + 0.05)
        await app.engine.run_once()

    run(scenario)
    job.refresh_from_db()
    assert (job.dispatch_count, job.is_enabled, job.next_run_at, job.is_finished) == (1, False, None, True)


def test_run_now_of_a_periodic_job_goes_back_to_its_schedule(app: SchedulerApp, recorder: Recorder) -> None:
    job = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))
    regular = job.next_run_at
    app.run_now(job.id)
    run(app.engine.run_once)
    job.refresh_from_db()
    assert job.dispatch_count == 1 and job.next_run_at == regular


def test_slot_claimed_ahead_is_sent_when_it_comes(app: SchedulerApp, recorder: Recorder) -> None:
    slot = timezone.now() + timedelta(milliseconds=300)  # inside claim_ahead_seconds (0.5 s)
    job = app.single(task="system.echo").schedule(OneOffSchedule(run_at=slot))
    assert run(app.engine.run_once) == 1
    sent = SchedulerRun.objects.get(job=job)
    assert sent.scheduled_for == slot and sent.dispatched_at >= slot
    assert sent.dispatched_at - slot < timedelta(seconds=1)  # generous


def test_without_claim_ahead_a_future_slot_waits(broker: InMemoryBroker, recorder: Recorder) -> None:
    app = SchedulerApp(broker=broker, config=make_config(claim_ahead_seconds=0))
    app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now() + timedelta(milliseconds=300)))
    assert run(app.engine.run_once) == 0 and recorder.calls == []


def test_a_batch_claimed_ahead_holds_up_no_tick(broker: InMemoryBroker, recorder: Recorder) -> None:
    """Within start() a batch waits for its slot apart from the tick that claimed it: a job due sooner, created
    meanwhile, is claimed by the next tick and sent at its own slot, not after the earlier batch's."""
    app = SchedulerApp(broker=broker, config=make_config(claim_ahead_seconds=2.5, idle_sleep_seconds=0.05))
    later = app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now() + timedelta(seconds=2.5)))

    async def scenario() -> None:
        await app.start()
        while not await SchedulerRun.objects.filter(job=later).aexists():  # claimed, waiting for its slot
            await asyncio.sleep(0.01)
        slot = timezone.now() + timedelta(milliseconds=500)
        sooner = await sync_to_async(app.single(task="system.echo").schedule)(OneOffSchedule(run_at=slot))
        while not await SchedulerRun.objects.filter(job=sooner, status=RunStatus.DISPATCHED).aexists():
            await asyncio.sleep(0.01)
        assert not await SchedulerRun.objects.filter(job=later, status=RunStatus.DISPATCHED).aexists()
        await app.stop()

    run(scenario)
    sooner_run, later_run = SchedulerRun.objects.order_by("scheduled_for")
    assert sooner_run.dispatched_at - sooner_run.scheduled_for < timedelta(seconds=1)
    assert later_run.status == RunStatus.DISPATCHED and later_run.dispatched_at >= later_run.scheduled_for
    assert len(recorder.calls) == 2


def test_a_fault_of_the_engine_while_sending_one_slot_fails_that_slot_alone(
    app: SchedulerApp, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No send raises (its error is its outcome); a fault of the engine's own must cost its slot only: a failed run
    retried as any, the rest of the batch sent and stored once, nothing held unsent or sent twice."""
    first, second = due_one_off(app), due_one_off(app, task="system.other")
    real_send = app.engine._send

    async def faulty_first(dispatch: claims.Dispatch) -> claims.Outcome:
        if dispatch.job_id == first.pk:
            raise RuntimeError("a bug")
        return await real_send(dispatch)

    monkeypatch.setattr(app.engine, "_send", faulty_first)
    with caplog.at_level(logging.ERROR, logger="django_taskiq_beat"):
        assert run(app.engine.run_once) == 1
    assert f"Sending job {first.pk}, task system.echo" in caplog.text and "failed unexpectedly" in caplog.text
    failed = SchedulerRun.objects.get(job=first)
    assert (failed.status, failed.error) == (RunStatus.FAILED, "RuntimeError: a bug")
    assert SchedulerRun.objects.get(job=second).status == RunStatus.DISPATCHED
    retried = SchedulerJob.objects.get(pk=first.pk)
    assert retried.is_enabled and retried.dispatch_failures == 1 and retried.next_run_at is not None
    assert recorder.names() == ["system.other"] and app.engine._held == set()


@pytest.mark.parametrize("runner_crashed", [False, True], ids=["stopped", "runner-crashed"])
def test_stop_sends_and_stores_a_batch_waiting_for_its_slot(
    broker: InMemoryBroker, recorder: Recorder, runner_crashed: bool
) -> None:
    """Also when the runner died first: its batch is sent and stored before the leases and the heartbeat stop."""
    app = SchedulerApp(broker=broker, config=make_config(claim_ahead_seconds=1))
    job = app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now() + timedelta(seconds=1)))

    async def scenario() -> None:
        await app.start()
        while not await SchedulerRun.objects.filter(job=job).aexists():
            await asyncio.sleep(0.01)
        runner = app.engine._runner
        assert runner is not None
        if runner_crashed:
            runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app.stop()

    run(scenario)
    sent = SchedulerRun.objects.get(job=job)
    assert (sent.status, sent.dispatched_at >= sent.scheduled_for) == (RunStatus.DISPATCHED, True)
    assert recorder.names() == ["system.echo"]


def test_outcomes_are_stored_while_the_next_claim_runs_where_the_database_takes_two_writers(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within start() on PostgreSQL and MariaDB a batch's outcomes go through a connection of their own, so they do
    not wait for the tick's next claim; SQLite has one writer, so there they wait for it."""
    app = SchedulerApp(broker=broker, config=make_config(dispatch_batch_size=1))
    first, second = due_one_off(app), due_one_off(app)
    real_claim_due, claims_made = claims.claim_due, [0]
    claiming, release = threading.Event(), threading.Event()

    def slow_second_claim(*args: Any, **kwargs: Any) -> claims.Claim:
        claims_made[0] += 1
        if claims_made[0] == 2:  # the first batch (one slot) is being sent and stored meanwhile
            claiming.set()
            release.wait(10)
        return real_claim_due(*args, **kwargs)

    def stored_status(job: SchedulerJob) -> str:
        """Read through a connection of its own: the tick's thread is busy."""
        try:
            return SchedulerRun.objects.get(job=job).status
        finally:
            connection.close()

    async def scenario() -> bool:
        await app.start()
        try:
            assert await asyncio.to_thread(claiming.wait, 10), "the second claim never started"
            read_apart = sync_to_async(stored_status, thread_sensitive=False)
            deadline = time.monotonic() + 1.5
            while (stored_while_claiming := await read_apart(first)) != RunStatus.DISPATCHED:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
        finally:
            release.set()
            await app.stop()
        return stored_while_claiming == RunStatus.DISPATCHED

    monkeypatch.setattr(claims, "claim_due", slow_second_claim)
    assert run(scenario) is (connection.vendor != "sqlite")
    assert [stored_status(job) for job in (first, second)] == [RunStatus.DISPATCHED] * 2
    assert len(recorder.calls) == 2


@pytest.mark.parametrize("max_age", [0, 60], ids=["CONN_MAX_AGE=0", "CONN_MAX_AGE=60"])
def test_a_database_thread_keeps_its_connection_between_calls_and_replaces_it_after_an_error(
    monkeypatch: pytest.MonkeyPatch, max_age: int
) -> None:
    """Also with Django's default CONN_MAX_AGE = 0: the writer's calls (a store per batch) are not requests, and a
    new connection for each would cost a connect per batch."""
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", max_age)
    thread = DatabaseThread("test-database-thread")

    def current() -> Any:
        connection.ensure_connection()
        return connection.connection  # kept by the test, so a new one cannot reuse its id

    def failing() -> None:
        connection.ensure_connection()
        raise ValueError("a statement failed")

    async def scenario() -> list[Any]:
        thread.start()
        try:
            seen = [await thread(current), await thread(current)]
            with pytest.raises(ValueError):
                await thread(failing)
            return [*seen, await thread(current)]
        finally:
            await thread.close()

    first, second, after_the_error = run(scenario)
    assert first is second
    assert after_the_error is not first


def test_record_runs_off_keeps_no_history(broker: InMemoryBroker) -> None:
    app = SchedulerApp(broker=broker, config=make_config(record_runs=False))
    job = due_one_off(app)
    run(app.engine.run_once)
    assert SchedulerJob.objects.get(pk=job.pk).dispatch_count == 1
    assert not SchedulerRun.objects.exists()


def test_pending_run_of_a_dead_engine_is_sent_again_with_the_same_task_id(
    app: SchedulerApp, broker: InMemoryBroker
) -> None:
    from django_taskiq_beat import claims

    job = due_one_off(app)
    # A dead engine claimed the slot (run written, job advanced) and never sent it.
    claim = claims.claim_due("dead-engine", timezone.now(), 10, timedelta(seconds=-1), claims.RetryPolicy(5, 300))
    (orphan,) = claim.dispatches
    assert SchedulerRun.objects.get(pk=orphan.run_id).status == RunStatus.PENDING
    assert run(app.engine.run_once) == 1
    resent = SchedulerRun.objects.get(pk=orphan.run_id)
    assert (resent.status, resent.broker_task_id, resent.claimed_by) == ("dispatched", orphan.run_id, None)
    assert orphan.run_id in broker.result_backend.results
    assert SchedulerJob.objects.get(pk=job.pk).dispatch_count == 1
    assert app.get_health_snapshot().recovered_run_count == 1


def test_a_live_lease_is_not_taken_over(app: SchedulerApp, recorder: Recorder) -> None:
    from django_taskiq_beat import claims

    due_one_off(app)
    claims.claim_due("busy-engine", timezone.now(), 10, timedelta(minutes=1), claims.RetryPolicy(5, 300))
    assert run(app.engine.run_once) == 0 and recorder.calls == []


def test_database_error_in_a_tick_is_logged_and_the_engine_goes_on(
    app: SchedulerApp, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django.db import OperationalError

    from django_taskiq_beat import claims

    real_claim = claims.claim_due
    calls = [0]

    def failing_once(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise OperationalError("the connection is closed")
        return real_claim(*args)

    monkeypatch.setattr(claims, "claim_due", failing_once)
    app.engine.config = make_config(idle_sleep_seconds=0.05)

    async def scenario() -> None:
        await app.start()
        for _ in range(200):
            if recorder.calls:
                break
            await asyncio.sleep(0.02)
        await app.stop()

    due_one_off(app)
    run(scenario)
    assert recorder.names() == ["system.echo"]
    assert "Scheduler engine tick failed: OperationalError: the connection is closed; trying again in 0.1 s." in (
        caplog.messages
    )
    assert "Scheduler engine tick works again after 1 failure in " in caplog.text
    assert app.get_health_snapshot().failed_tick_count == 1


def test_engine_start_twice_is_a_no_op(app: SchedulerApp) -> None:
    async def scenario() -> bool:
        await app.start()
        runner = app.engine._runner
        await app.start()
        same = runner is app.engine._runner
        await app.stop()
        return same

    assert run(scenario)


def test_retry_survives_an_unchanged_upsert_during_the_send(app: SchedulerApp) -> None:
    from django_taskiq_beat import claims

    once = OneOffSchedule(run_at=timezone.now())
    app.single(task="system.echo").upsert(once, job_id="deploy-synced")
    claim = claims.claim_due("engine-a", timezone.now(), 10, timedelta(minutes=1), claims.RetryPolicy(5, 300))
    app.single(task="system.echo").upsert(once, job_id="deploy-synced")  # a deploy's startup sync, meanwhile
    (dispatch,) = claim.dispatches
    now = timezone.now()
    claims.record(
        [claims.Outcome(dispatch, now, now, "ConnectionError: boom")], now, True, claims.RetryPolicy(5, 300), "engine-a"
    )
    job = SchedulerJob.objects.get(pk="deploy-synced")
    assert job.is_enabled and not job.is_finished and job.next_run_at > now


def test_two_outcomes_of_one_job_count_twice(app: SchedulerApp) -> None:
    from django_taskiq_beat import claims

    job = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))
    now = timezone.now()
    runs = [SchedulerRun.objects.create(job=job, scheduled_for=now - timedelta(minutes=m)) for m in (1, 2)]
    outcomes = [
        claims.Outcome(claims.Dispatch(run.id, job.id, job.task_name, [], {}, now, run.scheduled_for), now, now, None)
        for run in runs
    ]
    claims.record(outcomes, now, True, claims.RetryPolicy(5, 300), "engine-a")
    assert SchedulerJob.objects.get(pk=job.pk).dispatch_count == 2


def test_backoff_never_overflows() -> None:
    from django_taskiq_beat import claims

    assert claims.RetryPolicy(5, 300).delay(5000) == timedelta(seconds=300)


# -- a row the ORM cannot read costs only that row ------------------------------------------------------


def job_columns(job_id: str, *fields: str) -> tuple[Any, ...]:
    """Columns of a job whose other columns may be unreadable."""
    return SchedulerJob.objects.filter(pk=job_id).values_list(*fields).get()


def test_unreadable_next_run_at_fails_only_its_job(
    app: SchedulerApp, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="django_taskiq_beat.engine")
    bad_values = UNREADABLE_TIMES[connection.vendor]
    good = [due_one_off(app, args=[n]).id for n in range(3)]
    bad = [due_one_off(app).id for _ in bad_values]
    for job_id, value in zip(bad, bad_values, strict=True):
        store_raw("scheduler_job", job_id, "next_run_at", value)
    before = timezone.now()
    assert run(app.engine.run_once) == 3
    assert sorted(recorder.calls) == [("system.echo", (n,), {}) for n in range(3)]
    assert all(job_columns(job_id, "dispatch_count") == (1,) for job_id in good)
    for job_id, value in zip(bad, bad_values, strict=True):
        (failed,) = SchedulerRun.objects.filter(job_id=job_id)
        assert failed.status == RunStatus.FAILED and before <= failed.scheduled_for <= timezone.now()
        assert "next_run_at" in failed.error and repr(value) in failed.error
        last_error, failures, enabled, next_run_at = job_columns(
            job_id, "last_error", "dispatch_failures", "is_enabled", "next_run_at"
        )
        assert (last_error, failures, enabled) == (failed.error, 1, True)
        assert before + timedelta(seconds=4) < next_run_at < timezone.now() + timedelta(seconds=6)  # the retry
        assert any(job_id in record.getMessage() for record in caplog.records if record.levelno == logging.ERROR)
    later = due_one_off(app, task="system.other")
    assert run(app.engine.run_once) == 1 and job_columns(later.id, "dispatch_count") == (1,)


def test_wrong_typed_arguments_fail_only_their_job(app: SchedulerApp, recorder: Recorder) -> None:
    good = due_one_off(app, args=[1])
    bad = insert_job("system.echo", task_args="abc")  # a JSON string where a list belongs
    assert run(app.engine.run_once) == 1
    assert recorder.calls == [("system.echo", (1,), {})]  # never echo('a', 'b', 'c')
    assert job_columns(good.id, "dispatch_count") == (1,)
    failed = SchedulerRun.objects.get(job=bad)
    assert failed.status == RunStatus.FAILED and "task_args holds '\"abc\"', not a list" in failed.error
    assert job_columns(bad.id, "last_error", "dispatch_failures") == (failed.error, 1)


def test_unreadable_next_run_at_does_not_hide_the_next_due_slot(app: SchedulerApp) -> None:
    later = app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now() + timedelta(hours=1)))
    store_raw("scheduler_job", later.id, "next_run_at", UNREADABLE_TIMES[connection.vendor][0])
    assert claims.next_due_at() is None  # unknown: the engine looks again after sync_interval_seconds


def dead_engines_claim(app: SchedulerApp) -> tuple[SchedulerJob, claims.Dispatch]:
    """A due job claimed by an engine that died before sending: its run is pending, its lease expired."""
    job = due_one_off(app)
    claim = claims.claim_due("dead-engine", timezone.now(), 10, timedelta(seconds=-1), claims.RetryPolicy(5, 300))
    (orphan,) = claim.dispatches
    return job, orphan


def test_pending_run_of_a_job_with_unreadable_arguments_is_recorded_failed(
    app: SchedulerApp, recorder: Recorder
) -> None:
    job, orphan = dead_engines_claim(app)
    # SQLite: a number in a JSON text column cannot be decoded; PostgreSQL's jsonb holds only JSON.
    store_raw("scheduler_job", job.id, "task_args", 12345 if connection.vendor == "sqlite" else '"abc"')
    before = timezone.now()
    assert run(app.engine.run_once) == 0 and recorder.calls == []
    failed = SchedulerRun.objects.get(pk=orphan.run_id)
    assert (failed.status, failed.claimed_by, failed.lease_expires_at) == (RunStatus.FAILED, None, None)
    assert "task_args holds" in failed.error
    last_error, failures, enabled, next_run_at = job_columns(
        job.id, "last_error", "dispatch_failures", "is_enabled", "next_run_at"
    )
    assert (last_error, failures, enabled) == (failed.error, 1, True)  # retried, as a failed send is
    assert before + timedelta(seconds=4) < next_run_at < timezone.now() + timedelta(seconds=6)


@contextlib.contextmanager
def job_locked_elsewhere(job_id: str) -> Iterator[BaseDatabaseWrapper]:
    """Another session holds the job row's lock, as a record in progress does; waiting for it fails after 2 s."""
    if connection.vendor != "postgresql":
        pytest.skip(
            "PostgreSQL: MariaDB's SKIP LOCKED also skips a run whose job row is locked (no FOR UPDATE OF), and"
            " SQLite has no row locks"
        )
    writer = connections.create_connection(DEFAULT_DB_ALIAS)
    writer.set_autocommit(False)
    try:
        with writer.cursor() as cursor:
            cursor.execute("SELECT id FROM scheduler_job WHERE id = %s FOR UPDATE", [job_id])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")  # waiting for the job's lock fails instead of hanging
        yield writer
    finally:
        writer.rollback()
        writer.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")


def test_taking_over_a_run_that_cannot_be_sent_writes_no_job_while_it_holds_run_locks(app: SchedulerApp) -> None:
    """The take-over claims the run and leaves its failure to ``record``, after the claim has committed: a claim
    that wrote the job while holding the run's lock could deadlock with a writer of outcomes, which takes jobs
    first (the engine's own writer, on its own connection). Its types are checked without locking the job."""
    job, orphan = dead_engines_claim(app)
    store_raw("scheduler_job", job.id, "task_args", '"abc"')
    with job_locked_elsewhere(job.id) as writer:
        claim = claims.claim_expired("engine-a", timezone.now(), 10, timedelta(seconds=30))
        with writer.cursor() as cursor:  # the claim has committed: the run's lock is free
            cursor.execute("SELECT claimed_by FROM scheduler_run WHERE id = %s FOR UPDATE NOWAIT", [orphan.run_id])
            assert cursor.fetchone() == ("engine-a",)
    (failure,) = claim.failures
    assert claim.dispatches == [] and failure.dispatch.run_id == orphan.run_id and "task_args holds" in failure.error
    claims.record(claim.failures, timezone.now(), True, claims.RetryPolicy(5, 300), "engine-a")
    assert SchedulerRun.objects.get(pk=orphan.run_id).status == RunStatus.FAILED


def test_a_taken_over_run_that_cannot_be_sent_keeps_its_failure_until_the_database_stores_it(
    app: SchedulerApp, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its failure is stored as a failed send's outcome is: refused, it is kept and stored by the next tick, while
    its run stays claimed by this engine (no engine takes it over again and logs it twice)."""
    caplog.set_level(logging.DEBUG, logger="django_taskiq_beat.engine")
    job, orphan = dead_engines_claim(app)
    store_raw("scheduler_job", job.id, "task_args", 12345 if connection.vendor == "sqlite" else '"abc"')
    refuse_records(monkeypatch, seconds=0.2)
    with pytest.raises(OperationalError):
        run(app.engine.run_once)
    assert SchedulerRun.objects.get(pk=orphan.run_id).claimed_by == app.config.scheduler_id
    time.sleep(0.2)
    assert run(app.engine.run_once) == 0 and recorder.calls == []
    failed = SchedulerRun.objects.get(pk=orphan.run_id)
    assert (failed.status, failed.claimed_by) == (RunStatus.FAILED, None) and "task_args holds" in failed.error
    assert job_columns(job.id, "dispatch_failures") == (1,)
    assert len([message for message in caplog.messages if "cannot be sent" in message]) == 1
    assert not [message for message in caplog.messages if "Dispatching" in message]  # no batch was sent
    assert app.get_health_snapshot().last_dispatch_started_at is None


def test_taking_over_a_run_reads_an_unreadable_job_value_without_locking_the_job(app: SchedulerApp) -> None:
    """A value read one by one (the row's values could not all be converted) does not lock, or skip, its job."""
    job, orphan = dead_engines_claim(app)
    store_raw("scheduler_job", job.id, "next_run_at", UNREADABLE_TIMES[connection.vendor][0])
    with job_locked_elsewhere(job.id):
        (resent,) = claims.claim_expired("engine-a", timezone.now(), 10, timedelta(seconds=30)).dispatches
    assert (resent.run_id, resent.next_slot) == (orphan.run_id, None)


def test_pending_run_of_a_job_with_an_unreadable_slot_is_sent(app: SchedulerApp, recorder: Recorder) -> None:
    job, orphan = dead_engines_claim(app)  # the one-off is finished: its slot is not due again
    store_raw("scheduler_job", job.id, "next_run_at", UNREADABLE_TIMES[connection.vendor][0])
    assert run(app.engine.run_once) == 1 and recorder.names() == ["system.echo"]
    assert SchedulerRun.objects.get(pk=orphan.run_id).status == RunStatus.DISPATCHED


def test_outcomes_are_stored_when_the_job_row_became_unreadable(app: SchedulerApp) -> None:
    sent = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))
    failing = due_one_off(app)
    force_due(sent)
    claim = claims.claim_due("engine-a", timezone.now(), 10, timedelta(minutes=1), claims.RetryPolicy(5, 300))
    for job_id in (sent.id, failing.id):
        store_raw("scheduler_job", job_id, "created_at", UNREADABLE_TIMES[connection.vendor][0])
    now = timezone.now()
    outcomes = [
        claims.Outcome(dispatch, now, now, None if dispatch.job_id == sent.id else "ConnectionError: boom")
        for dispatch in claim.dispatches
    ]
    claims.record(outcomes, now, True, claims.RetryPolicy(5, 300), "engine-a")
    assert job_columns(sent.id, "dispatch_count", "dispatch_failures") == (1, 0)
    assert job_columns(failing.id, "dispatch_failures", "last_error", "is_enabled") == (
        1,
        "ConnectionError: boom",
        True,
    )
    statuses = dict(SchedulerRun.objects.values_list("job_id", "status"))
    assert statuses == {sent.id: RunStatus.DISPATCHED, failing.id: RunStatus.FAILED}


# -- a database that refuses to store outcomes for a while ------------------------------------------------


def refuse_records(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[int]:
    """Make ``claims.record`` fail as a database refusing writes would, for ``seconds`` after its first call."""
    from django.db import OperationalError

    real_record = claims.record
    calls, deadline = [0], [float("inf")]

    def refusing(*args: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            deadline[0] = time.monotonic() + seconds
        if time.monotonic() < deadline[0]:
            raise OperationalError("database is locked")
        real_record(*args)

    monkeypatch.setattr(claims, "record", refusing)
    return calls


def test_sent_outcomes_wait_for_the_database_and_keep_their_leases(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Longer than the old three tries and than the lease; another engine looks for expired leases all along."""
    sender = SchedulerApp(broker=broker, config=make_config(claim_ttl_seconds=1, idle_sleep_seconds=0.05))
    other = SchedulerApp(broker=broker, config=make_config(scheduler_id="engine-b", claim_ttl_seconds=1))
    calls = refuse_records(monkeypatch, seconds=2.5)
    job = due_one_off(sender)

    async def scenario() -> None:
        await sender.start()
        for _ in range(40):  # 4 s
            await asyncio.sleep(0.1)
            with contextlib.suppress(Exception):  # its own stores are refused too
                await other.engine.run_once()
        await sender.stop()

    run(scenario)
    assert calls[0] > 3
    assert recorder.names() == ["system.echo"]
    assert SchedulerRun.objects.get(job=job).status == RunStatus.DISPATCHED
    assert job_columns(job.id, "dispatch_count") == (1,)
    assert not [message for message in caplog.messages if "Giving up" in message]


def test_a_batch_whose_outcomes_are_refused_says_so_once_and_the_next_tick_stores_them_at_once(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch sent in the background whose store fails wakes the loop: its outcomes are stored as soon as the
    database takes them, not at the next sync 30 s later, and the refusal is one WARNING, not one per retry."""
    app = SchedulerApp(broker=broker, config=make_config(idle_sleep_seconds=0.05))
    refuse_records(monkeypatch, seconds=0.3)
    job = due_one_off(app)

    async def scenario() -> float:
        await app.start()
        started = time.monotonic()
        while not await SchedulerRun.objects.filter(job=job, status=RunStatus.DISPATCHED).aexists():
            if time.monotonic() - started > 10:
                break
            await asyncio.sleep(0.05)
        stored_after = time.monotonic() - started
        await app.stop()
        return stored_after

    assert run(scenario) < 5
    refused = (
        "Storing the outcomes of 1 send failed: OperationalError: database is locked; trying again at the next tick."
    )
    assert caplog.messages.count(refused) == 1
    assert recorder.names() == ["system.echo"]


@pytest.mark.parametrize("store_fails", [False, True])
def test_outcomes_a_background_batch_adds_while_leftovers_are_stored_are_kept(
    app: SchedulerApp, monkeypatch: pytest.MonkeyPatch, store_fails: bool
) -> None:
    """A batch sending in the background may fail to store its outcomes while a tick stores earlier ones: its
    outcomes must stay to be stored (their runs stay held until then), whether the tick's store succeeds or not."""
    engine = app.engine
    earlier, meanwhile = ["earlier outcome"], ["outcome added meanwhile"]
    engine._unrecorded = list(earlier)

    async def store(outcomes: list[Any]) -> None:
        await asyncio.sleep(0)
        engine._unrecorded.extend(meanwhile)
        if store_fails:
            raise ConnectionError("database away")

    monkeypatch.setattr(engine, "_store", store)
    with pytest.raises(ConnectionError) if store_fails else contextlib.nullcontext():
        run(engine._record_leftovers)
    assert engine._unrecorded == (earlier + meanwhile if store_fails else meanwhile)


def test_stop_keeps_trying_to_store_for_one_lease_then_gives_up(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = SchedulerApp(broker=broker, config=make_config(claim_ttl_seconds=1, idle_sleep_seconds=0.05))
    refuse_records(monkeypatch, seconds=3600)
    job = due_one_off(app)

    async def scenario() -> float:
        await app.start()
        while not recorder.calls:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await app.stop()
        return time.monotonic() - started

    assert 1 <= run(scenario) < 5
    assert (
        "Storing the outcomes of 1 send at stop failed again (2 in a row): OperationalError: database is"
        " locked; trying again in 0.1 s."
    ) in caplog.messages
    assert (
        "Giving up storing the outcomes of 1 send at stop (OperationalError: database is locked); their runs"
        " are sent again when their leases expire."
    ) in caplog.messages
    assert SchedulerRun.objects.get(job=job).status == RunStatus.PENDING  # sent again once its lease expires
