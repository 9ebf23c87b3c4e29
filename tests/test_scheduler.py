"""The scheduling API: the reference's scenarios, its untested corners, and our differences.

Each test runs twice, through the sync API and through its async twin (the ``call``
fixture), against the same rows.
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone
from taskiq import InMemoryBroker, SendTaskError

from django_taskiq_beat import (
    CrontabTrigger,
    ImmediateDispatch,
    IntervalTrigger,
    JobNotFoundError,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulerApp,
    SchedulerConfig,
    SchedulerValidationError,
)
from django_taskiq_beat.models import SchedulerJob, SchedulerRun
from django_taskiq_beat.sending import JOB_LABEL, RUN_LABEL
from tests.conftest import Recorder

# Real commits: an immediate dispatch waits for the outermost transaction to commit.
pytestmark = pytest.mark.django_db(transaction=True)

Call = Callable[..., Any]
HOURLY = PeriodicSchedule(interval=IntervalTrigger(hours=1))
EVERY_MINUTE = PeriodicSchedule(interval=IntervalTrigger(minutes=1))


def in_an_hour() -> OneOffSchedule:
    return OneOffSchedule(run_at=timezone.now() + timedelta(hours=1))


# -- the reference's test_scheduler.py --------------------------------------------------------


def test_single_builder_creates_periodic_job(app: SchedulerApp, call: Call) -> None:
    builder = app.single(task="system.echo", metadata={"scope": "system"})
    job = call(builder, "schedule", PeriodicSchedule(interval=IntervalTrigger(seconds=10)))
    stored = SchedulerJob.objects.get(pk=job.id)
    assert (stored.kind, stored.strategy, stored.is_enabled) == ("periodic", "interval", True)
    assert stored.next_run_at == stored.created_at.replace(microsecond=0) + timedelta(seconds=10)
    assert stored.metadata_payload == {"scope": "system"}


def test_single_builder_defaults_to_immediate_dispatch(app: SchedulerApp, call: Call, recorder: Recorder) -> None:
    job = call(app.single(task="system.echo", args=[1], kwargs={"label": "ping"}), "schedule")
    stored = SchedulerJob.objects.get(pk=job.id)
    assert (stored.kind, stored.strategy, stored.is_enabled, stored.next_run_at) == (
        "one_off",
        "immediate",
        False,
        None,
    )
    assert stored.dispatch_count == 1
    assert stored.last_run_at is not None and stored.last_dispatched_task_id
    runs = list(SchedulerRun.objects.filter(job=stored))
    assert [(run.status, run.broker_task_id) for run in runs] == [("dispatched", stored.last_dispatched_task_id)]
    assert recorder.calls == [("system.echo", (1,), {"label": "ping"})]


def test_single_builder_accepts_explicit_immediate_dispatch(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo"), "schedule", ImmediateDispatch())
    assert (job.strategy, job.dispatch_count) == ("immediate", 1)


def test_single_builder_rejects_immediate_dispatch_upsert(app: SchedulerApp, call: Call) -> None:
    with pytest.raises(SchedulerValidationError, match="ImmediateDispatch cannot be used with upsert"):
        call(app.single(task="system.echo"), "upsert", ImmediateDispatch(), job_id="x")
    assert not SchedulerJob.objects.exists()


def test_single_builder_rejects_unknown_task(app: SchedulerApp, call: Call) -> None:
    with pytest.raises(SchedulerValidationError, match="not registered") as caught:
        call(app.single(task="tests.unknown"), "schedule", HOURLY)
    assert (caught.value.field, caught.value.value) == ("task", "tests.unknown")
    assert not SchedulerJob.objects.exists()


def test_single_builder_rejects_non_json_payload(app: SchedulerApp) -> None:
    with pytest.raises(SchedulerValidationError, match="JSON") as caught:
        app.single(task="system.echo", metadata={"bad": object()})
    assert caught.value.field == "metadata"


def test_single_builder_pause_resume_run_now_and_delete(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo"), "schedule", HOURLY)
    original_next = job.next_run_at

    paused = call(app, "pause", job.id)
    assert (paused.is_enabled, paused.next_run_at) == (False, None)

    resumed = call(app, "resume", job.id)
    assert resumed.is_enabled and resumed.next_run_at >= original_next

    forced = call(app, "run_now", job.id)
    assert abs(forced.next_run_at - timezone.now()) < timedelta(seconds=1)

    call(app, "delete", job.id)
    assert not SchedulerJob.objects.filter(pk=job.id).exists()


def test_single_builder_upsert_creates_and_updates_job_without_duplicates(
    app: SchedulerApp, call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_taskiq_beat.scheduler")
    first = call(app.single(task="system.echo"), "upsert", HOURLY, job_id="system.echo")
    second = call(
        app.single(task="system.echo"),
        "upsert",
        PeriodicSchedule(interval=IntervalTrigger(hours=2)),
        job_id="system.echo",
        name="Echo every two hours",
    )
    assert SchedulerJob.objects.count() == 1
    stored = SchedulerJob.objects.get()
    assert stored.name == "Echo every two hours"
    assert second.next_run_at > first.next_run_at
    upserts = [record for record in caplog.records if record.getMessage().startswith("Upserted job ")]
    assert [record.job_created for record in upserts] == [True, False]  # type: ignore[attr-defined]
    assert [record.getMessage().split(": ")[0] for record in upserts] == [
        "Upserted job system.echo, task system.echo (created)",
        "Upserted job 'Echo every two hours' (system.echo), task system.echo (updated)",
    ]


def test_single_builder_upsert_preserves_next_run_for_unchanged_job(app: SchedulerApp, call: Call) -> None:
    first = call(app.single(task="system.echo"), "upsert", HOURLY, job_id="keep")
    SchedulerJob.objects.filter(pk="keep").update(next_run_at=datetime(2020, 1, 1, tzinfo=UTC))
    call(app.single(task="system.echo"), "upsert", HOURLY, job_id="keep", name="renamed")
    stored = SchedulerJob.objects.get(pk="keep")
    assert stored.next_run_at == datetime(2020, 1, 1, tzinfo=UTC)
    assert stored.name == "renamed" and first.id == stored.id


def test_single_builder_supports_bulk_startup_sync(app: SchedulerApp, call: Call) -> None:
    call(app.single(task="system.echo"), "upsert", HOURLY, job_id="system.cleanup", name="Cleanup")
    call(app.single(task="system.echo"), "upsert", HOURLY, job_id="system.metrics", name="Metrics")
    call(app.single(task="system.echo"), "upsert", HOURLY, job_id="system.metrics", name="Metrics v2")
    assert dict(SchedulerJob.objects.values_list("id", "name")) == {
        "system.cleanup": "Cleanup",
        "system.metrics": "Metrics v2",
    }


def test_scheduler_app_logs_job_lifecycle(app: SchedulerApp, call: Call, caplog: pytest.LogCaptureFixture) -> None:
    job = call(app.single(task="system.echo"), "schedule", HOURLY)
    caplog.set_level(logging.INFO, logger="django_taskiq_beat.app")
    for method in ("pause", "resume", "run_now", "delete"):
        call(app, method, job.id)
    app_records = [record for record in caplog.records if record.name == "django_taskiq_beat.app"]
    named = f"job {job.id}, task system.echo"
    assert [record.getMessage() for record in app_records] == [
        f"Paused {named}.",
        f"Resumed {named}.",
        f"Marked {named} to run now.",
        f"Deleted {named} and its runs.",
    ]
    assert {record.job_id for record in app_records} == {job.id}  # type: ignore[attr-defined]


def test_scheduler_app_purges_run_history(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo"), "schedule", HOURLY)
    now = timezone.now()
    SchedulerRun.objects.create(job=job, scheduled_for=now - timedelta(days=10), finished_at=now - timedelta(days=10))
    SchedulerRun.objects.create(job=job, scheduled_for=now, finished_at=now)
    SchedulerRun.objects.create(job=job, scheduled_for=now + timedelta(seconds=1))  # pending: never purged
    assert call(app, "purge_runs", finished_before=now - timedelta(days=1)) == 1
    assert SchedulerRun.objects.count() == 2


def test_scheduler_resume_handles_naive_timestamps_stored_by_sqlite(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo"), "schedule", HOURLY)
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE scheduler_job SET created_at = %s, updated_at = %s WHERE id = %s",
                ["2026-01-01 10:00:00", "2026-01-01 10:00:00", job.id],
            )
    call(app, "pause", job.id)
    resumed = call(app, "resume", job.id)
    assert resumed.is_enabled and resumed.next_run_at > timezone.now()


# -- behaviours the reference leaves untested --------------------------------------------------


def test_resume_of_a_paused_one_off_that_never_ran_fires_it(app: SchedulerApp, call: Call) -> None:
    past = OneOffSchedule(run_at=timezone.now() - timedelta(minutes=5))
    job = call(app.single(task="system.echo"), "schedule", past, is_enabled=False)
    assert (job.is_enabled, job.next_run_at) == (False, None)
    resumed = call(app, "resume", job.id)
    assert resumed.is_enabled and abs(resumed.next_run_at - timezone.now()) < timedelta(seconds=2)


def test_deleting_a_job_deletes_its_runs(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo"), "schedule")
    other = call(app.single(task="system.echo"), "schedule")
    assert SchedulerRun.objects.filter(job_id=job.id).count() == 1
    call(app, "delete", job.id)
    assert not SchedulerRun.objects.filter(job_id=job.id).exists()
    assert SchedulerRun.objects.filter(job_id=other.id).count() == 1


def test_record_runs_off_keeps_no_run_for_a_successful_immediate_dispatch(broker: InMemoryBroker, call: Call) -> None:
    app = SchedulerApp(broker=broker, config=SchedulerConfig(record_runs=False))
    job = call(app.single(task="system.echo"), "schedule")
    assert job.dispatch_count == 1
    assert not SchedulerRun.objects.exists()


def test_immediate_dispatch_sends_run_id_as_task_id_and_labels(
    app: SchedulerApp, broker: InMemoryBroker, call: Call
) -> None:
    job = call(app.single(task="system.echo"), "schedule")
    run = SchedulerRun.objects.get(job=job)
    result = broker.result_backend.results[run.id]
    assert result.labels[JOB_LABEL] == job.id and result.labels[RUN_LABEL] == run.id


def test_failed_immediate_dispatch_is_recorded_then_raised(
    app: SchedulerApp, broker: InMemoryBroker, call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broker_down(message: object) -> None:
        raise ConnectionError("boom")

    monkeypatch.setattr(broker, "kick", broker_down)
    with pytest.raises(SendTaskError) as caught:
        call(app.single(task="system.echo"), "schedule")
    assert str(caught.value.__cause__) == "boom"
    job = SchedulerJob.objects.get()
    run = SchedulerRun.objects.get()
    assert (job.dispatch_count, job.is_enabled, job.is_finished) == (1, False, True)
    assert "boom" in job.last_error and job.last_dispatched_task_id is None
    assert run.status == "failed" and "boom" in run.error


# -- difference 5: upsert and resume respect what happened ----------------------------------------


def test_upsert_keeps_an_operators_pause(app: SchedulerApp, call: Call) -> None:
    call(app.single(task="system.echo"), "upsert", HOURLY, job_id="nightly")
    call(app, "pause", "nightly")
    job = call(app.single(task="system.echo"), "upsert", HOURLY, job_id="nightly")
    assert (job.is_enabled, job.next_run_at) == (False, None)
    changed = call(
        app.single(task="system.echo"), "upsert", PeriodicSchedule(interval=IntervalTrigger(hours=3)), job_id="nightly"
    )
    assert (changed.is_enabled, changed.trigger_payload["interval"]["hours"]) == (False, 3)


def test_upsert_with_is_enabled_overrides_the_pause(app: SchedulerApp, call: Call) -> None:
    call(app.single(task="system.echo"), "upsert", HOURLY, job_id="nightly")
    call(app, "pause", "nightly")
    job = call(app.single(task="system.echo"), "upsert", HOURLY, job_id="nightly", is_enabled=True)
    assert job.is_enabled and job.next_run_at > timezone.now()
    disabled = call(app.single(task="system.echo"), "upsert", HOURLY, job_id="nightly", is_enabled=False)
    assert (disabled.is_enabled, disabled.next_run_at) == (False, None)


def _finish(job_id: str) -> None:
    """What the engine does after sending a one-off."""
    now = timezone.now()
    SchedulerJob.objects.filter(pk=job_id).update(
        is_enabled=False, next_run_at=None, finished_at=now, dispatch_count=1, last_run_at=now
    )


def test_upsert_does_not_refire_a_finished_one_off_with_unchanged_trigger(app: SchedulerApp, call: Call) -> None:
    trigger = OneOffSchedule(run_at=timezone.now() - timedelta(minutes=1))
    call(app.single(task="system.echo"), "upsert", trigger, job_id="once")
    _finish("once")
    for is_enabled in ({}, {"is_enabled": True}):
        job = call(app.single(task="system.echo", args=[2]), "upsert", trigger, job_id="once", **is_enabled)
        assert (job.is_enabled, job.next_run_at, job.is_finished) == (False, None, True)
    moved = call(app.single(task="system.echo"), "upsert", in_an_hour(), job_id="once")
    assert moved.is_enabled and not moved.is_finished and moved.next_run_at > timezone.now()


def test_a_finished_one_off_given_only_the_zone_its_time_was_chosen_in_does_not_fire_again(
    app: SchedulerApp, call: Call
) -> None:
    moment = timezone.now() - timedelta(minutes=1)
    call(app.single(task="system.echo"), "upsert", OneOffSchedule(run_at=moment), job_id="once")
    _finish("once")
    zoned = call(
        app.single(task="system.echo"), "upsert", OneOffSchedule(run_at=moment, timezone="Asia/Tokyo"), job_id="once"
    )
    assert (zoned.is_finished, zoned.next_run_at, zoned.trigger_payload["timezone"]) == (True, None, "Asia/Tokyo")
    moved = call(
        app.single(task="system.echo"),
        "upsert",
        OneOffSchedule(run_at=moment + timedelta(hours=2), timezone="Asia/Tokyo"),
        job_id="once",
    )
    assert moved.is_enabled and not moved.is_finished and moved.next_run_at > timezone.now()


def test_resume_does_not_refire_a_finished_one_off_but_run_now_does(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo"), "schedule", OneOffSchedule(run_at=timezone.now()))
    _finish(job.id)
    resumed = call(app, "resume", job.id)
    assert (resumed.is_enabled, resumed.next_run_at, resumed.is_finished) == (False, None, True)
    forced = call(app, "run_now", job.id)
    assert forced.is_enabled and forced.next_run_at is not None and not forced.is_finished


def test_resume_of_an_immediate_job_leaves_it_finished(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo"), "schedule")
    resumed = call(app, "resume", job.id)
    assert (resumed.is_enabled, resumed.next_run_at, resumed.is_finished) == (False, None, True)


# -- difference 6: an ended window finishes the job ------------------------------------------------


def test_periodic_job_with_its_window_over_is_finished_not_inert(app: SchedulerApp, call: Call) -> None:
    ended = PeriodicSchedule(interval=IntervalTrigger(hours=1), end_at=timezone.now() - timedelta(minutes=1))
    job = call(app.single(task="system.echo"), "schedule", ended)
    assert (job.is_enabled, job.next_run_at, job.is_finished) == (False, None, True)
    assert call(app, "resume", job.id).is_finished


def test_future_window_waits_for_start_at(app: SchedulerApp, call: Call) -> None:
    start = (timezone.now() + timedelta(days=1)).replace(microsecond=0)
    job = call(
        app.single(task="system.echo"), "schedule", PeriodicSchedule(interval=IntervalTrigger(hours=1), start_at=start)
    )
    assert job.next_run_at == start


# -- difference 9 and contexts: atomic blocks -------------------------------------------------------


def test_immediate_dispatch_inside_atomic_waits_for_commit(app: SchedulerApp, recorder: Recorder) -> None:
    with transaction.atomic():
        job = app.single(task="system.echo").schedule()
        assert recorder.calls == []
    assert recorder.names() == ["system.echo"]
    assert SchedulerJob.objects.get(pk=job.id).dispatch_count == 1


def test_rolled_back_immediate_dispatch_never_sends(app: SchedulerApp, recorder: Recorder) -> None:
    with pytest.raises(RuntimeError, match="roll back"), transaction.atomic():
        app.single(task="system.echo").schedule()
        raise RuntimeError("roll back")
    assert recorder.calls == []
    assert not SchedulerJob.objects.exists() and not SchedulerRun.objects.exists()


# -- configuration reaches the rows -----------------------------------------------------------------


def test_cron_without_timezone_takes_default_timezone(broker: InMemoryBroker, call: Call) -> None:
    app = SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="Asia/Tokyo"))
    job = call(
        app.single(task="system.echo"), "schedule", PeriodicSchedule(crontab=CrontabTrigger(minute="0", hour="9"))
    )
    assert job.trigger_payload["crontab"]["timezone"] == "Asia/Tokyo"
    assert job.next_run_at.astimezone(datetime.now().astimezone().tzinfo).minute == 0
    assert job.next_run_at.hour == 0  # 09:00 in Tokyo is 00:00 UTC


def test_app_without_config_reads_settings(broker: InMemoryBroker, settings: Any) -> None:
    settings.TIME_ZONE = "America/New_York"
    settings.TASKIQ_BEAT = {"DISPATCH_BATCH_SIZE": 7}
    app = SchedulerApp(broker=broker)
    assert (app.config.default_timezone, app.config.dispatch_batch_size) == ("America/New_York", 7)


# -- bad input writes nothing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda app: app.single(task="system.echo", args=[datetime(2026, 1, 1)]), "args"),
        (lambda app: app.single(task="system.echo", kwargs={"when": {1, 2}}), "kwargs"),
        (lambda app: app.single(task="system.echo", kwargs={1: "x"}), "kwargs"),
        (lambda app: app.single(task="system.echo", args="not a list"), "args"),
        (lambda app: app.single(task="system.echo", args=[float("inf")]), "args"),
        (lambda app: app.single(task=42), "task"),
        (lambda app: app.single(task="   "), "task"),
    ],
)
def test_bad_task_call_is_rejected_with_its_field(
    app: SchedulerApp, build: Callable[[SchedulerApp], Any], field: str
) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        build(app)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("method", "arguments", "field"),
    [
        ("schedule", {"trigger": "every hour"}, "trigger"),
        ("schedule", {"trigger": HOURLY, "job_id": "x" * 256}, "job_id"),
        ("schedule", {"trigger": HOURLY, "job_id": ""}, "job_id"),
        ("schedule", {"trigger": HOURLY, "name": 5}, "name"),
        ("schedule", {"trigger": HOURLY, "is_enabled": "yes"}, "is_enabled"),
        ("upsert", {"trigger": HOURLY, "job_id": None}, "job_id"),
        ("upsert", {"trigger": HOURLY, "job_id": "x", "is_enabled": 1}, "is_enabled"),
    ],
)
def test_bad_schedule_arguments_write_nothing(
    app: SchedulerApp, call: Call, method: str, arguments: dict[str, Any], field: str
) -> None:
    call(app.single(task="system.echo"), "upsert", HOURLY, job_id="existing", name="kept")
    with pytest.raises(SchedulerValidationError) as caught:
        call(app.single(task="system.echo"), method, **arguments)
    assert caught.value.field == field
    assert list(SchedulerJob.objects.values_list("id", "name")) == [("existing", "kept")]


def test_bad_upsert_leaves_the_stored_job_alone(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo", args=[1]), "upsert", HOURLY, job_id="stable", name="kept")
    with pytest.raises(SchedulerValidationError):
        call(app.single(task="tests.unknown", args=[2]), "upsert", HOURLY, job_id="stable", name="lost")
    stored = SchedulerJob.objects.get(pk="stable")
    assert (stored.name, stored.task_args, stored.next_run_at) == ("kept", [1], job.next_run_at)


@pytest.mark.parametrize("method", ["get_job", "pause", "resume", "run_now", "delete"])
def test_missing_job_id_raises_job_not_found(app: SchedulerApp, call: Call, method: str) -> None:
    with pytest.raises(JobNotFoundError, match="Scheduler job 'nope' was not found") as caught:
        call(app, method, "nope")
    assert (caught.value.field, caught.value.value) == ("job_id", "nope")


def test_purge_runs_needs_an_aware_cutoff(app: SchedulerApp) -> None:
    with pytest.raises(SchedulerValidationError, match="timezone-aware"):
        app.purge_runs(finished_before=datetime(2026, 1, 1))


def test_schedule_with_a_taken_job_id_is_refused_and_changes_nothing(app: SchedulerApp, call: Call) -> None:
    original = call(app.single(task="system.echo", args=[1]), "schedule", HOURLY, job_id="dup", name="first")
    with pytest.raises(SchedulerValidationError, match="already exists") as caught:
        call(app.single(task="system.other", args=[2]), "schedule", EVERY_MINUTE, job_id="dup", name="second")
    assert caught.value.field == "job_id"
    stored = SchedulerJob.objects.get(pk="dup")
    assert (stored.name, stored.task_name, stored.task_args, stored.next_run_at) == (
        "first",
        "system.echo",
        [1],
        original.next_run_at,
    )


def test_unknown_task_is_looked_up_again_after_discovering_tasks_modules(
    app: SchedulerApp, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_taskiq_beat import sending

    discoveries: list[None] = []

    def discover_tasks() -> None:  # what importing an app's tasks.py does
        discoveries.append(None)
        broker.register_task(lambda: None, task_name="late.registered")

    monkeypatch.setattr(sending, "discover_tasks", discover_tasks)
    job = app.single(task="late.registered").schedule(HOURLY)
    assert len(discoveries) == 1 and job.task_name == "late.registered"


def test_immediate_run_of_a_process_that_died_before_sending_is_recovered(
    broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asgiref.sync import async_to_sync

    from django_taskiq_beat.builders import ScheduleBuilder

    app = SchedulerApp(broker=broker, config=SchedulerConfig(claim_ttl_seconds=1))
    monkeypatch.setattr(ScheduleBuilder, "_dispatch_now", lambda *args, **kwargs: None)  # dies after the commit
    job = app.single(task="system.echo").schedule()
    run = SchedulerRun.objects.get(job=job)
    assert run.status == "pending" and run.lease_expires_at is not None
    import time

    time.sleep(1.1)
    assert async_to_sync(app.engine.run_once)() == 1
    run.refresh_from_db()
    assert run.status == "dispatched" and recorder.names() == ["system.echo"]


def test_hanging_broker_fails_an_immediate_dispatch_after_the_send_timeout(
    broker: InMemoryBroker, call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    async def hanging_kick(message: object) -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(broker, "kick", hanging_kick)
    app = SchedulerApp(broker=broker, config=SchedulerConfig(dispatch_timeout_seconds=0.2))
    with pytest.raises(TimeoutError):
        call(app.single(task="system.echo"), "schedule")
    run = SchedulerRun.objects.get()
    assert run.status == "failed" and run.error == "TimeoutError: no answer from the broker within 0.2 s"


def test_unchanged_upsert_writes_nothing(app: SchedulerApp, call: Call) -> None:
    first = call(app.single(task="system.echo"), "upsert", HOURLY, job_id="same", name="Same")
    again = call(app.single(task="system.echo"), "upsert", HOURLY, job_id="same", name="Same")
    assert SchedulerJob.objects.get(pk="same").updated_at == first.updated_at == again.updated_at


# -- pause notes ---------------------------------------------------------------------------------------


def test_pause_records_when_and_why_and_resume_clears_it(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo"), "schedule", HOURLY)
    paused = call(app, "pause", job.id, note="Disk full on the reports host")
    assert (paused.is_enabled, paused.pause_note) == (False, "Disk full on the reports host")
    began = paused.paused_at
    assert began is not None and SchedulerJob.objects.get(pk=job.id).paused_at == began
    again = call(app, "pause", job.id)  # no note: the reason given stays
    assert (again.paused_at, again.pause_note) == (began, "Disk full on the reports host")
    renoted = call(app, "pause", job.id, note="Waiting for the vendor")
    assert (renoted.paused_at, renoted.pause_note) == (began, "Waiting for the vendor")
    resumed = call(app, "resume", job.id)
    assert (resumed.is_enabled, resumed.paused_at, resumed.pause_note) == (True, None, None)


def test_run_now_of_a_paused_job_clears_the_pause(app: SchedulerApp, call: Call) -> None:
    job = call(app.single(task="system.echo"), "schedule", HOURLY)
    call(app, "pause", job.id, note="later")
    ran = call(app, "run_now", job.id)
    assert (ran.is_enabled, ran.paused_at, ran.pause_note) == (True, None, None)


def test_created_disabled_is_paused_and_an_immediate_job_is_not(app: SchedulerApp) -> None:
    assert app.single(task="system.echo").schedule(HOURLY, is_enabled=False).paused_at is not None
    assert app.single(task="system.echo").schedule().paused_at is None


@pytest.mark.parametrize("note", ["a\x00b", "x" * 1001, 42])
def test_a_bad_pause_note_is_refused_and_the_job_stays_enabled(app: SchedulerApp, call: Call, note: Any) -> None:
    job = call(app.single(task="system.echo"), "schedule", HOURLY)
    with pytest.raises(SchedulerValidationError) as caught:
        call(app, "pause", job.id, note=note)
    assert caught.value.field == "note" and SchedulerJob.objects.get(pk=job.id).is_enabled
