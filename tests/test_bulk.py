"""bulk's reads: a claim loads times with psycopg's own loader, and gets what Django would give."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, SchedulerApp, bulk, claims
from django_taskiq_beat.models import SchedulerJob

pytestmark = pytest.mark.django_db


def times_of(job_id: str) -> tuple[datetime, ...]:
    return SchedulerJob.objects.filter(pk=job_id).values_list("next_run_at", "created_at", "updated_at").get()


@pytest.fixture
def job(app: SchedulerApp) -> SchedulerJob:
    every_hour = PeriodicSchedule(interval=IntervalTrigger(hours=1))
    job = app.single(task="system.echo").upsert(every_hour, job_id="hourly")
    slot = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=UTC)  # microseconds, and a night clocks change
    SchedulerJob.objects.filter(pk=job.id).update(next_run_at=slot, created_at=slot - timedelta(days=1))
    return job


def test_times_read_natively_are_the_aware_utc_times_django_reads(job: SchedulerJob) -> None:
    by_django = times_of(job.id)
    with bulk.native_timestamps():
        natively = times_of(job.id)
    assert natively == by_django
    assert by_django[0] == datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=UTC)
    assert all(value.tzinfo is UTC for value in natively)


@pytest.fixture
def djangos_loads(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many times Django's own (Python) timestamptz loader has loaded a value since."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: only there does Django load times with a Python loader of its own")
    from django.db.backends.postgresql.psycopg_any import BaseTzLoader

    calls = 0
    djangos = BaseTzLoader.load

    def counted(self: Any, data: Any) -> Any:
        nonlocal calls
        calls += 1
        return djangos(self, data)

    monkeypatch.setattr(BaseTzLoader, "load", counted)
    return lambda: calls


def test_on_postgresql_django_loads_no_time_within_and_every_time_after(
    job: SchedulerJob, djangos_loads: Callable[[], int]
) -> None:
    with bulk.native_timestamps():
        times_of(job.id)
    assert djangos_loads() == 0
    times_of(job.id)
    assert djangos_loads() == 3


LEASE = timedelta(minutes=1)


def test_a_claim_and_a_take_over_load_their_times_natively(job: SchedulerJob, djangos_loads: Callable[[], int]) -> None:
    (claimed,) = claims.claim_due("engine-a", timezone.now(), 10, LEASE, claims.RetryPolicy(5, 300)).dispatches
    assert claimed.job_id == job.id and claimed.scheduled_for.tzinfo is UTC
    assert djangos_loads() == 0
    (taken,) = claims.claim_expired("engine-b", timezone.now() + 2 * LEASE, 10, LEASE).dispatches
    assert (taken.run_id, taken.scheduled_for) == (claimed.run_id, claimed.scheduled_for)
    assert djangos_loads() == 0
