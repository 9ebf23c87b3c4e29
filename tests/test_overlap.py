"""``overlap``: a slot due while the job's previous run is unfinished is sent, skipped or held.

The claims run at a "now" the test chooses; the previous run's state is what the worker's
``RunOutcomeMiddleware`` writes, through its own functions.
"""

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from taskiq import InMemoryBroker

from django_taskiq_beat import (
    IntervalTrigger,
    PeriodicSchedule,
    SchedulePolicy,
    SchedulerApp,
    SchedulerConfig,
    SchedulerValidationError,
    claims,
)
from django_taskiq_beat.describe import local_time
from django_taskiq_beat.middleware import RunOutcomeMiddleware, _mark_finished, _mark_running
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun

pytestmark = pytest.mark.django_db

EVERY_10_S = PeriodicSchedule(interval=IntervalTrigger(seconds=10))
RETRY = claims.RetryPolicy(5, 300)
SKIP = SchedulePolicy(overlap="skip")
BUFFER_ONE = SchedulePolicy(overlap="buffer_one")


@pytest.fixture
def app() -> SchedulerApp:
    """An app whose broker reports outcomes, as an overlap policy needs."""
    broker = InMemoryBroker().with_middlewares(RunOutcomeMiddleware())
    broker.register_task(lambda *args: None, task_name="system.echo")
    return SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="UTC"))


def claim(now: datetime) -> claims.Claim:
    return claims.claim_due("engine-a", now, 256, timedelta(minutes=1), RETRY)


def release(now: datetime) -> claims.Claim:
    return claims.claim_expired("engine-a", now, 256, timedelta(minutes=1))


def send(result: claims.Claim, now: datetime) -> list[str]:
    """Record the claim's slots as sent, as the engine does after ``kiq``; returns their run ids."""
    claims.record(
        [claims.Outcome(dispatch, now, now, None) for dispatch in result.dispatches], now, True, RETRY, "engine-a"
    )
    return [dispatch.run_id for dispatch in result.dispatches]


def slot(job: SchedulerJob, seconds: float) -> datetime:
    return job.created_at.replace(microsecond=0) + timedelta(seconds=seconds)


def running_first_run(app: SchedulerApp, policy: SchedulePolicy, job_id: str = "o") -> tuple[SchedulerJob, str]:
    """A job whose first slot (10 s) was sent and is running in the worker."""
    job = app.single(task="system.echo").schedule(EVERY_10_S, job_id=job_id, policy=policy)
    [run_id] = send(claim(slot(job, 10.1)), slot(job, 10.1))
    _mark_running(run_id, slot(job, 10.2))
    return job, run_id


def runs_of(job: SchedulerJob) -> list[tuple[datetime, str, str | None, str | None]]:
    return list(
        SchedulerRun.objects.filter(job=job)
        .order_by("scheduled_for")
        .values_list("scheduled_for", "status", "claimed_by", "reason")
    )


def when(moment: datetime) -> str:
    return (
        moment.strftime("%H:%M:%S UTC")
        if moment.date() == datetime.now(moment.tzinfo).date()
        else (moment.strftime("%Y-%m-%d %H:%M:%S UTC"))
    )


# -- the policy ----------------------------------------------------------------------------------------------


def test_overlap_is_checked_and_described() -> None:
    with pytest.raises(SchedulerValidationError) as refused:
        SchedulePolicy(overlap="queue")
    assert (refused.value.field, refused.value.value) == ("overlap", "queue")
    assert SKIP.describe() == "skip if still running"
    assert SchedulePolicy(overlap="buffer_one", jitter_seconds=30).describe() == (
        "wait if still running (one slot waits); jitter 30 s"
    )
    assert SchedulePolicy.from_mapping({"overlap": "skip"}) == SKIP


def test_an_overlap_policy_without_outcome_middleware_is_refused_naming_the_field() -> None:
    broker = InMemoryBroker()
    broker.register_task(lambda: None, task_name="system.echo")
    bare = SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="UTC"))
    with pytest.raises(SchedulerValidationError, match="overlap read the worker's outcomes: add RunOutcomeMiddleware"):
        bare.single(task="system.echo").schedule(EVERY_10_S, policy=SKIP)
    with pytest.raises(SchedulerValidationError, match="overlap and pause_after_failures read"):
        bare.single(task="system.echo").schedule(
            EVERY_10_S, policy=SchedulePolicy(overlap="skip", pause_after_failures=2)
        )
    assert not SchedulerJob.objects.exists()


