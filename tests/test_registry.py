"""The engine registry in-process: the engine's row, taking over the runs of dead engines, claim conflicts.

Heartbeats here are tenths of a second; ``tests/test_processes.py`` checks the defaults
with real processes.
"""

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import OperationalError
from django.utils import timezone
from taskiq import InMemoryBroker

from django_taskiq_beat import OneOffSchedule, SchedulerApp, SchedulerConfig, __version__, claims, registry
from django_taskiq_beat.builders import SingleScheduleBuilder
from django_taskiq_beat.models import RunStatus, SchedulerEngine, SchedulerJob, SchedulerRun
from tests.conftest import Recorder

pytestmark = pytest.mark.django_db(transaction=True)

BEAT = 0.1
DEAD_AFTER = 0.5


def make_app(broker: InMemoryBroker, scheduler_id: str = "live-engine", **overrides: Any) -> SchedulerApp:
    options: dict[str, Any] = {
        "scheduler_id": scheduler_id,
        "default_timezone": "UTC",
        "sync_interval_seconds": 0.05,
        "heartbeat_seconds": BEAT,
        "engine_dead_after_seconds": DEAD_AFTER,
    }
    return SchedulerApp(broker=broker, config=SchedulerConfig(**{**options, **overrides}))


def run(coroutine_function: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(coroutine_function)()


async def eventually(condition: Callable[[], bool], timeout: float = 5) -> None:
    async def check() -> bool:
        return await asyncio.to_thread(condition)

    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def engine_row(engine_id: str, **fields: Any) -> SchedulerEngine:
    now = timezone.now()
    values = {"hostname": "elsewhere", "pid": 1, "version": "0", "started_at": now, "heartbeat_at": now}
    return SchedulerEngine.objects.create(id=engine_id, **{**values, **fields})


def claimed_by(engine_id: str, app: SchedulerApp) -> str:
    """A due slot claimed by ``engine_id``, which never sent it; its lease has a minute left."""
    app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now()))
    claim = claims.claim_due(engine_id, timezone.now(), 10, timedelta(minutes=1), claims.RetryPolicy(5, 300))
    (dispatch,) = claim.dispatches
    return dispatch.run_id


def status(run_id: str) -> str:
    return SchedulerRun.objects.get(pk=run_id).status


# -- the engine's row -----------------------------------------------------------------------------------------


def test_the_engine_writes_its_row_beats_with_its_counters_and_marks_it_stopped(
    broker: InMemoryBroker, recorder: Recorder
) -> None:
    app = make_app(broker)

    async def scenario() -> None:
        await app.start()
        await eventually(lambda: SchedulerEngine.objects.filter(pk="live-engine").exists())
        first = await SchedulerEngine.objects.aget(pk="live-engine")
        assert (first.hostname, first.pid, first.version, first.stopped_at) == (
            socket.gethostname(),
            os.getpid(),
            __version__,
            None,
        )
        await app.single(task="system.echo").aschedule(OneOffSchedule(run_at=timezone.now()))
        await eventually(lambda: SchedulerEngine.objects.get(pk="live-engine").dispatched_count == 1)
        assert (await SchedulerEngine.objects.aget(pk="live-engine")).heartbeat_at > first.heartbeat_at
        await app.stop()

    run(scenario)
    stopped = SchedulerEngine.objects.get(pk="live-engine")
    assert stopped.stopped_at is not None and stopped.dispatched_count == 1 and recorder.names() == ["system.echo"]
    # The database's clock, read back as UTC: the MariaDB test server runs at +05:30 to catch a local-time clock.
    assert abs(stopped.heartbeat_at - timezone.now()) < timedelta(seconds=30)
    assert abs(stopped.started_at - timezone.now()) < timedelta(seconds=30)


def test_a_restarted_engine_writes_its_row_again(broker: InMemoryBroker) -> None:
    engine_row("live-engine", stopped_at=timezone.now() - timedelta(days=1), dispatched_count=5)
    app = make_app(broker)

    async def scenario() -> None:
        await app.start()
        await eventually(lambda: SchedulerEngine.objects.get(pk="live-engine").stopped_at is None)
        await app.stop()

    run(scenario)
    row = SchedulerEngine.objects.get(pk="live-engine")
    assert (row.pid, row.dispatched_count) == (os.getpid(), 0)


