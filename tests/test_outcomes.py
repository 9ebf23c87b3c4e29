"""RunOutcomeMiddleware with the in-process broker: what the worker reports reaches the run row."""

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.utils import timezone
from taskiq import InMemoryBroker, SimpleRetryMiddleware, TaskiqMessage, TaskiqResult

from django_taskiq_beat import (
    ChainStep,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulerApp,
    SchedulerConfig,
)
from django_taskiq_beat import middleware as outcome_middleware
from django_taskiq_beat.middleware import RunOutcomeMiddleware
from django_taskiq_beat.models import SchedulerJob, SchedulerRun
from django_taskiq_beat.sending import JOB_LABEL, RUN_LABEL, run_from_sync

pytestmark = pytest.mark.django_db(transaction=True)


class Switch:
    failing = True


@pytest.fixture
def switch() -> Switch:
    return Switch()


@pytest.fixture
def broker(switch: Switch) -> InMemoryBroker:
    broker = InMemoryBroker(await_inplace=True).with_middlewares(
        SimpleRetryMiddleware(default_retry_count=3), RunOutcomeMiddleware()
    )
    attempts = {"flaky": 0}

    @broker.task(task_name="outcome.ok")
    async def ok() -> str:
        await asyncio.sleep(0.01)
        return "done"

    @broker.task(task_name="outcome.boom")
    async def boom() -> None:
        if switch.failing:
            raise ValueError("the task broke")

    @broker.task(task_name="outcome.sync")
    def sync_task() -> int:
        return 42

    @broker.task(task_name="outcome.flaky", retry_on_error=True, max_retries=3)
    async def flaky() -> str:
        attempts["flaky"] += 1
        if attempts["flaky"] == 1:
            raise ConnectionError("first attempt fails")
        return "second time lucky"

    return broker


@pytest.fixture
def app(broker: InMemoryBroker) -> Iterator[SchedulerApp]:
    yield SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="UTC"))


def run_of(job: SchedulerJob) -> SchedulerRun:
    return SchedulerRun.objects.get(job=job)


def send_through_engine(app: SchedulerApp, job: SchedulerJob) -> None:
    app.run_now(job.id)
    async_to_sync(app.engine.run_once)()


def unsent_run(app: SchedulerApp) -> tuple[SchedulerRun, TaskiqMessage]:
    """A run row and the message a worker would get for it, without an engine in between."""
    job = app.single(task="outcome.ok").schedule(OneOffSchedule(run_at=timezone.now() + timezone.timedelta(hours=1)))
    run = SchedulerRun.objects.create(job=job, scheduled_for=timezone.now())
    message = TaskiqMessage(
        task_id=run.id,
        task_name="outcome.ok",
        labels={JOB_LABEL: job.id, RUN_LABEL: run.id},
        args=[],
        kwargs={},
    )
    return run, message


SUCCEEDED = TaskiqResult(is_err=False, return_value="done", execution_time=0.1)


def finish_with_a_writer_between(
    message: TaskiqMessage, result: TaskiqResult[Any], after: Callable[[str], bool], write: Callable[[], None]
) -> None:
    """Report ``result``; ``write`` (another process) runs once, after the first statement matching ``after``."""
    wrote: list[str] = []

    def interleave(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        returned = execute(sql, *args)
        if not wrote and after(sql):
            wrote.append(sql)
            write()
        return returned

    with connection.execute_wrapper(interleave):
        async_to_sync(RunOutcomeMiddleware().post_execute)(message, result)
    assert wrote, "the middleware never ran the statement to interleave with"


def test_succeeded_run_has_times_duration_and_the_job_knows(app: SchedulerApp) -> None:
    job = app.single(task="outcome.ok").schedule(OneOffSchedule(run_at=timezone.now()))
    async_to_sync(app.engine.run_once)()
    run = run_of(job)
    assert (run.status, run.outcome, run.error) == ("dispatched", "succeeded", None)
    assert run.started_at <= run.completed_at and run.duration.total_seconds() >= 0.01
    job.refresh_from_db()
    assert (job.last_outcome, job.consecutive_failures) == ("succeeded", 0)


def test_failed_run_records_the_error_and_failures_in_a_row(app: SchedulerApp, switch: Switch) -> None:
    job = app.single(task="outcome.boom").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))
    send_through_engine(app, job)
    send_through_engine(app, job)
    runs = list(SchedulerRun.objects.filter(job=job))
    assert {(run.status, run.outcome) for run in runs} == {("dispatched", "failed")}
    assert all(run.error == "ValueError: the task broke" for run in runs)
    job.refresh_from_db()
    assert (job.last_outcome, job.consecutive_failures, job.state) == ("failed", 2, "failing")
    switch.failing = False
    send_through_engine(app, job)
    job.refresh_from_db()
    assert (job.last_outcome, job.consecutive_failures, job.state) == ("succeeded", 0, "active")