def test_an_overlap_policy_without_run_history_is_refused(app: SchedulerApp) -> None:
    without_history = SchedulerApp(broker=app.broker, config=SchedulerConfig(default_timezone="UTC", record_runs=False))
    with pytest.raises(SchedulerValidationError, match="RECORD_RUNS=False") as refused:
        without_history.single(task="system.echo").schedule(EVERY_10_S, policy=BUFFER_ONE)
    assert refused.value.field == "policy"


# -- skip --------------------------------------------------------------------------------------------------


def test_skip_records_a_slot_due_while_the_previous_run_runs_as_skipped_with_the_reason(app: SchedulerApp) -> None:
    job, _ = running_first_run(app, SKIP)
    result = claim(slot(job, 20.1))
    assert result.dispatches == []
    [skip] = result.skips
    assert skip.reason == f"overlap: the previous run ({when(slot(job, 10))}, running) had not finished"
    assert runs_of(job)[1] == (slot(job, 20), RunStatus.SKIPPED, None, skip.reason)
    job = SchedulerJob.objects.get(pk=job.pk)
    assert (job.skipped_count, job.next_run_at) == (1, slot(job, 30))  # the grid goes on


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_skip_sends_the_slot_once_the_previous_run_has_its_final_outcome(app: SchedulerApp, outcome: str) -> None:
    job, run_id = running_first_run(app, SKIP)
    _mark_finished(run_id, outcome, slot(job, 15), None if outcome == "succeeded" else "boom")
    assert [dispatch.scheduled_for for dispatch in claim(slot(job, 20.1)).dispatches] == [slot(job, 20)]


def test_skip_counts_a_run_not_sent_yet_and_one_sent_but_not_started(app: SchedulerApp) -> None:
    job = app.single(task="system.echo").schedule(EVERY_10_S, job_id="o", policy=SKIP)
    claim(slot(job, 10.1))  # claimed, never recorded as sent: pending
    assert claim(slot(job, 20.1)).skips[0].reason.endswith(", not sent yet) had not finished")
    other = app.single(task="system.echo").schedule(EVERY_10_S, job_id="p", policy=SKIP)
    send(claim(slot(other, 10.1)), slot(other, 10.1))  # sent; the worker has not said a word
    reasons = [skip.reason for skip in claim(slot(other, 20.1)).skips if skip.job_id == "p"]
    assert reasons == [f"overlap: the previous run ({when(slot(other, 10))}, sent, not started) had not finished"]


def test_a_run_older_than_stale_run_seconds_no_longer_holds_the_next_slot(app: SchedulerApp) -> None:
    job, _ = running_first_run(app, SKIP)
    result = claims.claim_due("engine-a", slot(job, 20.1), 256, timedelta(minutes=1), RETRY, stale=timedelta(seconds=9))
    assert [dispatch.scheduled_for for dispatch in result.dispatches] == [slot(job, 20)]


def test_catch_up_all_with_skip_sends_the_first_missed_slot_and_skips_the_rest(app: SchedulerApp) -> None:
    job = app.single(task="system.echo").schedule(EVERY_10_S, policy=SchedulePolicy(overlap="skip", catch_up="all"))
    result = claim(slot(job, 40.5))
    assert [dispatch.scheduled_for for dispatch in result.dispatches] == [slot(job, 10)]
    assert [(skip.scheduled_for, skip.reason) for skip in result.skips] == [
        (slot(job, seconds), f"overlap: the previous run ({when(slot(job, 10))}, not sent yet) had not finished")
        for seconds in (20, 30, 40)
    ]


def test_a_run_now_is_sent_whatever_the_overlap(app: SchedulerApp) -> None:
    job, _ = running_first_run(app, SKIP)
    app.run_now(job.pk)
    job = SchedulerJob.objects.get(pk=job.pk)
    result = claim(job.next_run_at + timedelta(seconds=0.1))
    assert [dispatch.scheduled_for for dispatch in result.dispatches] == [job.next_run_at] and not result.skips


