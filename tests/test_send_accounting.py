"""Where a send is counted: by its claim, so that a send that goes through writes only its run.

The claim advances the job and counts the send on it in one statement; ``record`` writes the
job again only for a failed send, taking back what the claim wrote (the count, the job's last
send) and counting the failure on from where it was.
"""

import threading
from datetime import datetime, timedelta
from typing import Any
from unittest.mock import Mock

import pytest
from django.db import DataError, connection
from django.utils import timezone
from taskiq import InMemoryBroker

from django_taskiq_beat import (
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulePolicy,
    SchedulerApp,
    bulk,
    claims,
)
from django_taskiq_beat.builders import ScheduleBuilder
from django_taskiq_beat.middleware import _mark_running
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from tests.conftest import UNREADABLE_TIMES, store_raw
from tests.test_engine import break_broker, make_config, run
from tests.test_registry import engine_row

pytestmark = pytest.mark.django_db(transaction=True)

RETRY = claims.RetryPolicy(5, 300)
LEASE = timedelta(minutes=1)


@pytest.fixture
def app(broker: InMemoryBroker) -> SchedulerApp:
    return SchedulerApp(broker=broker, config=make_config())


def hourly(app: SchedulerApp, job_id: str = "hourly", policy: SchedulePolicy | None = None) -> SchedulerJob:
    """An hourly job created four hours ago: its grid has past slots to backfill."""
    trigger = PeriodicSchedule(interval=IntervalTrigger(hours=1))
    app.single(task="system.echo").upsert(trigger, job_id=job_id, policy=policy)
    SchedulerJob.objects.filter(pk=job_id).update(created_at=timezone.now() - timedelta(hours=4))
    return SchedulerJob.objects.get(pk=job_id)


def backfilled_once(app: SchedulerApp, finished: bool = False) -> SchedulerJob:
    """An hourly job with one past slot backfilled: a pending run that the next take-over sends. ``finished``: the
    job then finishes (as one no longer declared does), its backfilled run left to send."""
    job = hourly(app)
    start = timezone.now() - timedelta(hours=2, minutes=30)
    assert app.backfill(job.id, start, start + timedelta(hours=1)) == 1
    if finished:
        SchedulerJob.objects.filter(pk=job.id).update(is_enabled=False, finished_at=timezone.now(), next_run_at=None)
    return job


def waits_for_resume(app: SchedulerApp, job_id: str, at: datetime) -> claims.Dispatch:
    """The paused job's backfilled run: not taken over at ``at``, then taken over once the job is resumed."""
    assert claims.claim_expired("engine-a", at, 10, LEASE).dispatches == []
    app.resume(job_id)
    (dispatch,) = claims.claim_expired("engine-a", at, 10, LEASE).dispatches
    return dispatch


def make_due(job_id: str) -> None:
    SchedulerJob.objects.filter(pk=job_id).update(next_run_at=timezone.now() - timedelta(milliseconds=1))


def shown(job_id: str) -> tuple[Any, ...]:
    """What the job says of its sends."""
    return (
        SchedulerJob.objects.filter(pk=job_id)
        .values_list("dispatch_count", "last_dispatched_task_id", "last_run_at", "dispatch_failures", "last_error")
        .get()
    )


