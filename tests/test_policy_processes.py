"""Timing policies against a real ``run_taskiq_beat`` process: an engine that was away for ten
slots catches up as each job's policy says, and jitter delays sends without moving the slots.

The jobs are written through the API, then moved ten seconds into the past (their anchor and
their slot), as if no engine had run since: the engine then starts and finds ten missed slots.
"""

import signal
import time
from datetime import timedelta

import pytest
from django.db.models import F
from django.utils import timezone

from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, SchedulePolicy, SchedulerApp
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from django_taskiq_beat.policies import jitter_delay
from tests import process_broker
from tests.processes import wait_until
from tests.test_declared_processes import EngineFactory, Sinks, engines, sinks, slot_of  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

EVERY_SECOND = PeriodicSchedule(interval=IntervalTrigger(seconds=1))


def app() -> SchedulerApp:
    """An app on the engines' broker, to write their jobs."""
    return SchedulerApp(broker=process_broker.broker)


def away_for_ten_slots(job_id: str, policy: SchedulePolicy) -> SchedulerJob:
    app().single(task="test.record").schedule(EVERY_SECOND, job_id=job_id, policy=policy)
    back = timedelta(seconds=10)
    SchedulerJob.objects.filter(pk=job_id).update(
        created_at=F("created_at") - back, next_run_at=F("next_run_at") - back
    )
    return SchedulerJob.objects.get(pk=job_id)


def test_after_an_outage_all_sends_every_slot_latest_one_and_the_grace_skips_the_old_ones(
    engines: EngineFactory, sinks: Sinks
) -> None:
    every = away_for_ten_slots("all", SchedulePolicy(catch_up="all"))
    away_for_ten_slots("latest", SchedulePolicy())
    away_for_ten_slots("graced", SchedulePolicy(catch_up="all", misfire_grace_seconds=3.5))
    started = timezone.now()
    engines("engine-catch-up")
    wait_until(
        lambda: len(sinks.messages("all")) >= 10 and sinks.messages("latest") and sinks.messages("graced"),
        timeout=20,
        what="the catch-up sends",
    )
    anchor = every.created_at.replace(microsecond=0)
    missed = [slot for slot in (anchor + timedelta(seconds=k) for k in range(1, 12)) if slot <= started]
    assert len(missed) >= 9
    assert sorted(map(slot_of, sinks.messages("all")))[: len(missed)] == missed  # each slot, its own run

    first = SchedulerRun.objects.filter(job_id="latest").order_by("scheduled_for").first()
    claimed_at = first.created_at  # one run, for the latest slot missed when the engine claimed
    assert claimed_at - timedelta(seconds=1) < first.scheduled_for <= claimed_at + timedelta(seconds=0.5)
    assert SchedulerRun.objects.filter(job_id="latest", scheduled_for__lt=first.scheduled_for).count() == 0

    skipped = SchedulerRun.objects.filter(job_id="graced", status=RunStatus.SKIPPED)
    assert skipped.count() >= 5 and all("missed by" in reason for reason in skipped.values_list("reason", flat=True))
    sent = set(map(slot_of, sinks.messages("graced")))
    assert not sent & set(skipped.values_list("scheduled_for", flat=True))
    assert all(slot >= started - timedelta(seconds=4) for slot in sent)
    assert SchedulerJob.objects.get(pk="graced").skipped_count == skipped.count()


def test_jitter_sends_each_slot_its_own_delay_after_the_slot(engines: EngineFactory, sinks: Sinks) -> None:
    job = (
        app()
        .single(task="test.record")
        .schedule(
            PeriodicSchedule(interval=IntervalTrigger(seconds=2)),
            job_id="jittered",
            policy=SchedulePolicy(jitter_seconds=1.5),
        )
    )
    engines("engine-jitter")
    up = timezone.now()  # a slot whose jittered time came before the engine was up goes when it is claimed
    wait_until(
        lambda: SchedulerRun.objects.filter(job=job, status=RunStatus.DISPATCHED).count() >= 4,
        timeout=20,
        what="four jittered sends",
    )
    runs = SchedulerRun.objects.filter(job=job, status=RunStatus.DISPATCHED).values_list(
        "scheduled_for", "dispatched_at"
    )
    for slot, dispatched_at in runs:
        expected = slot + jitter_delay(job.pk, slot, 1.5)
        assert expected - timedelta(seconds=0.05) <= dispatched_at <= max(expected, up) + timedelta(seconds=1), (
            slot,
            dispatched_at,
        )
        assert (slot - job.created_at.replace(microsecond=0)) % timedelta(seconds=2) == timedelta(0)  # the grid is kept


def test_sigterm_does_not_wait_out_a_jitter_the_waiting_send_goes_at_once(engines: EngineFactory, sinks: Sinks) -> None:
    job = (
        app()
        .single(task="test.record")
        .schedule(
            PeriodicSchedule(interval=IntervalTrigger(seconds=1)),
            job_id="long-jitter",
            policy=SchedulePolicy(jitter_seconds=3600),
        )
    )
    engine = engines("engine-long-jitter")
    wait_until(
        lambda: SchedulerRun.objects.filter(job=job, status=RunStatus.PENDING).exists(),
        timeout=15,
        what="a claimed slot waiting out its jitter",
    )
    stopped_at = timezone.now()
    engine.signal(signal.SIGTERM)
    assert engine.wait() == 0
    assert timezone.now() - stopped_at < timedelta(seconds=10), "the stop waited for the jitter"
    waiting = SchedulerRun.objects.filter(job=job)
    assert waiting.exists() and not waiting.filter(status=RunStatus.PENDING).exists()  # sent at the stop, recorded
    assert len(sinks.messages("long-jitter")) == waiting.filter(status=RunStatus.DISPATCHED).count()


def test_max_runs_stops_a_job_after_that_many_sends(engines: EngineFactory, sinks: Sinks) -> None:
    job = (
        app().single(task="test.record").schedule(EVERY_SECOND, job_id="three-times", policy=SchedulePolicy(max_runs=3))
    )
    engines("engine-max-runs")
    wait_until(lambda: SchedulerJob.objects.get(pk=job.pk).state == "finished", timeout=15, what="the job to finish")
    time.sleep(1.5)  # a fourth slot would have come by now
    assert len(sinks.messages("three-times")) == 3
    assert SchedulerJob.objects.get(pk=job.pk).remaining_runs == 0