def run_reads(now: datetime) -> tuple[claims.Claim, int]:
    """A claim, and how many queries it made of ``scheduler_run`` alone (not within the due jobs' query)."""
    with CaptureQueriesContext(connection) as queries:
        result = claim(now)
    job_table, run_table = (f"FROM {connection.ops.quote_name(table)}" for table in ("scheduler_job", "scheduler_run"))
    return result, sum(
        query["sql"].lstrip().startswith("SELECT") and job_table not in query["sql"] and run_table in query["sql"]
        for query in queries.captured_queries
    )


def test_allow_sends_whatever_runs_and_the_runs_are_read_only_for_a_busy_overlap_job(app: SchedulerApp) -> None:
    job, _ = running_first_run(app, SchedulePolicy())
    result, reads = run_reads(slot(job, 20.1))
    assert [dispatch.scheduled_for for dispatch in result.dispatches] == [slot(job, 20)] and reads == 0
    app.single(task="system.echo").schedule(EVERY_10_S, job_id="s", policy=SKIP)
    app.single(task="system.echo").schedule(EVERY_10_S, job_id="t", policy=BUFFER_ONE)
    result, reads = run_reads(slot(job, 30.1))
    assert len(result.dispatches) == 3 and reads == 0  # nothing unfinished: the due jobs' query said so
    result, reads = run_reads(slot(job, 40.1))
    assert len(result.dispatches) == 1 and reads == 2  # the busy jobs' runs not sent yet, and those going
    assert {held.job_id for held in result.held} == {"t"} and {skip.job_id for skip in result.skips} == {"s"}


def test_a_policy_changed_by_upsert_applies_at_the_next_slot(app: SchedulerApp) -> None:
    job, _ = running_first_run(app, SchedulePolicy())
    app.single(task="system.echo").upsert(EVERY_10_S, job.pk, policy=SKIP)
    result = claim(slot(job, 20.1))
    assert result.dispatches == [] and len(result.skips) == 1
    app.single(task="system.echo").upsert(EVERY_10_S, job.pk, policy=SchedulePolicy())
    assert [dispatch.scheduled_for for dispatch in claim(slot(job, 30.1)).dispatches] == [slot(job, 30)]


# -- buffer_one ----------------------------------------------------------------------------------------------


def test_buffer_one_holds_the_next_slot_skips_later_ones_and_sends_it_once_the_run_finishes(app: SchedulerApp) -> None:
    job, run_id = running_first_run(app, BUFFER_ONE)
    result = claim(slot(job, 20.1))
    assert result.dispatches == [] and result.skips == []
    [held] = result.held
    assert held.reason == f"held until the previous run ({when(slot(job, 10))}, running) finishes"
    assert runs_of(job)[1] == (slot(job, 20), RunStatus.PENDING, claims.WAITING_CLAIMANT, held.reason)

    later = claim(slot(job, 30.1))
    assert [skip.reason for skip in later.skips] == [
        f"overlap: the slot of {when(slot(job, 20))} already waits for the previous run"
    ]
    assert release(slot(job, 31)).dispatches == []  # the first run still runs

    _mark_finished(run_id, "succeeded", slot(job, 32), None)
    freed = release(slot(job, 32.5))
    assert freed.released == 1 and [(d.run_id, d.scheduled_for, d.send_at) for d in freed.dispatches] == [
        (held.run_id, slot(job, 20), None)  # its own slot, sent now
    ]
    assert SchedulerRun.objects.get(pk=held.run_id).claimed_by == "engine-a"
    assert SchedulerJob.objects.get(pk=job.pk).skipped_count == 1