def written_tables(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables ``record`` updates, in order."""
    tables: list[str] = []
    real = bulk.update_from_values

    def spy(table: str, columns: Any, assignments: Any, rows: Any) -> None:
        if rows:
            tables.append(table)
        real(table, columns, assignments, rows)

    monkeypatch.setattr(bulk, "update_from_values", spy)
    return tables


def sent(dispatches: list[claims.Dispatch], at: datetime) -> list[claims.Outcome]:
    return [claims.Outcome(dispatch, at, at, None) for dispatch in dispatches]


def failed(dispatches: list[claims.Dispatch], at: datetime) -> list[claims.Outcome]:
    return [claims.Outcome(dispatch, None, at, "ConnectionError: boom") for dispatch in dispatches]


def test_the_claim_counts_each_send_on_its_job(app: SchedulerApp) -> None:
    for job_id in ("a", "b"):
        app.single(task="system.echo").upsert(OneOffSchedule(run_at=timezone.now()), job_id=job_id)
    before = timezone.now()
    claim = claims.claim_due("engine-a", before, 10, LEASE, RETRY)
    assert len(claim.dispatches) == 2
    for dispatch in claim.dispatches:
        count, task_id, last_run_at, failures, error = shown(dispatch.job_id)
        assert (count, task_id, failures, error) == (1, dispatch.run_id, 0, None)
        assert last_run_at == max(before, dispatch.shown_at)
        assert dispatch.counted_as_sent and dispatch.previous == (None, None)


def test_sends_that_went_through_write_their_runs_and_not_their_jobs(
    app: SchedulerApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    for job_id in ("a", "b", "c"):
        app.single(task="system.echo").upsert(OneOffSchedule(run_at=timezone.now()), job_id=job_id)
    claim = claims.claim_due("engine-a", timezone.now(), 10, LEASE, RETRY)
    tables = written_tables(monkeypatch)
    now = timezone.now()
    claims.record(sent(claim.dispatches, now), now, True, RETRY, "engine-a")
    assert tables == ["scheduler_run"]
    assert {run.status for run in SchedulerRun.objects.all()} == {RunStatus.DISPATCHED}
    assert [shown(job_id)[:2] for job_id in ("a", "b", "c")] == [
        (1, dispatch.run_id) for dispatch in sorted(claim.dispatches, key=lambda dispatch: dispatch.job_id)
    ]


def test_a_failed_send_takes_back_its_count_and_shows_the_previous_send_again(
    app: SchedulerApp, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    hourly(app)
    make_due("hourly")
    assert run(app.engine.run_once) == 1
    first = shown("hourly")
    assert first[0] == 1 and first[1] is not None
    break_broker(broker, monkeypatch)
    make_due("hourly")
    run(app.engine.run_once)
    count, task_id, last_run_at, failures, error = shown("hourly")
    assert (count, task_id, last_run_at) == first[:3]  # as before the failed claim
    assert failures == 1 and "boom" in error


def test_failures_in_a_row_count_on_across_the_claims_that_reset_them(
    app: SchedulerApp, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    hourly(app)
    attempts = break_broker(broker, monkeypatch, failures=3)
    for expected in (1, 2, 3):
        make_due("hourly")
        run(app.engine.run_once)
        assert shown("hourly")[3] == expected
    make_due("hourly")
    assert run(app.engine.run_once) == 1
    count, task_id, _, failures, error = shown("hourly")
    assert (count, failures, error, attempts[0]) == (1, 0, None, 4)
    assert SchedulerRun.objects.get(pk=task_id).status == RunStatus.DISPATCHED


def test_a_failed_send_no_longer_shown_leaves_the_later_send_shown(app: SchedulerApp) -> None:
    """Two claims of one job in flight: the earlier send fails after the later one was counted."""
    hourly(app)
    make_due("hourly")
    (earlier,) = claims.claim_due("engine-a", timezone.now(), 10, LEASE, RETRY).dispatches
    make_due("hourly")
    (later,) = claims.claim_due("engine-a", timezone.now(), 10, LEASE, RETRY).dispatches
    assert later.previous is not None and later.previous[1] == earlier.run_id
    now = timezone.now()
    claims.record(failed([earlier], now), now, True, RETRY, "engine-a")
    count, task_id, _, failures, _ = shown("hourly")
    assert (count, task_id, failures) == (1, later.run_id, 1)
    claims.record(sent([later], now), now, True, RETRY, "engine-a")
    assert shown("hourly")[:2] == (1, later.run_id)


def test_a_count_never_goes_below_zero(app: SchedulerApp) -> None:
    """A run claimed before counting moved into the claim (an older engine) fails after an upgrade."""
    hourly(app)
    make_due("hourly")
    (dispatch,) = claims.claim_due("engine-a", timezone.now(), 10, LEASE, RETRY).dispatches
    SchedulerJob.objects.filter(pk="hourly").update(dispatch_count=0)
    now = timezone.now()
    claims.record(failed([dispatch], now), now, True, RETRY, "engine-a")
    assert shown("hourly")[0] == 0


def test_backfilled_slots_are_counted_when_they_are_sent(app: SchedulerApp, monkeypatch: pytest.MonkeyPatch) -> None:
    job = hourly(app)
    now = timezone.now()
    assert app.backfill(job.id, now - timedelta(hours=3, minutes=30), now - timedelta(minutes=1)) == 3
    orphans = claims.claim_expired("engine-a", timezone.now(), 10, LEASE)
    assert len(orphans.dispatches) == 3 and not any(d.counted_as_sent for d in orphans.dispatches)
    assert shown(job.id)[0] == 0
    tables = written_tables(monkeypatch)
    claims.record(sent(orphans.dispatches, now), now, True, RETRY, "engine-a")
    assert tables == ["scheduler_job", "scheduler_run"]
    latest = max(orphans.dispatches, key=lambda dispatch: dispatch.scheduled_for)
    assert shown(job.id)[:2] == (3, latest.run_id)


def test_a_failed_backfilled_slot_takes_back_nothing(app: SchedulerApp) -> None:
    job = hourly(app)
    make_due(job.id)
    assert run(app.engine.run_once) == 1
    before = shown(job.id)
    now = timezone.now()
    assert app.backfill(job.id, now - timedelta(hours=2, minutes=30), now - timedelta(hours=1, minutes=30)) == 1
    (orphan,) = claims.claim_expired("engine-a", timezone.now(), 10, LEASE).dispatches
    claims.record(failed([orphan], now), now, True, RETRY, "engine-a")
    assert shown(job.id)[:3] == before[:3]


@pytest.mark.parametrize("record_runs", [True, False])
def test_a_failed_backfilled_slot_is_sent_again_in_its_own_run_after_its_backoff(
    app: SchedulerApp, record_runs: bool
) -> None:
    """The job's schedule has moved on past the slot, so the run itself waits for the retry (pending, its lease
    ending then), kept even without run history; the failure counts on the job as any other."""
    job = backfilled_once(app)
    now = timezone.now()
    (orphan,) = claims.claim_expired("engine-a", now, 10, LEASE).dispatches
    claims.record(failed([orphan], now), now, record_runs, RETRY, "engine-a")
    waiting = SchedulerRun.objects.values_list("status", "claimed_by", "lease_expires_at", "error", "finished_at")
    assert waiting.get(pk=orphan.run_id) == (
        RunStatus.PENDING,
        claims.BACKFILL_CLAIMANT,
        now + RETRY.delay(1),
        "ConnectionError: boom",
        None,
    )
    assert shown(job.id)[3:] == (1, "ConnectionError: boom")
    assert SchedulerJob.objects.get(pk=job.id).next_run_at == job.next_run_at  # the job's own slot is untouched

    assert claims.claim_expired("engine-a", now + timedelta(seconds=4), 10, LEASE).dispatches == []
    later = now + timedelta(seconds=6)
    (again,) = claims.claim_expired("engine-a", later, 10, LEASE).dispatches
    assert (again.run_id, again.failures, again.counted_as_sent) == (orphan.run_id, 1, False)
    _mark_running(again.run_id, later)  # the worker is quicker than the store: the failed send's error is gone
    claims.record(sent([again], later), later, record_runs, RETRY, "engine-a")
    stored = SchedulerRun.objects.filter(pk=orphan.run_id).values_list("status", "error", "broker_task_id")
    assert list(stored) == ([(RunStatus.DISPATCHED, None, orphan.run_id)] if record_runs else [])
    assert shown(job.id)[:2] + shown(job.id)[3:] == (1, orphan.run_id, 0, None)


@pytest.mark.parametrize("outcome", ["sent", "failed"])
def test_a_backfilled_run_taken_over_from_a_dead_engine_is_still_sent_as_a_backfill(
    app: SchedulerApp, outcome: str
) -> None:
    """Its reason keeps what ``claimed_by`` no longer says once an engine has claimed it: not counted by a claim (so
    counted when it goes), late on purpose, and retried in its run."""
    job = backfilled_once(app)
    (first,) = claims.claim_expired("dead-engine", timezone.now(), 10, timedelta(seconds=-1)).dispatches
    assert SchedulerRun.objects.values_list("reason", flat=True).get(pk=first.run_id) == "backfilled"
    now = timezone.now()
    (orphan,) = claims.claim_expired("engine-a", now, 10, LEASE).dispatches
    assert orphan.run_id == first.run_id
    assert (orphan.counted_as_sent, orphan.late_on_purpose, orphan.retried_in_its_run) == (False, True, True)
    if outcome == "sent":
        claims.record(sent([orphan], now), now, True, RETRY, "engine-a")
        assert shown(job.id)[:2] == (1, orphan.run_id)
    else:
        claims.record(failed([orphan], now), now, True, RETRY, "engine-a")
        stored = SchedulerRun.objects.values_list("status", "claimed_by").get(pk=orphan.run_id)
        assert stored == (RunStatus.PENDING, claims.BACKFILL_CLAIMANT) and shown(job.id)[0] == 0


@pytest.mark.parametrize("lease", ["expired", "running"])
def test_a_paused_jobs_backfilled_run_claimed_by_a_dead_engine_waits_for_its_resume(
    app: SchedulerApp, lease: str
) -> None:
    """Its claim names the dead engine, not the backfill: its reason tells the take-over, which finds the engine
    dead by its lease or by its heartbeat."""
    job = backfilled_once(app)
    lease_left = timedelta(seconds=-1) if lease == "expired" else timedelta(minutes=10)
    (first,) = claims.claim_expired("dead-engine", timezone.now(), 10, lease_left).dispatches
    engine_row("dead-engine", heartbeat_at=timezone.now() - timedelta(minutes=5))
    app.pause(job.id)
    now = timezone.now()
    assert claims.claim_expired("engine-a", now, 10, LEASE, engines_dead_after=timedelta(minutes=1)).dispatches == []
    app.resume(job.id)
    (orphan,) = claims.claim_expired("engine-a", now, 10, LEASE, engines_dead_after=timedelta(minutes=1)).dispatches
    assert (orphan.run_id, orphan.counted_as_sent, orphan.retried_in_its_run) == (first.run_id, False, True)


def test_a_backfilled_run_taken_over_then_paused_waits_after_a_failed_send(app: SchedulerApp) -> None:
    """Paused while its send is in flight: the failure puts it back among the backfills that a pause holds, rather
    than lose the slot (its job is paused, not finished)."""
    job = backfilled_once(app)
    claims.claim_expired("dead-engine", timezone.now(), 10, timedelta(seconds=-1))
    now = timezone.now()
    (orphan,) = claims.claim_expired("engine-a", now, 10, LEASE).dispatches
    app.pause(job.id)
    assert orphan.retried_in_its_run
    claims.record(failed([orphan], now), now, True, RETRY, "engine-a")
    assert waits_for_resume(app, job.id, now + timedelta(minutes=10)).run_id == orphan.run_id


def test_a_paused_jobs_backfilled_slots_wait_for_its_resume(app: SchedulerApp) -> None:
    """Their retries too: pausing a job whose backfilled send keeps failing stops it."""
    job = backfilled_once(app)
    app.pause(job.id)
    orphan = waits_for_resume(app, job.id, timezone.now())
    now = timezone.now()
    claims.record(failed([orphan], now), now, True, RETRY, "engine-a")
    app.pause(job.id)
    assert waits_for_resume(app, job.id, now + timedelta(minutes=10)).run_id == orphan.run_id


def test_a_finished_jobs_backfilled_slot_is_sent_once(app: SchedulerApp) -> None:
    """A job no longer declared is finished, often with its task gone: a pause would not stop retries of it."""
    backfilled_once(app, finished=True)
    now = timezone.now()
    (orphan,) = claims.claim_expired("engine-a", now, 10, LEASE).dispatches
    assert not orphan.retried_in_its_run
    claims.record(failed([orphan], now), now, True, RETRY, "engine-a")
    assert SchedulerRun.objects.values_list("status", flat=True).get(pk=orphan.run_id) == RunStatus.FAILED


@pytest.mark.parametrize(("table", "column", "retried"), [("job", "task_args", True), ("run", "created_at", False)])
def test_a_backfilled_slot_that_cannot_be_sent_is_retried_unless_its_own_run_is_unusable(
    app: SchedulerApp, table: str, column: str, retried: bool
) -> None:
    """A job's columns can be mended through the API or the admin; a run's cannot, so its retries would never end."""
    job = backfilled_once(app)
    run_id = SchedulerRun.objects.values_list("pk", flat=True).get(job_id=job.id)
    if table == "job":  # SQLite: a number in a JSON text column cannot be decoded; elsewhere not a list
        store_raw("scheduler_job", job.id, column, 12345 if connection.vendor == "sqlite" else '"abc"')
    else:
        store_raw("scheduler_run", run_id, column, UNREADABLE_TIMES[connection.vendor][0])
    now = timezone.now()
    taken = claims.claim_expired("engine-a", now, 10, LEASE)
    assert taken.dispatches == [] and [outcome.dispatch.run_id for outcome in taken.failures] == [run_id]
    claims.record(taken.failures, now, True, RETRY, "engine-a")
    status = SchedulerRun.objects.values_list("status", flat=True).get(pk=run_id)
    assert status == (RunStatus.PENDING if retried else RunStatus.FAILED)


def test_a_streak_of_failed_sends_stays_on_the_job_until_a_send_goes_through(
    app: SchedulerApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim leaves the streak (count, error, and so the backoff) alone: a send in flight may fail too, and
    an engine that re-sends it after a crash reads the streak from the job."""
    hourly(app)
    SchedulerJob.objects.filter(pk="hourly").update(dispatch_failures=2, last_error="ConnectionError: boom")
    make_due("hourly")
    (claimed,) = claims.claim_due("dead-engine", timezone.now(), 10, timedelta(seconds=-1), RETRY).dispatches
    count, task_id, _, failures, error = shown("hourly")
    assert (count, task_id, failures, error) == (1, claimed.run_id, 2, "ConnectionError: boom")
    (resent,) = claims.claim_expired("engine-a", timezone.now(), 10, LEASE).dispatches
    assert (resent.run_id, resent.failures, resent.counted_as_sent) == (claimed.run_id, 2, True)
    tables = written_tables(monkeypatch)
    now = timezone.now()
    claims.record(sent([resent], now), now, True, RETRY, "engine-a")
    assert tables == ["scheduler_job", "scheduler_run"]  # the streak ends: the job is written
    assert shown("hourly")[:2] + shown("hourly")[3:] == (1, claimed.run_id, 0, None)


