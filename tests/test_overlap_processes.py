"""``overlap`` in the real deployment: a task that runs longer than its interval, a ``taskiq worker``
reporting its outcomes over Redis, and two ``run_taskiq_beat`` processes sharing the jobs.

A run's start and end are what the worker's ``RunOutcomeMiddleware`` wrote; "no overlap" means
each sent run started after the one before it had finished.
"""

from datetime import timedelta
from itertools import pairwise

import pytest

from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, SchedulePolicy, get_scheduler_app
from django_taskiq_beat.claims import WAITING_CLAIMANT
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from tests.processes import wait_until
from tests.test_deployment import ON_TIME, SCHEDULER_OPTIONS, Deployment, deployment  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

EVERY_SECOND = PeriodicSchedule(interval=IntervalTrigger(seconds=1))
TASK_SECONDS = 2.5  # longer than two intervals


def run_sleeper_until_three_finish(policy: SchedulePolicy) -> SchedulerJob:
    """Schedule ``demo.sleep(2.5)`` every second, let three runs finish, pause it, let what was sent settle."""
    app = get_scheduler_app()
    job = app.single(task="demo.sleep", args=[TASK_SECONDS]).schedule(EVERY_SECOND, policy=policy)
    finished = SchedulerRun.objects.filter(job=job, outcome__in=["succeeded", "failed"])
    wait_until(lambda: finished.count() >= 3, timeout=90, what="three runs of the sleeping task to finish")
    app.pause(job.id)
    sent = SchedulerRun.objects.filter(job=job).exclude(claimed_by=WAITING_CLAIMANT)
    wait_until(
        lambda: (
            not sent.filter(status=RunStatus.PENDING).exists()
            and not sent.filter(status=RunStatus.DISPATCHED).exclude(outcome__in=["succeeded", "failed"]).exists()
        ),
        timeout=30,
        what="the runs already sent to finish",
    )
    return job


def sent_runs(job: SchedulerJob) -> list[SchedulerRun]:
    return list(SchedulerRun.objects.filter(job=job, status=RunStatus.DISPATCHED).order_by("scheduled_for"))


def assert_no_overlap(runs: list[SchedulerRun]) -> None:
    assert all(run.outcome == "succeeded" for run in runs), [(run.scheduled_for, run.outcome) for run in runs]
    for earlier, later in pairwise(runs):
        assert later.started_at >= earlier.completed_at, (
            f"run of {later.scheduled_for} started at {later.started_at}, before the run of {earlier.scheduled_for}"
            f" finished at {earlier.completed_at}"
        )


def test_skip_never_runs_the_task_twice_at_once_and_records_each_slot_it_skipped(deployment: Deployment) -> None:
    job = run_sleeper_until_three_finish(SchedulePolicy(overlap="skip"))
    runs = sent_runs(job)
    assert_no_overlap(runs)
    deployment.assert_sent_once(runs)
    slots = {run.scheduled_for: run for run in SchedulerRun.objects.filter(job=job)}
    for earlier, later in pairwise(runs):
        between = [
            slots.get(earlier.scheduled_for + timedelta(seconds=k))
            for k in range(1, round((later.scheduled_for - earlier.scheduled_for).total_seconds()))
        ]
        assert between and all(run is not None and run.status == RunStatus.SKIPPED for run in between), (
            "a slot while the task ran was neither skipped nor sent"
        )
        assert all(run.reason.startswith("overlap: the previous run (") for run in between), [r.reason for r in between]
        # skipped only while it ran: the first slot after it finished is sent (judged up to half a second early)
        assert later.scheduled_for - earlier.completed_at < timedelta(seconds=1) + ON_TIME
    assert (
        SchedulerJob.objects.get(pk=job.pk).skipped_count
        == SchedulerRun.objects.filter(job=job, status=RunStatus.SKIPPED).count()
    )


def test_buffer_one_holds_one_slot_and_sends_it_right_after_the_running_task_finishes(deployment: Deployment) -> None:
    job = run_sleeper_until_three_finish(SchedulePolicy(overlap="buffer_one"))
    runs = sent_runs(job)
    assert_no_overlap(runs)
    deployment.assert_sent_once(runs)
    held = [(earlier, later) for earlier, later in pairwise(runs) if (later.reason or "").startswith("held until")]
    assert len(held) >= 2, [(run.scheduled_for, run.reason) for run in runs]
    for earlier, later in held:
        assert earlier.completed_at <= later.dispatched_at < earlier.completed_at + ON_TIME, (
            "the held slot was not sent right after the run before it finished"
        )
    skipped = list(SchedulerRun.objects.filter(job=job, status=RunStatus.SKIPPED).values_list("reason", flat=True))
    paused = [reason for reason in skipped if reason == "overlap: the job was paused while the slot was held"]
    assert len(paused) <= 1  # the slot held when the test paused the job
    assert skipped != paused and all(
        "already waits for the previous run" in reason for reason in skipped if reason not in paused
    )
    slots = sorted(SchedulerRun.objects.filter(job=job).values_list("scheduled_for", flat=True))
    assert all(later - earlier == timedelta(seconds=1) for earlier, later in pairwise(slots)), (
        "a slot has no run: each is sent, held and sent later with its own time, or skipped"
    )
    assert SCHEDULER_OPTIONS["SYNC_INTERVAL_SECONDS"] < ON_TIME.total_seconds()