def test_a_released_slot_whose_send_fails_is_not_sent_again_the_jobs_next_slot_comes_instead(
    app: SchedulerApp,
) -> None:
    """It is not retried in its run, as a backfilled slot is: a second slot could then be held meanwhile (while the
    first was being sent), and pausing the job could miss it (``drop_held_slots``)."""
    job, run_id = running_first_run(app, BUFFER_ONE)
    claim(slot(job, 20.1))
    _mark_finished(run_id, "succeeded", slot(job, 20.2), None)
    [released] = release(slot(job, 20.5)).dispatches
    assert not released.retried_in_its_run
    failure = claims.Outcome(released, None, slot(job, 20.5), "ConnectionError: boom")
    claims.record([failure], slot(job, 20.5), True, RETRY, "engine-a")
    assert runs_of(job)[1][:2] == (slot(job, 20), RunStatus.FAILED)
    assert release(slot(job, 40)).dispatches == []
    assert [dispatch.scheduled_for for dispatch in claim(slot(job, 30.1)).dispatches] == [slot(job, 30)]


def test_a_released_slot_taken_over_from_a_dead_engine_is_counted_when_it_is_sent(app: SchedulerApp) -> None:
    """Its reason keeps what its dead engine's claim no longer says: no claim counted it."""
    job, run_id = running_first_run(app, BUFFER_ONE)
    claim(slot(job, 20.1))
    _mark_finished(run_id, "succeeded", slot(job, 20.2), None)
    claims.claim_expired("dead-engine", slot(job, 20.5), 256, timedelta(seconds=-1))
    [orphan] = release(slot(job, 21)).dispatches
    assert (orphan.counted_as_sent, orphan.late_on_purpose, orphan.retried_in_its_run) == (False, True, False)
    count = SchedulerJob.objects.get(pk=job.pk).dispatch_count
    send(claims.Claim([orphan], 1, []), slot(job, 21))
    assert SchedulerJob.objects.get(pk=job.pk).dispatch_count == count + 1


def test_the_released_slot_holds_the_next_one_in_turn(app: SchedulerApp) -> None:
    job, run_id = running_first_run(app, BUFFER_ONE)
    claim(slot(job, 20.1))
    _mark_finished(run_id, "succeeded", slot(job, 25), None)
    send(release(slot(job, 25.5)), slot(job, 25.5))  # the held slot goes; the worker has not started it
    [held] = claim(slot(job, 30.1)).held
    assert held.reason == f"held until the previous run ({when(slot(job, 20))}, sent, not started) finishes"


def held_runs(job: SchedulerJob) -> list[tuple[str, str | None]]:
    return list(
        SchedulerRun.objects.filter(job=job).exclude(status=RunStatus.DISPATCHED).values_list("status", "reason")
    )


def test_pausing_a_job_skips_its_held_slot_so_a_resume_sends_nothing_old(app: SchedulerApp) -> None:
    job, run_id = running_first_run(app, BUFFER_ONE)
    claim(slot(job, 20.1))
    app.pause(job.pk, note="maintenance")
    assert held_runs(job) == [(RunStatus.SKIPPED, "overlap: the job was paused while the slot was held")]
    assert SchedulerJob.objects.get(pk=job.pk).skipped_count == 1
    _mark_finished(run_id, "succeeded", slot(job, 21), None)
    app.resume(job.pk)
    assert release(slot(job, 23)).dispatches == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"policy": SKIP}, "overlap: the job's overlap became 'skip' while the slot was held"),
        ({"policy": SchedulePolicy()}, "overlap: the job's overlap became 'allow' while the slot was held"),
        ({"policy": BUFFER_ONE, "is_enabled": False}, "overlap: the job was paused while the slot was held"),
    ],
)
def test_an_upsert_that_stops_holding_skips_the_held_slot(
    app: SchedulerApp, change: dict[str, Any], reason: str
) -> None:
    job, _ = running_first_run(app, BUFFER_ONE)
    claim(slot(job, 20.1))
    app.single(task="system.echo").upsert(EVERY_10_S, job.pk, **change)
    assert held_runs(job) == [(RunStatus.SKIPPED, reason)]


def test_an_upsert_that_keeps_buffer_one_keeps_the_held_slot(app: SchedulerApp) -> None:
    job, _ = running_first_run(app, BUFFER_ONE)
    [held] = claim(slot(job, 20.1)).held
    app.single(task="system.echo").upsert(EVERY_10_S, job.pk, policy=SchedulePolicy(overlap="buffer_one", max_runs=9))
    assert held_runs(job) == [(RunStatus.PENDING, held.reason)]