def test_a_failed_retry_backs_off_from_the_whole_streak(app: SchedulerApp) -> None:
    hourly(app)
    SchedulerJob.objects.filter(pk="hourly").update(dispatch_failures=5)
    make_due("hourly")
    (dispatch,) = claims.claim_due("engine-a", timezone.now(), 10, LEASE, RETRY).dispatches
    now = timezone.now()
    claims.record(failed([dispatch], now), now, True, RETRY, "engine-a")
    job = SchedulerJob.objects.get(pk="hourly")
    assert job.dispatch_failures == 6
    assert job.next_run_at == now + RETRY.delay(6)  # 5 s doubled five times, capped at 300 s


def test_a_catch_up_whose_latest_slot_fails_shows_the_last_one_that_went_through(app: SchedulerApp) -> None:
    hourly(app, policy=SchedulePolicy(catch_up="all"))
    SchedulerJob.objects.filter(pk="hourly").update(next_run_at=timezone.now() - timedelta(hours=3, minutes=1))
    dispatches = sorted(
        claims.claim_due("engine-a", timezone.now(), 10, LEASE, RETRY).dispatches, key=lambda d: d.scheduled_for
    )
    assert len(dispatches) >= 4  # the missed slots, each its own send
    *went_through, third, latest = dispatches
    assert shown("hourly")[:2] == (len(dispatches), latest.run_id)
    now = timezone.now()
    claims.record([*sent(went_through, now), *failed([third, latest], now)], now, True, RETRY, "engine-a")
    count, task_id, _, failures, _ = shown("hourly")
    assert (count, task_id, failures) == (len(went_through), went_through[-1].run_id, 2)


