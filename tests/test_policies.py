"""``SchedulePolicy``: misfire grace, catch-up and jitter, checked, stored and applied by the claim.

The claim tests pass the claim a "now" well after the job's slot, as an engine finds it
after an outage, and read what it wrote: runs (pending or skipped, with a reason), the job's
next slot and counters, and what it hands the engine to send.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import override_settings

from django_taskiq_beat import (
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulePolicy,
    SchedulerApp,
    SchedulerValidationError,
    claims,
)
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from django_taskiq_beat.policies import MAX_CATCH_UP_SLOTS, jitter_delay
from django_taskiq_beat.sync import sync_declared

pytestmark = pytest.mark.django_db

EVERY_10_S = PeriodicSchedule(interval=IntervalTrigger(seconds=10))
RETRY = claims.RetryPolicy(5, 300)


# -- the policy object --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"misfire_grace_seconds": -1}, "misfire_grace_seconds"),
        ({"misfire_grace_seconds": float("nan")}, "misfire_grace_seconds"),
        ({"misfire_grace_seconds": "60"}, "misfire_grace_seconds"),
        ({"catch_up": "sometimes"}, "catch_up"),
        ({"catch_up": None}, "catch_up"),
        ({"jitter_seconds": -0.5}, "jitter_seconds"),
        ({"jitter_seconds": 10**9}, "jitter_seconds"),
        ({"jitter_seconds": True}, "jitter_seconds"),
        ({"pause_after_failures": 0}, "pause_after_failures"),
        ({"pause_after_failures": 2.5}, "pause_after_failures"),
        ({"pause_after_failures": 2**31}, "pause_after_failures"),
    ],
)
def test_bad_policy_values_are_refused_naming_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(SchedulerValidationError) as refused:
        SchedulePolicy(**values)
    assert refused.value.field == field


def test_a_policy_from_a_mapping_refuses_unknown_fields_and_describes_itself() -> None:
    with pytest.raises(SchedulerValidationError, match="Unknown policy field") as refused:
        SchedulePolicy.from_mapping({"overlap_policy": "skip"})
    assert refused.value.field == "policy['overlap_policy']"
    policy = SchedulePolicy.from_mapping(
        {"misfire_grace_seconds": 300, "catch_up": "all", "jitter_seconds": 30, "pause_after_failures": 3}
    )
    assert policy.describe() == (
        "missed after 300 s; every missed slot is sent; jitter 30 s; paused after 3 failed runs in a row"
    )
    assert SchedulePolicy().describe() == ""


def test_schedule_and_upsert_store_the_policy_and_a_policy_change_keeps_the_slot(app: SchedulerApp) -> None:
    policy = SchedulePolicy(misfire_grace_seconds=60, catch_up="all", jitter_seconds=2.5)
    job = app.single(task="system.echo").schedule(EVERY_10_S, job_id="p", policy=policy)
    assert SchedulePolicy.of(SchedulerJob.objects.get(pk="p")) == policy
    slot = job.next_run_at
    job = app.single(task="system.echo").upsert(EVERY_10_S, "p", policy=SchedulePolicy(jitter_seconds=1))
    assert (SchedulePolicy.of(job), job.next_run_at) == (SchedulePolicy(jitter_seconds=1), slot)
    job = app.single(task="system.echo").upsert(EVERY_10_S, "p", policy=SchedulePolicy(jitter_seconds=1))
    assert SchedulerJob.objects.get(pk="p").updated_at == job.updated_at  # unchanged: nothing written
    with pytest.raises(SchedulerValidationError, match="Expected a SchedulePolicy"):
        app.single(task="system.echo").schedule(EVERY_10_S, policy={"catch_up": "all"})  # type: ignore[arg-type]


# -- applied by the claim ------------------------------------------------------------------------------------


def down_for_45_s(
    app: SchedulerApp, policy: SchedulePolicy | None = None, trigger: Any = EVERY_10_S
) -> tuple[SchedulerJob, datetime]:
    """A job whose engine was away: the claim runs 45.5 s after the job's anchor, 4 slots later."""
    job = app.single(task="system.echo").schedule(trigger, policy=policy)
    anchor = job.created_at.replace(microsecond=0)
    return job, anchor + timedelta(seconds=45.5)


