"""One row the engine cannot use costs only that row: found by an adversarial review.

Each test writes one job behind the API's back (deeply nested JSON, text that is not
UTF-8, counters at their column's limit), and the engine must keep sending every other job
and never stall on storing what it sent.
"""

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import DataError, connection
from django.utils import timezone

from django_taskiq_beat import SchedulerApp, claims
from django_taskiq_beat.models import MAX_COUNT, RunStatus, SchedulerJob, SchedulerRun
from tests.conftest import UNREADABLE_TIMES, Recorder, store_raw
from tests.test_engine import due_one_off, make_config, run

pytestmark = pytest.mark.django_db(transaction=True)
COLUMN_LIMIT = 2**63 - 1 if connection.vendor == "sqlite" else 2**31 - 1  # SQLite's integers have 64 bits


@pytest.fixture
def app(broker: Any) -> SchedulerApp:
    return SchedulerApp(broker=broker, config=make_config())


def assert_the_others_are_still_sent(app: SchedulerApp, recorder: Recorder) -> None:
    """A good job due now and one due later both go out, and no tick fails."""
    for label in ("good", "later"):
        due_one_off(app, args=[label])
        run(app.engine.run_once)
        assert ("system.echo", (label,), {}) in recorder.calls, recorder.calls
    assert app.get_health_snapshot().failed_tick_count == 0


@pytest.mark.skipif(connection.vendor == "mysql", reason="MariaDB refuses to store JSON nested 32 deep or more")
@pytest.mark.parametrize("column", ["task_args", "task_kwargs", "trigger_payload"])
def test_json_nested_too_deep_to_read_fails_only_its_job(app: SchedulerApp, recorder: Recorder, column: str) -> None:
    bad = due_one_off(app)
    depth = 990 if connection.vendor == "sqlite" else 5000  # SQLite's json_valid stops at 1000
    value = "[" * depth + "]" * depth
    store_raw("scheduler_job", bad.id, column, value if column == "task_args" else '{"a": ' + value + "}")
    assert_the_others_are_still_sent(app, recorder)
    assert SchedulerRun.objects.get(job_id=bad.id).status == RunStatus.FAILED


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite only: PostgreSQL refuses text that is not UTF-8")
@pytest.mark.parametrize("column", ["task_name", "kind", "strategy"])
def test_text_that_is_not_utf8_fails_only_its_job(app: SchedulerApp, recorder: Recorder, column: str) -> None:
    bad = due_one_off(app)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE scheduler_job SET {column} = CAST(X'66FF' AS TEXT) WHERE id = %s", [bad.id])
    assert_the_others_are_still_sent(app, recorder)


def test_a_full_dispatch_count_stops_counting_instead_of_stopping_the_engine(
    app: SchedulerApp, recorder: Recorder
) -> None:
    bad = due_one_off(app, args=["full"])
    SchedulerJob.objects.filter(pk=bad.pk).update(dispatch_count=COLUMN_LIMIT)
    assert_the_others_are_still_sent(app, recorder)
    assert ("system.echo", ("full",), {}) in recorder.calls
    assert SchedulerRun.objects.get(job_id=bad.id).status == RunStatus.DISPATCHED
    assert SchedulerJob.objects.get(pk=bad.pk).dispatch_count == MAX_COUNT


@pytest.mark.parametrize("fault", ["corrupt trigger", "unknown task"])
def test_a_full_failure_count_stops_counting(app: SchedulerApp, recorder: Recorder, fault: str) -> None:
    bad = due_one_off(app)
    broken = {"trigger_payload": {"run_at": 5}} if fault == "corrupt trigger" else {"task_name": "no.such.task"}
    SchedulerJob.objects.filter(pk=bad.pk).update(dispatch_failures=COLUMN_LIMIT, **broken)
    assert_the_others_are_still_sent(app, recorder)
    assert SchedulerJob.objects.get(pk=bad.pk).dispatch_failures == MAX_COUNT


def test_outcomes_the_database_refuses_for_their_values_do_not_stall_the_engine(
    broker: Any, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = SchedulerApp(broker=broker, config=make_config(sync_interval_seconds=0.2))
    poisoned = due_one_off(app, args=["poisoned"])
    real_record = claims.record

    def refusing_record(outcomes: list[claims.Outcome], *args: Any) -> None:
        if any(outcome.dispatch.job_id == poisoned.id for outcome in outcomes):
            raise DataError("integer out of range")  # as PostgreSQL says it, every time
        real_record(outcomes, *args)

    monkeypatch.setattr(claims, "record", refusing_record)

    async def scenario() -> None:
        await app.start()
        for label in ("good-1", "good-2"):
            await asyncio.sleep(0.5)
            await sync_to_async(due_one_off)(app, args=[label])
        await asyncio.sleep(1.0)
        await app.stop()

    run(scenario)
    sent = [args for _, args, _ in recorder.calls]
    assert sent.count(("poisoned",)) == 1 and ("good-1",) in sent and ("good-2",) in sent, sent
    run_row = SchedulerRun.objects.get(job_id=poisoned.id)  # its run settled, so no engine sends it again
    assert run_row.status == RunStatus.DISPATCHED and run_row.lease_expires_at is None


def test_the_job_cleanup_deletes_finished_jobs_with_unreadable_columns(broker: Any, recorder: Recorder) -> None:
    app = SchedulerApp(broker=broker, config=make_config())
    jobs = [due_one_off(app, args=[n]) for n in range(3)]
    run(app.engine.run_once)  # all three sent and finished
    SchedulerJob.objects.update(finished_at=timezone.now() - timedelta(days=1))
    store_raw("scheduler_job", jobs[0].id, "last_run_at", UNREADABLE_TIMES[connection.vendor][0])
    cleaning = SchedulerApp(broker=broker, config=make_config(completed_job_retention_days=0))
    run(cleaning.engine.run_once)
    assert not SchedulerJob.objects.exists() and cleaning.get_health_snapshot().failed_tick_count == 0