@pytest.mark.parametrize("stored", ["together", "earlier-first", "later-first"])
def test_two_failed_claims_of_one_job_show_the_send_before_both(app: SchedulerApp, stored: str) -> None:
    """Two claims in flight at once (a run now, a slot claimed ahead), from one engine or two, stored in one batch or
    apart in either order. Stored apart, the earlier one first, the job shows the send before both as the run
    history has it (sent at its ``dispatched_at``): the later claim knew only the earlier's, which has failed."""
    hourly(app)
    make_due("hourly")
    assert run(app.engine.run_once) == 1
    before = shown("hourly")
    make_due("hourly")
    (earlier,) = claims.claim_due("engine-a", timezone.now(), 10, LEASE, RETRY).dispatches
    make_due("hourly")
    other = "engine-a" if stored == "together" else "engine-b"
    (later,) = claims.claim_due(other, timezone.now(), 10, LEASE, RETRY).dispatches
    assert later.previous == (earlier.shown_at, earlier.run_id)
    now = timezone.now()
    if stored == "together":
        claims.record(failed([earlier, later], now), now, True, RETRY, "engine-a")
    else:
        order = [(earlier, "engine-a"), (later, other)]
        for dispatch, engine in order if stored == "earlier-first" else reversed(order):
            claims.record(failed([dispatch], now), now, True, RETRY, engine)
    assert shown("hourly")[:2] == before[:2]
    sent_at = SchedulerRun.objects.get(pk=before[1]).dispatched_at
    assert shown("hourly")[2] == (sent_at if stored == "earlier-first" else before[2])