def test_retried_task_ends_succeeded(app: SchedulerApp, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_retrying = outcome_middleware._mark_retrying

    def spy(run_id: str, error: str | None) -> None:
        seen.append(f"retrying: {error}")
        real_retrying(run_id, error)

    monkeypatch.setattr(outcome_middleware, "_mark_retrying", spy)
    job = app.single(task="outcome.flaky").schedule(OneOffSchedule(run_at=timezone.now()))
    async_to_sync(app.engine.run_once)()
    assert seen == ["retrying: ConnectionError: first attempt fails"]
    run = run_of(job)
    assert (run.outcome, run.error) == ("succeeded", None)


def test_sync_task_and_immediate_dispatch(app: SchedulerApp) -> None:
    job = app.single(task="outcome.sync").schedule()
    assert run_of(job).outcome == "succeeded"


def test_a_task_the_scheduler_did_not_send_is_ignored(app: SchedulerApp, broker: InMemoryBroker) -> None:
    job = app.single(task="outcome.ok").schedule(OneOffSchedule(run_at=timezone.now() + timezone.timedelta(hours=1)))
    before = SchedulerRun.objects.count()
    result = async_to_sync(_kiq_and_wait)(broker, "outcome.ok")
    assert result == "done" and SchedulerRun.objects.count() == before
    assert SchedulerJob.objects.get(pk=job.pk).last_outcome == ""


async def _kiq_and_wait(broker: InMemoryBroker, name: str) -> Any:
    sent = await broker.find_task(name).kiq()  # type: ignore[union-attr]
    return (await sent.wait_result(timeout=5)).return_value


def test_a_failing_outcome_write_loses_nothing(
    app: SchedulerApp, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def database_down(*args: Any) -> None:
        raise ConnectionError("database is down")

    monkeypatch.setattr(outcome_middleware, "_mark_finished", database_down)
    job = app.single(task="outcome.ok").schedule()
    run = run_of(job)
    assert run.status == "dispatched" and run.outcome == "running"  # the start was recorded, the end was not
    assert broker.result_backend.results[run.id].return_value == "done"  # the task's result is safe
    assert (
        f"Recording the outcome of job {job.id}, task outcome.ok (run {run.id}) failed: ConnectionError:"
        " database is down; the task itself is unaffected."
    ) in caplog.messages


def test_out_of_order_hooks_do_not_move_a_run_backwards(app: SchedulerApp) -> None:
    run, message = unsent_run(app)
    middleware = RunOutcomeMiddleware()

    async def late_start() -> None:
        await middleware.post_execute(message, SUCCEEDED)
        await middleware.pre_execute(message)  # a repeated or late start
        await middleware.post_execute(
            message, TaskiqResult(is_err=True, return_value=None, execution_time=0.1, error=ValueError("late"))
        )

    async_to_sync(late_start)()
    run.refresh_from_db()
    assert (run.outcome, run.error) == ("succeeded", None)
    assert SchedulerJob.objects.get(pk=run.job_id).consecutive_failures == 0


def test_a_final_outcome_is_stored_while_another_process_writes(app: SchedulerApp) -> None:
    """On SQLite a transaction that read first cannot write once another process has committed
    ("database is locked" at once): the middleware takes the write lock before it reads."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's single writer; PostgreSQL locks rows (runs in the SQLite pass of `make test`)")
    run, message = unsent_run(app)
    engine = sqlite3.connect(connection.settings_dict["NAME"], timeout=0, isolation_level=None)
    locked_out: list[bool] = []

    def engine_writes() -> None:
        try:
            engine.execute("UPDATE scheduler_job SET description = 'the engine was here'")
        except sqlite3.OperationalError:
            locked_out.append(True)

    try:
        finish_with_a_writer_between(message, SUCCEEDED, lambda sql: sql != "BEGIN", engine_writes)
    finally:
        engine.close()
    assert locked_out, "the middleware's first statement did not take the write lock"
    run.refresh_from_db()
    assert run.outcome == "succeeded"
    assert SchedulerJob.objects.get(pk=run.job_id).last_outcome == "succeeded"


def test_a_repeated_delivery_recorded_first_leaves_the_job_alone(app: SchedulerApp) -> None:
    """Row locks (PostgreSQL, MariaDB): another delivery finishes the run after this one updated the job; the job
    update is rolled back, so one execution is counted once."""
    if connection.vendor == "sqlite":
        pytest.skip(
            "row locks; SQLite's write lock rules this interleaving out (runs in the PostgreSQL and MariaDB passes)"
        )
    run, message = unsent_run(app)
    other = connections.create_connection(DEFAULT_DB_ALIAS)  # a second session, committing at once

    def other_delivery_succeeds() -> None:
        with other.cursor() as cursor:
            cursor.execute("UPDATE scheduler_run SET outcome = 'succeeded' WHERE id = %s", [run.id])

    try:
        finish_with_a_writer_between(
            message,
            TaskiqResult(is_err=True, return_value=None, execution_time=0.1, error=ValueError("late")),
            lambda sql: sql.startswith(f"UPDATE {connection.ops.quote_name('scheduler_job')}"),
            other_delivery_succeeds,
        )
    finally:
        other.close()
    run.refresh_from_db()
    assert (run.outcome, run.error) == ("succeeded", None)
    job = SchedulerJob.objects.get(pk=run.job_id)
    assert (job.last_outcome, job.consecutive_failures) == ("", 0)


def test_outcomes_written_inside_the_callers_transaction(app: SchedulerApp) -> None:
    """An in-process broker runs the task inside the sender's transaction: the middleware must
    write there, not close the connection under it."""
    with transaction.atomic():
        run, message = unsent_run(app)
        middleware = RunOutcomeMiddleware()
        async_to_sync(middleware.pre_execute)(message)
        async_to_sync(middleware.post_execute)(message, SUCCEEDED)
        run.refresh_from_db()
        assert run.outcome == "succeeded"
    assert SchedulerJob.objects.get(pk=run.job_id).last_outcome == "succeeded"


def test_chain_run_gets_the_chains_outcome_and_steps_are_not_runs(app: SchedulerApp, broker: InMemoryBroker) -> None:
    job = app.chain(
        steps=[ChainStep(task="outcome.ok"), ChainStep(task="outcome.sync")], wait_poll_interval_seconds=0.01
    ).schedule()
    run_from_sync(broker.wait_all)
    assert SchedulerRun.objects.count() == 1
    run = run_of(job)
    assert run.outcome == "succeeded" and run.progress["status"] == "succeeded"


# -- pause_after_failures ----------------------------------------------------------------------------------


def test_pause_after_failures_pauses_the_job_with_a_note_naming_the_last_error(app: SchedulerApp) -> None:
    from django_taskiq_beat import SchedulePolicy

    job = app.single(task="outcome.boom").schedule(
        PeriodicSchedule(interval=IntervalTrigger(hours=1)), policy=SchedulePolicy(pause_after_failures=2)
    )
    send_through_engine(app, job)
    job.refresh_from_db()
    assert (job.state, job.consecutive_failures) == ("failing", 1)
    send_through_engine(app, job)
    job.refresh_from_db()
    assert (job.state, job.is_enabled, job.next_run_at, job.consecutive_failures) == ("paused", False, None, 2)
    assert job.pause_note == "Paused after 2 failed runs in a row; the last: ValueError: the task broke"
    assert job.paused_at is not None
    app.resume(job.id)  # counted anew from here: paused once more after two more failures
    job.refresh_from_db()
    assert (job.pause_note, job.paused_at, job.state, job.consecutive_failures) == (None, None, "active", 0)
    send_through_engine(app, job)
    assert SchedulerJob.objects.get(pk=job.pk).is_enabled
    send_through_engine(app, job)
    job.refresh_from_db()
    assert (job.state, job.consecutive_failures) == ("paused", 2)


def test_a_run_now_clears_a_failure_pause_but_not_the_count(app: SchedulerApp) -> None:
    """Unlike resume, a run now keeps the count of failed sends: one more failure pauses the job again at once."""
    from django_taskiq_beat import SchedulePolicy

    job = app.single(task="outcome.boom").schedule(
        PeriodicSchedule(interval=IntervalTrigger(hours=1)), policy=SchedulePolicy(pause_after_failures=2)
    )
    send_through_engine(app, job)
    send_through_engine(app, job)
    assert SchedulerJob.objects.get(pk=job.pk).state == "paused"
    send_through_engine(app, job)  # the run now of the paused job: enabled to send, and it fails once more
    job.refresh_from_db()
    assert (job.state, job.is_enabled, job.consecutive_failures) == ("paused", False, 3)
    assert job.pause_note == "Paused after 3 failed runs in a row; the last: ValueError: the task broke"


def test_a_success_between_failures_restarts_the_count(app: SchedulerApp, switch: Switch) -> None:
    from django_taskiq_beat import SchedulePolicy

    job = app.single(task="outcome.boom").schedule(
        PeriodicSchedule(interval=IntervalTrigger(hours=1)), policy=SchedulePolicy(pause_after_failures=2)
    )
    send_through_engine(app, job)
    switch.failing = False
    send_through_engine(app, job)
    switch.failing = True
    send_through_engine(app, job)
    job.refresh_from_db()
    assert (job.state, job.consecutive_failures) == ("failing", 1)


def test_pause_after_failures_needs_the_outcome_middleware_on_the_broker() -> None:
    from django_taskiq_beat import SchedulePolicy, SchedulerValidationError

    bare = InMemoryBroker()
    bare.register_task(lambda: None, task_name="bare.task")
    app = SchedulerApp(broker=bare, config=SchedulerConfig(default_timezone="UTC"))
    with pytest.raises(SchedulerValidationError, match="add RunOutcomeMiddleware to the broker") as refused:
        app.single(task="bare.task").schedule(
            PeriodicSchedule(interval=IntervalTrigger(hours=1)), policy=SchedulePolicy(pause_after_failures=3)
        )
    assert refused.value.field == "policy" and not SchedulerJob.objects.exists()
    app.single(task="bare.task").schedule(
        PeriodicSchedule(interval=IntervalTrigger(hours=1)), policy=SchedulePolicy(misfire_grace_seconds=5)
    )  # the timing policies need no outcomes
