"""The scheduler at a glance: what the admin's dashboard and ``taskiq_beat status`` show.

Each number comes from one bounded query: an aggregate, or a short list in index order. The
cost does not grow with the number of jobs or runs, except for the runs of the last day that
the hourly aggregates read through the ``scheduled_for`` index.
"""

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate

from django.db.models import (
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import TruncHour
from django.utils import timezone

from django_taskiq_beat.describe import next_fire_times
from django_taskiq_beat.models import AWAITING_RETRY, RunOutcome, RunStatus, SchedulerEngine, SchedulerJob, SchedulerRun

OVERDUE_AFTER = timedelta(seconds=60)
"""A job whose slot is older than this is overdue: no engine has sent it in time."""
SUCCEEDED, FAILED, SKIPPED, NOT_REPORTED = "succeeded", "failed", "skipped", "not reported"
CATEGORIES = (SUCCEEDED, FAILED, SKIPPED, NOT_REPORTED)
"""What became of a run: the worker's final outcome, a failed send, a slot not sent by its job's
policy, or a send whose outcome no worker reported (yet: it may still run)."""
LAG_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""The upper bounds (seconds) of the lag histogram the hourly percentiles are read from; past the last: more."""


@dataclass(frozen=True)
class Overdue:
    count: int
    oldest_job_id: str | None = None
    oldest_slot: datetime | None = None


def overdue(now: datetime, late_by: timedelta = OVERDUE_AFTER) -> Overdue:
    """Enabled jobs whose slot is older than ``late_by``, and the oldest of them (two index reads)."""
    late = SchedulerJob.objects.filter(is_enabled=True, next_run_at__lt=now - late_by)
    oldest = late.order_by("next_run_at").values_list("id", "next_run_at").first()
    if oldest is None:
        return Overdue(0)
    return Overdue(late.count(), *oldest)


@dataclass(frozen=True)
class Snapshot:
    """Engines, jobs by state, what is due and overdue, now."""

    engines: list[SchedulerEngine]  # each with ``database_now``: ``engine.state(dead_after)`` works
    jobs_by_state: dict[str, int]
    job_count: int
    due_now: int
    next_due_at: datetime | None
    overdue: Overdue


def snapshot(now: datetime) -> Snapshot:
    jobs = SchedulerJob.objects
    by_state = jobs.count_by_state()
    next_due = (
        jobs.filter(is_enabled=True, next_run_at__gt=now)
        .order_by("next_run_at")
        .values_list("next_run_at", flat=True)
        .first()
    )
    return Snapshot(
        engines=list(SchedulerEngine.objects.on_database_clock().order_by("-heartbeat_at")),
        jobs_by_state=by_state,
        job_count=sum(by_state.values()),
        due_now=jobs.due(now).count(),
        next_due_at=next_due,
        overdue=overdue(now),
    )


@dataclass(frozen=True)
class Hour:
    """One hour of runs, by the hour of their slot."""

    start: datetime
    outcomes: dict[str, int]  # every category, 0 included
    lag_p50: float | None  # seconds: the histogram bound the median send falls under; None: nothing sent
    lag_p95: float | None  # ``math.inf``: later than the last bound

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


def _category() -> Case:
    return Case(
        When(status=RunStatus.SKIPPED, then=Value(SKIPPED)),
        When(_failed(), then=Value(FAILED)),
        When(outcome=RunOutcome.SUCCEEDED, then=Value(SUCCEEDED)),
        default=Value(NOT_REPORTED),
    )


def _lag() -> ExpressionWrapper:
    return ExpressionWrapper(F("dispatched_at") - F("scheduled_for"), output_field=DurationField())


def _lag_bucket() -> Case:
    """The index in ``LAG_BOUNDS`` of the first bound a sent run's ``lag`` is under (``len``: over them all).

    An unsent run has no lag (NULL compares to nothing): it has no bucket.
    """
    return Case(
        *(When(lag__lt=timedelta(seconds=bound), then=Value(index)) for index, bound in enumerate(LAG_BOUNDS)),
        When(dispatched_at__isnull=False, then=Value(len(LAG_BOUNDS))),
        default=None,
        output_field=IntegerField(),
    )


def hour_starts(now: datetime, hours: int) -> list[datetime]:
    """The starts of the last ``hours`` hours in the current time zone, oldest first (this one last)."""
    this_hour = timezone.localtime(now).replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    return [this_hour - timedelta(hours=back) for back in range(hours - 1, -1, -1)]


def last_hours(now: datetime, hours: int = 24) -> list[Hour]:
    """Runs of the last ``hours`` by hour: how many ended in each category, and the lag percentiles.

    One aggregate query over the runs whose slot is in the window; at most hours x 4 x 13 rows come back.
    """
    starts = hour_starts(now, hours)
    rows = (
        SchedulerRun.objects.filter(scheduled_for__gte=starts[0])
        .filter(~Q(status=RunStatus.PENDING) | AWAITING_RETRY)  # not sent yet, but a failed send that awaits a retry
        .annotate(lag=_lag())
        .annotate(hour=TruncHour("scheduled_for"), category=_category(), bucket=_lag_bucket())
        .values_list("hour", "category", "bucket")
        .annotate(count=Count("pk"))
        .order_by()
    )
    outcomes: dict[datetime, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CATEGORIES, 0))
    lags: dict[datetime, list[int]] = defaultdict(lambda: [0] * (len(LAG_BOUNDS) + 1))
    for hour, category, index, count in rows:
        outcomes[hour][category] += count
        if index is not None:
            lags[hour][index] += count
    return [
        Hour(start, outcomes[start], _percentile(lags[start], 0.5), _percentile(lags[start], 0.95)) for start in starts
    ]


def _percentile(histogram: list[int], fraction: float) -> float | None:
    """The bound of the first bucket by which ``fraction`` of the counts are seen; None for no counts."""
    total = sum(histogram)
    if not total:
        return None
    bounds = (*LAG_BOUNDS, math.inf)
    return next(bound for bound, seen in zip(bounds, accumulate(histogram), strict=True) if seen >= fraction * total)


@dataclass(frozen=True)
class Firing:
    """A job and its slots within the coming window."""

    job: SchedulerJob
    times: list[datetime]


def coming(
    now: datetime, window: timedelta = timedelta(hours=1), limit: int = 30, per_job: int = 60
) -> tuple[int, list[Firing]]:
    """How many enabled jobs fire within ``window``, and the first ``limit`` of them with their slots in it."""
    firing = SchedulerJob.objects.filter(is_enabled=True, next_run_at__lte=now + window)
    jobs = firing.order_by("next_run_at", "id").only(
        "id", "name", "task_name", "kind", "strategy", "trigger_payload", "next_run_at", "created_at", "is_enabled"
    )[:limit]
    listed = [
        Firing(job, [moment for moment in next_fire_times(job, per_job) if moment <= now + window]) for job in jobs
    ]
    return firing.count(), listed


@dataclass(frozen=True)
class Failing:
    job: SchedulerJob  # with ``last_failure``: the error of its latest failed run
    failed: int


def _failed() -> Q:
    """A failed send (also one that awaits its retry in its run) or a failed outcome."""
    return Q(status=RunStatus.FAILED) | AWAITING_RETRY | Q(outcome=RunOutcome.FAILED)


def failing_most(now: datetime, hours: int = 24, limit: int = 10) -> list[Failing]:
    """The jobs with the most failed runs (failed sends and failed outcomes) in the last ``hours``."""
    failed = (
        SchedulerRun.objects.filter(_failed(), scheduled_for__gte=now - timedelta(hours=hours))
        .values_list("job_id")
        .annotate(count=Count("pk"))
        .order_by("-count", "job_id")[:limit]
    )
    counts = dict(failed)
    latest = SchedulerRun.objects.filter(_failed(), job_id=OuterRef("pk")).order_by("-scheduled_for")
    jobs = (
        SchedulerJob.objects.filter(pk__in=counts)
        .only("id", "name", "task_name")
        .annotate(last_failure=Subquery(latest.values("error")[:1]))
    )
    found = {job.pk: job for job in jobs}
    return [Failing(found[job_id], count) for job_id, count in counts.items() if job_id in found]