def test_a_send_going_through_in_the_store_of_a_failure_is_shown_in_place_of_an_earlier_failed_one(
    app: SchedulerApp,
) -> None:
    """Three claims in flight: S0 and B by one engine, A by another between them. A fails and is stored first; then
    S0 goes and B fails in one store. B's claim knew only A (failed), and S0 is not yet stored as sent: the job
    shows S0, which went in that very store."""
    hourly(app)
    claimed = []
    for engine in ("engine-a", "engine-b", "engine-a"):
        make_due("hourly")
        claimed += claims.claim_due(engine, timezone.now(), 10, LEASE, RETRY).dispatches
    first, a, b = claimed
    now = timezone.now()
    claims.record(failed([a], now), now, True, RETRY, "engine-b")
    claims.record([*sent([first], now), *failed([b], now)], now, True, RETRY, "engine-a")
    assert shown("hourly")[:3] == (1, first.run_id, now)


def test_a_jittered_send_shows_its_own_time(app: SchedulerApp) -> None:
    hourly(app, policy=SchedulePolicy(jitter_seconds=3000))
    make_due("hourly")
    claimed_at = timezone.now()
    (dispatch,) = claims.claim_due("engine-a", claimed_at, 10, LEASE, RETRY).dispatches
    assert dispatch.send_at is not None and dispatch.send_at > claimed_at
    assert shown("hourly")[2] == dispatch.send_at