def claim(now: datetime) -> claims.Claim:
    return claims.claim_due("engine-a", now, 256, timedelta(minutes=1), RETRY)


def runs_of(job: SchedulerJob) -> list[tuple[datetime, str, str | None]]:
    return list(
        SchedulerRun.objects.filter(job=job).order_by("scheduled_for").values_list("scheduled_for", "status", "reason")
    )


def test_by_default_one_run_goes_for_the_latest_missed_slot_and_the_grid_goes_on(app: SchedulerApp) -> None:
    job, now = down_for_45_s(app)
    anchor = job.created_at.replace(microsecond=0)
    (dispatch,) = claim(now).dispatches
    assert dispatch.scheduled_for == anchor + timedelta(seconds=40)
    assert runs_of(job) == [(anchor + timedelta(seconds=40), RunStatus.PENDING, None)]
    assert SchedulerJob.objects.get(pk=job.pk).next_run_at == anchor + timedelta(seconds=50)


def test_catch_up_all_sends_each_missed_slot_oldest_first_each_its_own_run(app: SchedulerApp) -> None:
    job, now = down_for_45_s(app, SchedulePolicy(catch_up="all"))
    anchor = job.created_at.replace(microsecond=0)
    slots = [anchor + timedelta(seconds=seconds) for seconds in (10, 20, 30, 40)]
    result = claim(now)
    assert [dispatch.scheduled_for for dispatch in result.dispatches] == slots
    assert len({dispatch.run_id for dispatch in result.dispatches}) == 4
    assert runs_of(job) == [(slot, RunStatus.PENDING, None) for slot in slots]
    assert SchedulerJob.objects.get(pk=job.pk).next_run_at == anchor + timedelta(seconds=50)


def test_catch_up_all_takes_at_most_the_latest_hundred_slots(app: SchedulerApp) -> None:
    job = app.single(task="system.echo").schedule(
        PeriodicSchedule(interval=IntervalTrigger(seconds=1)), policy=SchedulePolicy(catch_up="all")
    )
    anchor = job.created_at.replace(microsecond=0)
    result = claim(anchor + timedelta(seconds=150.5))
    slots = [dispatch.scheduled_for for dispatch in result.dispatches]
    assert len(slots) == MAX_CATCH_UP_SLOTS and slots[-1] == anchor + timedelta(seconds=150)
    assert slots[0] == anchor + timedelta(seconds=150 - MAX_CATCH_UP_SLOTS + 1)


def test_slots_missed_by_more_than_the_grace_are_skipped_runs_with_a_reason(app: SchedulerApp) -> None:
    job, now = down_for_45_s(app, SchedulePolicy(catch_up="all", misfire_grace_seconds=12))
    anchor = job.created_at.replace(microsecond=0)
    result = claim(now)
    assert [dispatch.scheduled_for for dispatch in result.dispatches] == [anchor + timedelta(seconds=40)]
    assert [skip.reason for skip in result.skips] == [
        "missed by 36 s (misfire grace 12 s)",
        "missed by 26 s (misfire grace 12 s)",
        "missed by 16 s (misfire grace 12 s)",
    ]
    assert [status for _, status, _ in runs_of(job)] == [RunStatus.SKIPPED] * 3 + [RunStatus.PENDING]
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.skipped_count, stored.next_run_at) == (3, anchor + timedelta(seconds=50))
    assert (
        SchedulerRun.objects.get(
            job=job, status=RunStatus.SKIPPED, scheduled_for=anchor + timedelta(seconds=10)
        ).finished_at
        is not None
    )