def test_rows_of_engines_gone_for_a_week_are_deleted_by_the_cleanup(app: SchedulerApp) -> None:
    week_ago = timezone.now() - timedelta(days=registry.RETENTION_DAYS, minutes=1)
    engine_row("stopped-long-ago", heartbeat_at=week_ago, stopped_at=week_ago)
    engine_row("dead-long-ago", heartbeat_at=week_ago)
    engine_row("stopped-yesterday", stopped_at=timezone.now() - timedelta(days=1))
    engine_row("alive")
    run(app.engine.run_once)
    assert set(SchedulerEngine.objects.values_list("id", flat=True)) == {"stopped-yesterday", "alive"}


# -- runs of dead engines ---------------------------------------------------------------------------------------


def test_pending_runs_of_dead_or_stopped_engines_are_sent_at_once_the_others_at_their_lease(
    broker: InMemoryBroker, recorder: Recorder
) -> None:
    app = make_app(broker)
    now = timezone.now()
    engine_row("killed", heartbeat_at=now - timedelta(hours=1))
    engine_row("stopped", stopped_at=now)  # it could not record a run before it stopped
    engine_row("slow", heartbeat_at=now + timedelta(hours=1))  # alive, however slow its sends
    runs = {claimer: claimed_by(claimer, app) for claimer in ("killed", "stopped", "slow", "no-row")}

    async def scenario() -> None:
        await app.start()
        await asyncio.sleep(DEAD_AFTER + 5 * BEAT)  # it judges others once it has beaten for DEAD_AFTER
        await app.stop()

    run(scenario)
    assert {claimer: status(run_id) for claimer, run_id in runs.items()} == {
        "killed": RunStatus.DISPATCHED,
        "stopped": RunStatus.DISPATCHED,
        "slow": RunStatus.PENDING,
        "no-row": RunStatus.PENDING,
    }
    assert recorder.names() == ["system.echo"] * 2
    assert app.get_health_snapshot().recovered_run_count == 2


def test_a_busy_engine_takes_over_a_dead_engines_runs_batch_after_batch(
    broker: InMemoryBroker, recorder: Recorder
) -> None:
    """While it holds runs of its own (one claimed ahead here), runs it has taken over count as leased when it took
    them, not when the dead engine claimed them: the next batch of them is taken at the next tick, not after the
    next lease renewal (CLAIM_TTL_SECONDS / 10, 6 s by default)."""
    app = make_app(broker, dispatch_batch_size=1, claim_ahead_seconds=10)
    engine_row("killed", heartbeat_at=timezone.now() - timedelta(hours=1))
    orphans = [claimed_by("killed", app) for _ in range(3)]
    SchedulerRun.objects.filter(pk__in=orphans).update(created_at=timezone.now() - timedelta(minutes=10))
    ahead = app.single(task="system.other").schedule(OneOffSchedule(run_at=timezone.now() + timedelta(seconds=5)))

    async def scenario() -> None:
        await app.start()
        await eventually(lambda: SchedulerRun.objects.filter(job=ahead).exists())  # held until its slot
        await eventually(lambda: all(status(run_id) == RunStatus.DISPATCHED for run_id in orphans), timeout=3)
        await app.stop()

    run(scenario)
    assert app.get_health_snapshot().recovered_run_count == 3