def test_an_immediate_send_is_counted_once_when_an_engine_sends_it_for_a_process_that_died(
    app: SchedulerApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ScheduleBuilder, "_dispatch_now", lambda *args, **kwargs: None)  # the web process dies here
    job = app.single(task="system.echo").schedule()
    (run_id,) = SchedulerRun.objects.filter(job=job).values_list("id", flat=True)
    assert shown(job.id)[:2] == (1, run_id)
    lease_expired = timezone.now() + timedelta(seconds=app.config.claim_ttl_seconds + 1)
    (resent,) = claims.claim_expired("engine-a", lease_expired, 10, LEASE).dispatches
    claims.record(sent([resent], lease_expired), lease_expired, True, RETRY, "engine-a")
    assert shown(job.id)[:2] == (1, run_id)
    assert SchedulerRun.objects.get(pk=run_id).status == RunStatus.DISPATCHED


@pytest.mark.parametrize("resent_first", [False, True], ids=["before-the-resend", "after-the-resend"])
def test_a_failed_send_of_a_run_taken_over_since_is_left_to_the_engine_that_took_it(
    app: SchedulerApp, resent_first: bool
) -> None:
    """An engine stalled past its lease (a database away longer than that) stores its failed send late: the engine
    that took the run over sends it, and the late failure must neither mark the run failed nor retry the job."""
    app.single(task="system.echo").upsert(OneOffSchedule(run_at=timezone.now()), job_id="once")
    (stalled,) = claims.claim_due("engine-a", timezone.now(), 10, timedelta(seconds=-1), RETRY).dispatches
    claimed = SchedulerJob.objects.filter(pk="once").values_list("next_run_at", "is_enabled").get()
    (resent,) = claims.claim_expired("engine-b", timezone.now(), 10, LEASE).dispatches
    assert resent.run_id == stalled.run_id
    now = timezone.now()
    if resent_first:
        claims.record(sent([resent], now), now, True, RETRY, "engine-b")
    claims.record(failed([stalled], now), now, True, RETRY, "engine-a")
    if not resent_first:
        run = SchedulerRun.objects.get(pk=resent.run_id)
        assert (run.status, run.claimed_by, run.error) == (RunStatus.PENDING, "engine-b", None)
        claims.record(sent([resent], now), now, True, RETRY, "engine-b")
    run = SchedulerRun.objects.get(pk=resent.run_id)
    assert (run.status, run.claimed_by, run.error) == (RunStatus.DISPATCHED, None, None)
    assert shown("once")[:2] + shown("once")[3:] == (1, resent.run_id, 0, None)
    assert SchedulerJob.objects.filter(pk="once").values_list("next_run_at", "is_enabled").get() == claimed