def test_an_automatic_pause_skips_the_held_slot(app: SchedulerApp) -> None:
    job, run_id = running_first_run(app, SchedulePolicy(overlap="buffer_one", pause_after_failures=1))
    claim(slot(job, 20.1))
    _mark_finished(run_id, "failed", slot(job, 21), "ValueError: boom")
    job = SchedulerJob.objects.get(pk=job.pk)
    assert (job.state, job.skipped_count) == ("paused", 1)
    assert held_runs(job) == [(RunStatus.SKIPPED, "overlap: the job was paused while the slot was held")]


def test_a_held_slot_counts_against_max_runs_and_is_sent_once_the_job_has_finished(app: SchedulerApp) -> None:
    job, run_id = running_first_run(app, SchedulePolicy(overlap="buffer_one", max_runs=2))
    [held] = claim(slot(job, 20.1)).held
    job = SchedulerJob.objects.get(pk=job.pk)
    assert (job.remaining_runs, job.state) == (0, "finished")
    _mark_finished(run_id, "succeeded", slot(job, 21), None)
    assert [dispatch.run_id for dispatch in release(slot(job, 22)).dispatches] == [held.run_id]


@pytest.mark.django_db(transaction=True)
def test_the_engine_logs_held_and_released_slots(app: SchedulerApp, caplog: pytest.LogCaptureFixture) -> None:
    from django.db.models import F

    job = app.single(task="system.echo").schedule(EVERY_10_S, policy=BUFFER_ONE)
    back = timedelta(seconds=10)  # its first slot is due now
    SchedulerJob.objects.filter(pk=job.pk).update(
        created_at=F("created_at") - back, next_run_at=F("next_run_at") - back
    )
    SchedulerRun.objects.create(
        job=job,
        scheduled_for=slot(job, -100),
        status=RunStatus.DISPATCHED,
        dispatched_at=slot(job, -100),
        finished_at=job.created_at,
        outcome="running",
    )
    caplog.set_level("INFO", "django_taskiq_beat.engine")
    lags: list[float] = []
    app.engine.send_lag_observer = lags.append
    async_to_sync(app.engine.run_once)()
    assert "Holding job" in caplog.text and "held until the previous run" in caplog.text
    SchedulerRun.objects.filter(outcome="running").update(outcome="succeeded")
    assert async_to_sync(app.engine.run_once)() == 1
    assert "Sending held slots whose previous run has finished: 1 run." in caplog.text
    assert "Re-sending" not in caplog.text
    assert lags == []  # a held slot is late on purpose: not the engine's lag
    assert SchedulerRun.objects.filter(job=job, status=RunStatus.DISPATCHED).count() == 2


# -- in the admin ----------------------------------------------------------------------------------------------


def test_the_admin_form_sets_overlap_and_the_list_shows_the_policy_in_words(admin_client: Any) -> None:
    from tests.test_admin import ADD, errors_of, form_data

    response = admin_client.post(ADD, form_data(job_id="o", overlap="skip", jitter_seconds="30"))
    assert response.status_code == 302, errors_of(response)
    assert SchedulePolicy.of(SchedulerJob.objects.get(pk="o")) == SchedulePolicy(overlap="skip", jitter_seconds=30)
    listing = admin_client.get(reverse("admin:django_taskiq_beat_schedulerjob_changelist")).content.decode()
    assert "every 5 minutes<br><small>skip if still running; jitter 30 s</small>" in listing
    response = admin_client.post(ADD, form_data(job_id="p", overlap="queue"))
    assert "overlap" in errors_of(response) and not SchedulerJob.objects.filter(pk="p").exists()


