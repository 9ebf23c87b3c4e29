"""``overview``: the numbers behind the dashboard and ``taskiq_beat status``, from rows written as the
engine and the workers write them."""

import math
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_taskiq_beat import IntervalTrigger, OneOffSchedule, PeriodicSchedule, SchedulerApp, overview
from django_taskiq_beat.conf import BACKFILL_CLAIMANT, BACKFILLED
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)


def run(
    job: SchedulerJob,
    slot: datetime,
    status: str = RunStatus.DISPATCHED,
    outcome: str = "",
    lag: float | None = 0.005,
    error: str | None = None,
) -> SchedulerRun:
    sent = status == RunStatus.DISPATCHED
    return SchedulerRun.objects.create(
        job=job,
        scheduled_for=slot,
        status=status,
        outcome=outcome,
        error=error,
        dispatched_at=slot + timedelta(seconds=lag) if sent and lag is not None else None,
        finished_at=slot + timedelta(seconds=1) if status != RunStatus.PENDING else None,
    )


def awaits_retry(job: SchedulerJob, slot: datetime, error: str = "ConnectionError: boom") -> SchedulerRun:
    """A backfilled slot whose send failed, as ``claims.record`` leaves it: pending until its retry."""
    return SchedulerRun.objects.create(
        job=job, scheduled_for=slot, claimed_by=BACKFILL_CLAIMANT, reason=BACKFILLED, error=error
    )


def job(app: SchedulerApp, job_id: str, every: int = 60, **kwargs: object) -> SchedulerJob:
    return app.single(task="system.echo").schedule(
        PeriodicSchedule(interval=IntervalTrigger(seconds=every)), job_id=job_id, **kwargs
    )


def test_each_hour_counts_runs_by_outcome_and_reads_lag_percentiles_from_the_histogram(app: SchedulerApp) -> None:
    sender = job(app, "a")
    hour = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    for second in range(18):  # 18 sent: lags 5 ms (x16), 0.3 s, 90 s
        lag = 0.005 if second < 16 else (0.3 if second == 16 else 90)
        run(sender, hour + timedelta(seconds=second), outcome="succeeded", lag=lag)
    run(sender, hour + timedelta(minutes=1), outcome="failed")
    run(sender, hour + timedelta(minutes=2), status=RunStatus.FAILED, lag=None, error="ConnectionError")
    run(sender, hour + timedelta(minutes=3), status=RunStatus.SKIPPED, lag=None)
    run(sender, hour + timedelta(minutes=4), outcome="running")
    run(sender, hour + timedelta(minutes=5), status=RunStatus.PENDING, lag=None)  # not sent yet: not counted
    awaits_retry(sender, hour + timedelta(minutes=6))  # a failed send: counted as failed
    run(sender, hour - timedelta(hours=30))  # outside the window
    with timezone.override(UTC):
        hours = overview.last_hours(NOW)
    assert [h.start for h in hours] == [NOW.replace(minute=0) - timedelta(hours=k) for k in range(23, -1, -1)]
    nine = hours[-2]
    assert nine.outcomes == {"succeeded": 18, "failed": 3, "skipped": 1, "not reported": 1}
    assert (nine.lag_p50, nine.lag_p95) == (0.01, 0.5)  # 20 sent: the 10th under 10 ms, the 19th under 0.5 s
    assert hours[-1].total == 0 and hours[-1].lag_p50 is None
    assert sum(h.total for h in hours) == 23


def test_a_lag_past_the_last_bound_reads_as_infinite() -> None:
    assert overview._percentile([0] * len(overview.LAG_BOUNDS) + [3], 0.95) == math.inf
    assert overview._percentile([1] + [0] * len(overview.LAG_BOUNDS), 0.5) == overview.LAG_BOUNDS[0]


def test_hours_are_those_of_the_current_time_zone() -> None:
    with timezone.override("Asia/Kolkata"):  # UTC+5:30: its hours start at half past, in UTC
        starts = overview.hour_starts(NOW, 2)
    assert starts == [datetime(2026, 12, 2, 9, 30, tzinfo=UTC), datetime(2026, 12, 2, 10, 30, tzinfo=UTC)]


def test_the_snapshot_counts_jobs_by_state_due_and_overdue(app: SchedulerApp) -> None:
    now = timezone.now()
    job(app, "active")
    job(app, "paused")
    app.pause("paused")
    job(app, "late")
    SchedulerJob.objects.filter(pk="late").update(next_run_at=now - timedelta(minutes=5))
    SchedulerJob.objects.filter(pk="active").update(next_run_at=now - timedelta(seconds=5))
    app.single(task="system.echo").schedule(OneOffSchedule(run_at=now + timedelta(hours=2)), job_id="later")
    seen = overview.snapshot(now)
    assert seen.jobs_by_state == {"active": 3, "failing": 0, "paused": 1, "finished": 0}
    assert (seen.job_count, seen.due_now) == (4, 2)
    assert seen.overdue == overview.Overdue(1, "late", now - timedelta(minutes=5))
    assert seen.next_due_at == SchedulerJob.objects.get(pk="later").next_run_at


def test_coming_lists_the_slots_of_the_next_hour_and_counts_every_job_firing(app: SchedulerApp) -> None:
    now = timezone.now()
    frequent = job(app, "every-10-min", every=600)
    job(app, "daily", every=86400)
    count, firing = overview.coming(now)
    assert count == 1
    [only] = firing
    assert only.job.pk == "every-10-min"
    assert only.times[0] == frequent.next_run_at and len(only.times) == 6
    assert all(now < moment <= now + timedelta(hours=1) for moment in only.times)
    count, firing = overview.coming(now, window=timedelta(days=2), limit=1, per_job=3)
    assert count == 2 and len(firing) == 1 and len(firing[0].times) == 3


def test_failing_most_ranks_jobs_by_failed_runs_with_their_latest_error(app: SchedulerApp) -> None:
    now = timezone.now()
    often, once = job(app, "often"), job(app, "once")
    for minutes in (1, 2, 3):
        run(often, now - timedelta(minutes=minutes), outcome="failed", error=f"ValueError: {minutes}")
    run(once, now - timedelta(minutes=2), status=RunStatus.FAILED, lag=None, error="ConnectionError")
    awaits_retry(once, now - timedelta(minutes=1), error="TimeoutError")  # a failed send too
    run(once, now - timedelta(hours=30), outcome="failed")  # outside the window
    run(job(app, "pending"), now - timedelta(minutes=1), status=RunStatus.PENDING, error="old")  # not a failure
    ranked = overview.failing_most(now)
    assert [(f.job.pk, f.failed, f.job.last_failure) for f in ranked] == [
        ("often", 3, "ValueError: 1"),
        ("once", 2, "TimeoutError"),
    ]


def test_query_counts_do_not_grow_with_jobs_or_runs(app: SchedulerApp) -> None:
    def queries() -> int:
        now = timezone.now()
        with CaptureQueriesContext(connection) as captured:
            overview.snapshot(now)
            overview.last_hours(now)
            overview.coming(now)
            overview.failing_most(now)
        return len(captured.captured_queries)

    def add(count: int) -> None:
        for index in range(count):
            sender = job(app, f"j{SchedulerJob.objects.count()}-{index}", every=60)
            run(sender, timezone.now() - timedelta(minutes=index + 1), outcome="failed" if index % 2 else "succeeded")

    add(3)
    few = queries()
    add(40)
    assert queries() == few