def taken_over_from_a_stalled_engine(
    app: SchedulerApp, finished: bool = False
) -> tuple[SchedulerJob, claims.Dispatch, claims.Dispatch]:
    """A backfilled slot claimed by engine-a, which stalls past its lease, and taken over by engine-b."""
    job = backfilled_once(app, finished)
    (stalled,) = claims.claim_expired("engine-a", timezone.now(), 10, timedelta(seconds=-1)).dispatches
    (resent,) = claims.claim_expired("engine-b", timezone.now(), 10, LEASE).dispatches
    assert resent.run_id == stalled.run_id and not resent.counted_as_sent
    return job, stalled, resent


@pytest.mark.parametrize("stalled_first", [False, True], ids=["taken-over-first", "stalled-first"])
def test_a_backfilled_slot_sent_by_a_stalled_engine_and_by_the_one_that_took_it_over_is_counted_once(
    app: SchedulerApp, stalled_first: bool
) -> None:
    """No claim counted it: whichever engine stores its send first counts it, as a claim counts a claimed slot once."""
    job, stalled, resent = taken_over_from_a_stalled_engine(app)
    now = timezone.now()
    stores = [(stalled, "engine-a"), (resent, "engine-b")]
    for dispatch, engine in stores if stalled_first else reversed(stores):
        claims.record(sent([dispatch], now), now, True, RETRY, engine)
    assert shown(job.id)[0] == 1
    assert SchedulerRun.objects.get(pk=resent.run_id).status == RunStatus.DISPATCHED


@pytest.mark.parametrize("record_runs", [True, False], ids=["history", "no-history"])
def test_a_send_that_went_through_after_the_take_overs_failed_send_was_stored_is_counted(
    app: SchedulerApp, record_runs: bool
) -> None:
    """The failure, stored first, settled the run (a finished job's backfill is not retried in its run): the send
    that went through is the slot's only one, and counts, also without run history, where that run is gone."""
    job, stalled, resent = taken_over_from_a_stalled_engine(app, finished=True)
    now = timezone.now()
    claims.record(failed([resent], now), now, record_runs, RETRY, "engine-b")
    claims.record(sent([stalled], now), now, record_runs, RETRY, "engine-a")
    assert shown(job.id)[:2] == (1, stalled.run_id)