def test_an_immediate_dispatch_left_pending_waits_for_its_lease(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its process has no engine row: nothing tells whether it is alive but its lease."""
    web = make_app(broker, scheduler_id="web-process")
    monkeypatch.setattr(SingleScheduleBuilder, "_dispatch_now", lambda *args, **kwargs: None)  # it died right there
    job = web.single(task="system.echo").schedule()
    (pending,) = SchedulerRun.objects.filter(job=job)
    assert (pending.status, pending.claimed_by) == (RunStatus.PENDING, "web-process")
    app = make_app(broker)
    engine_row("killed", heartbeat_at=timezone.now() - timedelta(hours=1))
    killed_engines = claimed_by("killed", app)

    async def scenario() -> None:
        await app.start()
        await eventually(lambda: status(killed_engines) == RunStatus.DISPATCHED)
        await asyncio.sleep(5 * BEAT)
        assert await asyncio.to_thread(status, pending.id) == RunStatus.PENDING
        await SchedulerRun.objects.filter(pk=pending.pk).aupdate(lease_expires_at=timezone.now())
        await eventually(lambda: status(pending.id) == RunStatus.DISPATCHED)
        await app.stop()

    run(scenario)
    assert recorder.names() == ["system.echo"] * 2


def test_an_engine_judges_others_only_after_its_own_heartbeats_have_been_on_time_for_dead_after(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an outage that cut every engine off, each waits before calling any other dead."""
    app = make_app(broker, engine_dead_after_seconds=2.0)
    other = engine_row("other-engine", heartbeat_at=timezone.now() + timedelta(hours=1))  # alive for now
    run_id = claimed_by("other-engine", app)
    outage, fail_a_tick = [False], [False]
    real_beat, real_claim_expired = registry.beat, claims.claim_expired

    def beat(*args: Any) -> None:
        if outage[0]:
            raise OperationalError("the database is away")
        real_beat(*args)

    def claim_expired(*args: Any) -> claims.Claim:
        if fail_a_tick[0]:
            fail_a_tick[0] = False
            raise OperationalError("the connection is closed")
        return real_claim_expired(*args)

    monkeypatch.setattr(registry, "beat", beat)
    monkeypatch.setattr(claims, "claim_expired", claim_expired)

    def pending() -> bool:
        return status(run_id) == RunStatus.PENDING

    async def scenario() -> float:
        await app.start()
        await asyncio.sleep(2.5)  # connected for longer than dead_after
        outage[0] = True  # this engine's heartbeats fail ...
        await asyncio.sleep(5 * BEAT)
        await SchedulerEngine.objects.filter(pk=other.pk).aupdate(heartbeat_at=timezone.now() - timedelta(hours=1))
        await asyncio.sleep(0.5)  # ... so it does not judge the other one, now silent, dead
        assert await asyncio.to_thread(pending)
        outage[0] = False
        back = asyncio.get_running_loop().time()
        await asyncio.sleep(0.5)  # beating again, for a quarter of dead_after
        assert await asyncio.to_thread(pending)
        fail_a_tick[0] = True  # a failed tick starts the wait again
        await asyncio.sleep(1.7)
        assert await asyncio.to_thread(pending)
        await eventually(lambda: not pending())
        taken_after = asyncio.get_running_loop().time() - back
        await app.stop()
        return taken_after

    assert run(scenario) >= 0.5 + 2.0  # dead_after, counted from the failed tick
    assert recorder.names() == ["system.echo"]


# -- claim conflicts -----------------------------------------------------------------------------------------------


def test_a_slot_whose_run_another_writer_recorded_first_is_a_conflict_and_not_sent(
    app: SchedulerApp, recorder: Recorder
) -> None:
    job = app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now()))
    SchedulerRun.objects.create(job=job, scheduled_for=job.next_run_at, status=RunStatus.DISPATCHED)
    assert run(app.engine.run_once) == 0 and recorder.calls == []
    assert app.get_health_snapshot().claim_conflict_count == 1
    assert SchedulerRun.objects.filter(job=job).count() == 1