def test_with_latest_a_slot_later_than_the_grace_is_skipped_and_nothing_is_sent(app: SchedulerApp) -> None:
    job, now = down_for_45_s(app, SchedulePolicy(misfire_grace_seconds=3))
    anchor = job.created_at.replace(microsecond=0)
    result = claim(now)
    assert result.dispatches == [] and [skip.scheduled_for for skip in result.skips] == [anchor + timedelta(seconds=40)]
    assert runs_of(job) == [(anchor + timedelta(seconds=40), RunStatus.SKIPPED, "missed by 5.5 s (misfire grace 3 s)")]
    assert SchedulerJob.objects.get(pk=job.pk).state == "active"


def test_a_one_off_found_later_than_its_grace_is_skipped_and_finished(app: SchedulerApp) -> None:
    moment = datetime.now(UTC) + timedelta(hours=1)
    job = app.single(task="system.echo").schedule(
        OneOffSchedule(run_at=moment), policy=SchedulePolicy(misfire_grace_seconds=60)
    )
    result = claim(moment + timedelta(minutes=5))
    assert result.dispatches == [] and len(result.skips) == 1
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.state, stored.skipped_count) == ("finished", 1)


def test_a_slot_within_the_grace_is_sent(app: SchedulerApp) -> None:
    _, now = down_for_45_s(app, SchedulePolicy(misfire_grace_seconds=6))
    (dispatch,) = claim(now).dispatches
    assert now - dispatch.scheduled_for == timedelta(seconds=5.5)


def test_jitter_delays_each_send_in_range_the_same_for_every_engine_and_keeps_the_slot(app: SchedulerApp) -> None:
    job, now = down_for_45_s(app, SchedulePolicy(catch_up="all", jitter_seconds=8))
    dispatches = claim(now).dispatches
    delays = [dispatch.send_at - dispatch.scheduled_for for dispatch in dispatches]
    assert all(timedelta(0) <= delay < timedelta(seconds=8) for delay in delays)
    assert len(set(delays)) == len(delays)  # spread, not one offset for all
    assert delays == [jitter_delay(job.pk, dispatch.scheduled_for, 8) for dispatch in dispatches]
    anchor = job.created_at.replace(microsecond=0)
    assert [dispatch.scheduled_for for dispatch in dispatches] == [
        anchor + timedelta(seconds=s) for s in (10, 20, 30, 40)
    ]
    assert claim(now + timedelta(minutes=1)).dispatches[0].send_at is not None
    without = app.single(task="system.echo").schedule(EVERY_10_S)
    assert jitter_delay(without.pk, anchor, 0) == timedelta(0)


def test_jitter_delays_spread_evenly_over_jobs() -> None:
    slot = datetime(2030, 1, 1, tzinfo=UTC)
    delays = [jitter_delay(f"job-{index}", slot, 10).total_seconds() for index in range(2000)]
    buckets = [sum(1 for delay in delays if low <= delay < low + 1) for low in range(10)]
    assert min(buckets) > 150 and max(buckets) < 250  # about 200 each


# -- declared in settings -------------------------------------------------------------------------------------


def test_a_settings_entry_declares_its_policy_and_a_bad_one_is_an_error_naming_it(app: SchedulerApp) -> None:
    entry = {"task": "system.echo", "interval": 10, "policy": {"catch_up": "all", "misfire_grace_seconds": 30}}
    with override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": {"p": entry}}):
        sync_declared(app)
        assert sync_declared(app).count("unchanged") == 1
    assert SchedulePolicy.of(SchedulerJob.objects.get(pk="settings:p")) == SchedulePolicy(
        catch_up="all", misfire_grace_seconds=30
    )
    bad = {**entry, "policy": {"catch_up": "sometimes"}}
    with override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": {"p": bad}}):
        [error] = sync_declared(app).errors
    assert str(error).startswith("TASKIQ_BEAT['SCHEDULE']['p']: policy: catch_up='sometimes'")


# -- in the admin ----------------------------------------------------------------------------------------------