def test_only_the_failures_of_runs_taken_over_are_left_out_of_a_batch(app: SchedulerApp) -> None:
    """A failure of a run still claimed is stored, and so is every send that went through, even of a run taken over
    since: it happened."""
    for job_id in ("kept", "taken", "went", "went-taken"):
        app.single(task="system.echo").upsert(OneOffSchedule(run_at=timezone.now()), job_id=job_id)
    dispatches = {d.job_id: d for d in claims.claim_due("engine-a", timezone.now(), 10, LEASE, RETRY).dispatches}
    for job_id in ("taken", "went-taken"):
        SchedulerRun.objects.filter(pk=dispatches[job_id].run_id).update(claimed_by="engine-b")
    now = timezone.now()
    outcomes = [
        *failed([dispatches["kept"], dispatches["taken"]], now),
        *sent([dispatches["went"], dispatches["went-taken"]], now),
    ]
    left = claims.record(outcomes, now, True, RETRY, "engine-a")
    assert [outcome.dispatch.run_id for outcome in left] == [dispatches["taken"].run_id]
    statuses = dict(SchedulerRun.objects.values_list("job_id", "status"))
    assert statuses == {
        "kept": RunStatus.FAILED,
        "taken": RunStatus.PENDING,
        "went": RunStatus.DISPATCHED,
        "went-taken": RunStatus.DISPATCHED,
    }
    assert shown("kept")[3] == 1 and shown("taken")[3] == 0


@pytest.mark.parametrize("record_runs", [True, False], ids=["history", "no-history"])
@pytest.mark.parametrize("job_refused", [False, True], ids=["stored", "job-refused"])
def test_stored_one_by_one_a_failure_of_a_run_taken_over_is_left_out_too(
    app: SchedulerApp, monkeypatch: pytest.MonkeyPatch, record_runs: bool, job_refused: bool
) -> None:
    """Also where the database refuses its job's values, and the run alone is settled."""
    app.single(task="system.echo").upsert(OneOffSchedule(run_at=timezone.now()), job_id="once")
    (dispatch,) = claims.claim_due("engine-a", timezone.now(), 10, LEASE, RETRY).dispatches
    SchedulerRun.objects.filter(pk=dispatch.run_id).update(claimed_by="engine-b")
    if job_refused:
        monkeypatch.setattr(claims, "record", Mock(side_effect=DataError("integer out of range")))
    now = timezone.now()
    assert claims.record_each(failed([dispatch], now), now, record_runs, RETRY, "engine-a") == []
    run = SchedulerRun.objects.get(pk=dispatch.run_id)  # still there, and the other engine's to send and settle
    assert (run.status, run.claimed_by) == (RunStatus.PENDING, "engine-b")
    assert shown("once")[:2] + shown("once")[3:] == (1, dispatch.run_id, 0, None)


def test_no_take_over_comes_between_the_check_of_a_failed_send_and_its_store(
    app: SchedulerApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed sends' runs are locked when they are found still claimed: another engine's take-over, running in
    between (its lease has expired: a stalled engine), skips them, instead of claiming a run about to be failed."""
    if connection.vendor == "sqlite":
        pytest.skip("PostgreSQL and MariaDB: SQLite has one writer, and a take-over waits for the store to commit")
    app.single(task="system.echo").upsert(OneOffSchedule(run_at=timezone.now()), job_id="once")
    (stalled,) = claims.claim_due("engine-a", timezone.now(), 10, timedelta(seconds=-1), RETRY).dispatches
    taken: list[claims.Claim] = []

    def take_over() -> None:
        try:
            taken.append(claims.claim_expired("engine-b", timezone.now(), 10, LEASE))
        finally:
            connection.close()  # this thread's own

    real = claims._taken_over

    def then_another_engine_looks(*args: Any) -> dict[str, claims.Outcome]:
        left = real(*args)
        other = threading.Thread(target=take_over)
        other.start()
        other.join(timeout=10)
        return left

    monkeypatch.setattr(claims, "_taken_over", then_another_engine_looks)
    now = timezone.now()
    assert claims.record(failed([stalled], now), now, True, RETRY, "engine-a") == []
    assert len(taken) == 1 and taken[0].dispatches == []
    run = SchedulerRun.objects.get(pk=stalled.run_id)
    assert (run.status, run.claimed_by) == (RunStatus.FAILED, None)