@pytest.mark.parametrize("stuck_send", ["goes-through", "fails"])
def test_runs_another_engine_took_over_are_claim_conflicts_of_the_engine_that_held_them(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, stuck_send: str
) -> None:
    """A stuck engine that another engine found dead: both send, and the stuck one counts the conflict. If the stuck
    engine's send then fails, the run stays sent and its one-off job done: no failed run, and no retry."""
    stuck_broker = InMemoryBroker(await_inplace=True)
    released = asyncio.Event()

    @stuck_broker.task(task_name="system.echo")
    async def echo() -> None:
        recorder.calls.append(("stuck.echo", (), {}))

    real_kick = stuck_broker.kick

    async def stuck_kick(message: Any) -> None:
        await released.wait()
        if stuck_send == "fails":
            raise ConnectionError("broker down")
        await real_kick(message)

    monkeypatch.setattr(stuck_broker, "kick", stuck_kick)
    stuck = make_app(stuck_broker, scheduler_id="stuck-engine", claim_ttl_seconds=1)  # renews each 0.1 s
    engine_row("stuck-engine", heartbeat_at=timezone.now() - timedelta(hours=1))  # its heartbeat stopped
    live = make_app(broker)
    job = stuck.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now()))

    async def scenario() -> None:
        sending = asyncio.create_task(stuck.engine.run_once())
        await eventually(lambda: SchedulerRun.objects.filter(job=job, claimed_by="stuck-engine").exists())
        await live.start()
        await eventually(lambda: SchedulerRun.objects.filter(job=job, status=RunStatus.DISPATCHED).exists())
        await eventually(lambda: stuck.get_health_snapshot().claim_conflict_count == 1)
        released.set()
        await sending
        await live.stop()

    run(scenario)
    sends = ["system.echo", "stuck.echo"] if stuck_send == "goes-through" else ["system.echo"]
    assert recorder.names() == sends  # at-least-once: the same run id twice
    assert live.get_health_snapshot().recovered_run_count == 1
    assert stuck.get_health_snapshot().claim_conflict_count == 1
    # The job counts runs sent, as its claim did: the second send of the same run shows as the stuck engine's
    # conflict and the live engine's recovered run, not as another send of the job.
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.dispatch_count, stored.dispatch_failures, stored.last_error) == (1, 0, None)
    assert (stored.next_run_at, stored.is_enabled) == (None, False)
    assert SchedulerRun.objects.get(job=job).status == RunStatus.DISPATCHED


@pytest.mark.parametrize("renewals", ["refused", "held up"])
def test_an_engine_whose_renewals_stopped_for_longer_than_its_leases_does_not_take_its_own_runs_over(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, renewals: str
) -> None:
    """The run it holds (claimed ahead, waiting for its slot) is past its lease, its renewals refused by the
    database or held up (its lease keeper stalled): its own take-over must not claim that run again and send it a
    second time. Its ticks go on meanwhile, and a job due then is sent."""
    app = make_app(broker, scheduler_id="engine-a", claim_ttl_seconds=1, claim_ahead_seconds=5)
    held = app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now() + timedelta(seconds=3)))
    renew = claims.extend_leases

    def refused(*args: Any, **kwargs: Any) -> set[str]:
        raise OperationalError("the database refuses writes")

    if renewals == "held up":
        monkeypatch.setattr(app.engine, "_renew_seconds", 3600)

    def sent(job: SchedulerJob) -> bool:
        return SchedulerRun.objects.filter(job=job, status=RunStatus.DISPATCHED).exists()

    async def scenario() -> None:
        await app.start()
        await eventually(lambda: SchedulerRun.objects.filter(job=held, claimed_by="engine-a").exists())
        if renewals == "refused":
            monkeypatch.setattr(claims, "extend_leases", refused)
        await eventually(lambda: SchedulerRun.objects.filter(job=held, lease_expires_at__lt=timezone.now()).exists())
        now = await asyncio.to_thread(app.single(task="system.other").schedule, OneOffSchedule(run_at=timezone.now()))
        await eventually(lambda: sent(now))
        monkeypatch.setattr(claims, "extend_leases", renew)
        await eventually(lambda: sent(held))
        await asyncio.sleep(0.3)
        await app.stop()

    run(scenario)
    assert sorted(recorder.names()) == ["system.echo", "system.other"]
    health = app.get_health_snapshot()
    assert (health.recovered_run_count, health.claim_conflict_count, health.failed_tick_count) == (0, 0, 0)