def test_the_admin_form_sets_the_policy_shows_it_in_words_and_names_a_bad_value(admin_client: Any) -> None:
    from django.contrib.admin.utils import quote
    from django.urls import reverse

    from tests.test_admin import ADD, errors_of, form_data

    response = admin_client.post(
        ADD,
        form_data(
            job_id="p", misfire_grace_seconds="90", catch_up="all", jitter_seconds="2.5", pause_after_failures="4"
        ),
    )
    assert response.status_code == 302, errors_of(response)
    assert SchedulePolicy.of(SchedulerJob.objects.get(pk="p")) == SchedulePolicy(
        misfire_grace_seconds=90, catch_up="all", jitter_seconds=2.5, pause_after_failures=4
    )
    page = admin_client.get(reverse("admin:django_taskiq_beat_schedulerjob_change", args=[quote("p")])).content.decode()
    assert (
        'name="misfire_grace_seconds" value="90.0"' in page and "missed after 90 s; every missed slot is sent" in page
    )
    response = admin_client.post(ADD, form_data(job_id="q", misfire_grace_seconds="-5"))
    assert "misfire_grace_seconds" in errors_of(response) and not SchedulerJob.objects.filter(pk="q").exists()


def test_skipped_runs_show_their_reason_in_the_run_history(admin_client: Any, app: SchedulerApp) -> None:
    from django.urls import reverse

    _, now = down_for_45_s(app, SchedulePolicy(misfire_grace_seconds=3))
    claim(now)
    page = admin_client.get(reverse("admin:django_taskiq_beat_schedulerrun_changelist"), {"status__exact": "skipped"})
    text = page.content.decode()
    assert "missed by 5.5 s (misfire grace 3 s)" in text and "skipped" in text


@pytest.mark.django_db(transaction=True)
def test_the_engine_counts_skipped_slots_and_exports_them_as_a_metric(app: SchedulerApp) -> None:
    from asgiref.sync import async_to_sync
    from django.db.models import F

    pytest.importorskip("prometheus_client")
    from django_taskiq_beat.metrics import build_registry

    job = app.single(task="system.echo").schedule(EVERY_10_S, policy=SchedulePolicy(misfire_grace_seconds=1))
    back = timedelta(seconds=25)  # as if no engine had run for its last two slots
    SchedulerJob.objects.filter(pk=job.pk).update(
        created_at=F("created_at") - back, next_run_at=F("next_run_at") - back
    )
    async_to_sync(app.engine.run_once)()
    assert app.get_health_snapshot().skipped_slot_count == 1
    assert build_registry(app).get_sample_value("taskiq_beat_skipped_slots_total") == 1


# -- max_runs ------------------------------------------------------------------------------------------------


def test_max_runs_finishes_the_job_after_that_many_scheduled_sends_and_run_now_does_not_count(
    app: SchedulerApp,
) -> None:
    job = app.single(task="system.echo").schedule(EVERY_10_S, policy=SchedulePolicy(max_runs=2))
    assert job.remaining_runs == 2
    anchor = job.created_at.replace(microsecond=0)
    assert len(claim(anchor + timedelta(seconds=10.5)).dispatches) == 1
    assert SchedulerJob.objects.get(pk=job.pk).remaining_runs == 1
    app.run_now(job.pk)
    assert len(claim(anchor + timedelta(seconds=11)).dispatches) == 1  # the run now
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.remaining_runs, stored.state) == (1, "active")
    assert "1 of 2 runs left" in SchedulePolicy.of(stored).describe(stored.remaining_runs)
    assert len(claim(anchor + timedelta(seconds=20.5)).dispatches) == 1
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.remaining_runs, stored.state, stored.next_run_at) == (0, "finished", None)
    app.resume(job.pk)
    assert SchedulerJob.objects.get(pk=job.pk).state == "finished"  # resume leaves it finished
    app.run_now(job.pk)  # once more, by hand: sent, and finished again
    assert len(claim(anchor + timedelta(seconds=21)).dispatches) == 1
    assert SchedulerJob.objects.get(pk=job.pk).state == "finished"