def test_the_admin_form_puts_a_missing_outcome_middleware_next_to_overlap(
    admin_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_admin import ADD, errors_of, form_data

    monkeypatch.setattr("django_taskiq_beat.builders.reports_outcomes", lambda broker: False)
    errors = errors_of(admin_client.post(ADD, form_data(job_id="o", overlap="buffer_one")))
    assert "RunOutcomeMiddleware" in " ".join(errors["overlap"]) and not SchedulerJob.objects.exists()


def test_a_held_run_shows_as_waiting_with_its_reason_in_the_history_and_the_strip(
    admin_client: Any, app: SchedulerApp
) -> None:
    job, _ = running_first_run(app, BUFFER_ONE)
    [held] = claim(slot(job, 20.1)).held
    page = admin_client.get(reverse("admin:django_taskiq_beat_schedulerjob_change", args=[job.pk])).content.decode()
    assert '<td style="color: #78909c">waiting</td>' in page and held.reason in page
    history = admin_client.get(reverse("admin:django_taskiq_beat_schedulerrun_changelist")).content.decode()
    assert ">waiting</strong>" in history
    listing = admin_client.get(reverse("admin:django_taskiq_beat_schedulerjob_changelist")).content.decode()
    assert f'title="waiting {local_time(slot(job, 20))}: {held.reason}"' in listing


def test_a_chain_takes_an_overlap_policy_the_orchestrator_run_being_the_chains_run(app: SchedulerApp) -> None:
    from django_taskiq_beat import ChainStep

    chain = app.chain(steps=[ChainStep(task="system.echo")]).schedule(EVERY_10_S, job_id="c", policy=SKIP)
    assert SchedulePolicy.of(SchedulerJob.objects.get(pk="c")) == SKIP
    [run_id] = send(claim(slot(chain, 10.1)), slot(chain, 10.1))
    _mark_running(run_id, slot(chain, 10.2))  # the orchestrator runs until the chain's last step has finished
    assert len(claim(slot(chain, 20.1)).skips) == 1


# -- found by review --------------------------------------------------------------------------------------------


def test_an_overlap_job_is_not_claimed_ahead_its_overlap_is_judged_when_the_slot_is_due(app: SchedulerApp) -> None:
    job, run_id = running_first_run(app, SKIP)
    early = claims.claim_due(
        "engine-a", slot(job, 19.6), 256, timedelta(minutes=1), RETRY, ahead=timedelta(seconds=0.5)
    )
    assert early.row_count == 0  # the run might finish in the last half second
    _mark_finished(run_id, "succeeded", slot(job, 19.8), None)
    assert [dispatch.scheduled_for for dispatch in claim(slot(job, 20)).dispatches] == [slot(job, 20)]
    allowed = app.single(task="system.echo").schedule(EVERY_10_S, job_id="a")
    ahead = claims.claim_due(
        "engine-a", slot(allowed, 9.6), 256, timedelta(minutes=1), RETRY, ahead=timedelta(seconds=1)
    )
    assert [dispatch.job_id for dispatch in ahead.dispatches] == ["a"]  # a job that allows overlap still is


def test_many_unfinished_runs_of_one_job_do_not_hide_another_busy_job(app: SchedulerApp) -> None:
    crowded = app.single(task="system.echo").schedule(EVERY_10_S, job_id="crowded", policy=SKIP)
    claims.backfill("crowded", [slot(crowded, -10 * k) for k in range(1, 1301)], slot(crowded, 0))
    job, _ = running_first_run(app, SKIP, job_id="b")
    result = claim(slot(job, 20.1))
    assert {skip.job_id for skip in result.skips} == {"crowded", "b"} and result.dispatches == []


@pytest.mark.parametrize("reserved", ["waiting", "backfill"])
def test_a_scheduler_id_that_marks_runs_of_no_engine_is_refused(reserved: str) -> None:
    with pytest.raises(SchedulerValidationError, match="Reserved") as refused:
        SchedulerConfig(scheduler_id=reserved)
    assert refused.value.field == "scheduler_id"


def test_the_cli_shows_a_held_run_as_waiting(app: SchedulerApp) -> None:
    from io import StringIO

    from django.core.management import call_command

    job, _ = running_first_run(app, BUFFER_ONE)
    claim(slot(job, 20.1))
    out = StringIO()
    call_command("taskiq_beat", "show", job.pk, stdout=out)
    assert "waiting" in out.getvalue() and "held until the previous run" in out.getvalue()
    out = StringIO()
    call_command("taskiq_beat", "show", job.pk, "--json", stdout=out)
    assert [run["held"] for run in json.loads(out.getvalue())["recent_runs"]] == [True, False]