def test_catch_up_all_sends_no_more_than_the_runs_left(app: SchedulerApp) -> None:
    job, now = down_for_45_s(app, SchedulePolicy(catch_up="all", max_runs=3))
    anchor = job.created_at.replace(microsecond=0)
    assert [d.scheduled_for for d in claim(now).dispatches] == [anchor + timedelta(seconds=s) for s in (10, 20, 30)]
    assert SchedulerJob.objects.get(pk=job.pk).state == "finished"


def test_a_slot_another_writer_had_takes_no_run_and_does_not_finish_the_job(app: SchedulerApp) -> None:
    job = app.single(task="system.echo").schedule(EVERY_10_S, job_id="last", policy=SchedulePolicy(max_runs=1))
    slot = job.next_run_at
    assert app.backfill("last", slot, slot + timedelta(seconds=1)) == 0  # not past yet: nothing written
    claims.backfill("last", [slot], slot)  # as a backfill or another engine that recorded the slot first
    result = claim(slot + timedelta(seconds=0.5))
    assert (result.dispatches, result.conflicts) == ([], 1)
    stored = SchedulerJob.objects.get(pk="last")
    assert (stored.remaining_runs, stored.state, stored.next_run_at) == (1, "active", slot + timedelta(seconds=10))


def test_a_skipped_slot_another_writer_had_is_not_counted(app: SchedulerApp) -> None:
    job, now = down_for_45_s(app, SchedulePolicy(misfire_grace_seconds=1))
    claims.backfill(job.pk, [job.created_at.replace(microsecond=0) + timedelta(seconds=40)], now)
    assert claim(now).skips == []
    assert SchedulerJob.objects.get(pk=job.pk).skipped_count == 0


def test_changing_max_runs_keeps_the_sends_already_made(app: SchedulerApp) -> None:
    job = app.single(task="system.echo").schedule(EVERY_10_S, job_id="limited", policy=SchedulePolicy(max_runs=5))
    anchor = job.created_at.replace(microsecond=0)
    claim(anchor + timedelta(seconds=10.5))
    claim(anchor + timedelta(seconds=20.5))  # two sent, three left
    job = app.single(task="system.echo").upsert(EVERY_10_S, "limited", policy=SchedulePolicy(max_runs=4))
    assert (job.remaining_runs, job.state) == (2, "active")
    job = app.single(task="system.echo").upsert(EVERY_10_S, "limited", policy=SchedulePolicy(max_runs=2))
    assert (job.remaining_runs, job.state) == (0, "finished")
    job = app.single(task="system.echo").upsert(EVERY_10_S, "limited", policy=SchedulePolicy())
    assert job.remaining_runs is None


# -- found by review: each failed before its fix ---------------------------------------------------------------


def test_a_run_now_is_sent_whatever_the_misfire_grace(app: SchedulerApp) -> None:
    job = app.single(task="system.echo").schedule(EVERY_10_S, policy=SchedulePolicy(misfire_grace_seconds=0))
    app.run_now(job.pk)
    result = claim(datetime.now(UTC) + timedelta(milliseconds=50))
    assert len(result.dispatches) == 1 and result.skips == []


def test_a_failed_send_gives_its_run_back_so_the_retry_is_sent(app: SchedulerApp) -> None:
    job = app.single(task="system.echo").schedule(EVERY_10_S, policy=SchedulePolicy(max_runs=1))
    now = job.created_at.replace(microsecond=0) + timedelta(seconds=10.5)
    (dispatch,) = claim(now).dispatches
    claims.record([claims.Outcome(dispatch, now, now, "ConnectionError: broker down")], now, True, RETRY, "engine-a")
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.remaining_runs, stored.is_enabled) == (1, True)
    (retry,) = claim(stored.next_run_at + timedelta(milliseconds=1)).dispatches
    claims.record([claims.Outcome(retry, now, now, None)], now, True, RETRY, "engine-a")
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.remaining_runs, stored.dispatch_count, stored.state) == (0, 1, "finished")


def test_raising_max_runs_on_a_job_it_finished_lets_it_go_on(app: SchedulerApp) -> None:
    job = app.single(task="system.echo").schedule(EVERY_10_S, job_id="lim", policy=SchedulePolicy(max_runs=1))
    claim(job.created_at.replace(microsecond=0) + timedelta(seconds=10.5))
    assert SchedulerJob.objects.get(pk="lim").state == "finished"
    job = app.single(task="system.echo").upsert(EVERY_10_S, "lim", policy=SchedulePolicy(max_runs=3))
    assert (job.remaining_runs, job.state) == (2, "active") and job.next_run_at is not None


def test_the_admin_form_names_a_missing_outcome_middleware(admin_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_admin import ADD, errors_of, form_data

    monkeypatch.setattr("django_taskiq_beat.builders.reports_outcomes", lambda broker: False)
    response = admin_client.post(ADD, form_data(job_id="p", pause_after_failures="3"))
    assert response.status_code == 200 and "RunOutcomeMiddleware" in " ".join(
        errors_of(response)["pause_after_failures"]
    )


def test_a_limit_set_while_the_job_already_fails_pauses_it_at_the_next_failure(app: SchedulerApp) -> None:
    from taskiq import InMemoryBroker

    from django_taskiq_beat import SchedulerConfig
    from django_taskiq_beat.middleware import RunOutcomeMiddleware, _pause_if_failing

    broker = InMemoryBroker().with_middlewares(RunOutcomeMiddleware())
    broker.register_task(lambda: None, task_name="r.task")
    outcomes_app = SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="UTC"))
    outcomes_app.single(task="r.task").schedule(EVERY_10_S, job_id="f")
    SchedulerJob.objects.filter(pk="f").update(consecutive_failures=4, last_outcome="failed")
    outcomes_app.single(task="r.task").upsert(EVERY_10_S, "f", policy=SchedulePolicy(pause_after_failures=3))
    SchedulerJob.objects.filter(pk="f").update(consecutive_failures=5)  # what the worker writes first
    _pause_if_failing("f", datetime.now(UTC), "ValueError: again")
    assert SchedulerJob.objects.get(pk="f").state == "paused"


@pytest.mark.django_db(transaction=True)
def test_a_send_waiting_out_its_jitter_holds_up_no_other_job(app: SchedulerApp) -> None:
    from asgiref.sync import async_to_sync

    while True:  # a job whose first slot waits at least a minute (all but about 2 % do)
        job = app.single(task="system.echo").schedule(EVERY_10_S, policy=SchedulePolicy(jitter_seconds=3600))
        slot = job.next_run_at
        if jitter_delay(job.pk, slot, 3600) >= timedelta(minutes=1):
            break
        app.delete(job.pk)

    async def scenario() -> tuple[int, float]:
        import asyncio
        import time

        await app.start()
        try:
            await asyncio.sleep((slot - datetime.now(UTC)).total_seconds() + 0.5)  # the jittered slot is claimed
            other = await app.single(task="system.other").aschedule(OneOffSchedule(run_at=datetime.now(UTC)))
            for _ in range(50):
                if await SchedulerRun.objects.filter(job_id=other.pk, status=RunStatus.DISPATCHED).aexists():
                    break
                await asyncio.sleep(0.1)
            sent_other = await SchedulerRun.objects.filter(job_id=other.pk, status=RunStatus.DISPATCHED).acount()
        finally:
            started = time.monotonic()
            await app.stop()  # cuts the jitter short: the waiting send goes now
        return sent_other, time.monotonic() - started

    sent_other, stop_seconds = async_to_sync(scenario)()
    assert sent_other == 1, "another job waited behind a jitter"
    assert stop_seconds < 5
    assert SchedulerRun.objects.filter(job=job, scheduled_for=slot, status=RunStatus.DISPATCHED).exists()
