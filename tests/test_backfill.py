"""``backfill(job_id, start, end)``: each past slot in the range sent once, as its own run, by an engine.

Idempotent per slot; more than 1,000 slots refused; in the admin as an action that asks for the range.
"""

import json
import logging
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from taskiq import InMemoryBroker

from django_taskiq_beat import (
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulePolicy,
    SchedulerApp,
    SchedulerValidationError,
    logs,
)
from django_taskiq_beat.forms import BackfillForm
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from tests.conftest import Recorder
from tests.test_engine import break_broker

pytestmark = pytest.mark.django_db(transaction=True)

EVERY_MINUTE = PeriodicSchedule(interval=IntervalTrigger(minutes=1))


def an_hour_old(app: SchedulerApp, **policy: Any) -> SchedulerJob:
    """A job created an hour ago, whose grid therefore has sixty past slots."""
    job = app.single(task="system.echo").schedule(EVERY_MINUTE, policy=SchedulePolicy(**policy) if policy else None)
    SchedulerJob.objects.filter(pk=job.pk).update(created_at=F("created_at") - timedelta(hours=1))
    return SchedulerJob.objects.get(pk=job.pk)


def test_backfill_writes_a_run_per_past_slot_and_an_engine_sends_each_once(app: SchedulerApp, call: Any) -> None:
    job = an_hour_old(app, max_runs=3)
    anchor = job.created_at.replace(microsecond=0)
    start, end = anchor + timedelta(minutes=10), anchor + timedelta(minutes=15)
    assert call(app, "backfill", job.pk, start, end) == 5
    slots = [anchor + timedelta(minutes=minute) for minute in range(10, 15)]
    pending = SchedulerRun.objects.filter(job=job).order_by("scheduled_for")
    assert [run.scheduled_for for run in pending] == slots and {run.status for run in pending} == {RunStatus.PENDING}
    async_to_sync(app.engine.run_once)()
    assert {run.status for run in SchedulerRun.objects.filter(job=job)} == {RunStatus.DISPATCHED}
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.dispatch_count, stored.remaining_runs, stored.state) == (5, 3, "active")  # backfills don't count
    assert call(app, "backfill", job.pk, start - timedelta(minutes=2), end) == 2  # only the slots without a run
    assert SchedulerRun.objects.filter(job=job).count() == 7


def test_an_engine_sends_a_backfilled_slot_again_after_a_failed_send(
    app: SchedulerApp, broker: InMemoryBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The retry is the run's own, after the backoff: not capped at the job's next slot, which is not its."""
    job = an_hour_old(app)
    start = job.created_at.replace(microsecond=0) + timedelta(minutes=10)
    assert app.backfill(job.pk, start, start + timedelta(seconds=30)) == 1
    SchedulerJob.objects.filter(pk=job.pk).update(next_run_at=timezone.now() + timedelta(seconds=2))
    break_broker(broker, monkeypatch, failures=1)
    with caplog.at_level(logging.INFO, logger="django_taskiq_beat"):
        assert async_to_sync(app.engine.run_once)() == 0
    (run,) = SchedulerRun.objects.filter(job=job)
    assert run.status == RunStatus.PENDING and "ConnectionError: boom" in (run.error or "")
    assert run.lease_expires_at is not None and run.lease_expires_at > timezone.now() + timedelta(seconds=3)
    assert f"retry at {logs.when(run.lease_expires_at)}, attempt 2." in caplog.text  # its own time, not the job's

    assert "Sending backfilled runs: 1 run." in caplog.text

    caplog.clear()
    SchedulerRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now())  # the backoff has passed
    with caplog.at_level(logging.INFO, logger="django_taskiq_beat"):
        assert async_to_sync(app.engine.run_once)() == 1
    assert "Retrying backfilled runs whose send failed: 1 run." in caplog.text
    assert "Sending backfilled runs" not in caplog.text  # the slot was sent (and failed) once already
    run.refresh_from_db()
    assert (run.status, run.error, len(recorder.calls)) == (RunStatus.DISPATCHED, None, 1)


def test_a_backfilled_slot_awaiting_its_retry_shows_as_retry_pending_in_the_admin_and_the_cli(
    app: SchedulerApp, broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch, admin_client: Any
) -> None:
    job = an_hour_old(app)
    start = job.created_at.replace(microsecond=0) + timedelta(minutes=10)
    assert app.backfill(job.pk, start, start + timedelta(seconds=30)) == 1
    break_broker(broker, monkeypatch)
    async_to_sync(app.engine.run_once)()
    history = admin_client.get(reverse("admin:django_taskiq_beat_schedulerrun_changelist")).content.decode()
    assert ">retry pending</strong>" in history
    page = admin_client.get(reverse("admin:django_taskiq_beat_schedulerjob_change", args=[job.pk])).content.decode()
    assert '<td style="color: #c62828">retry pending</td>' in page and "ConnectionError: boom" in page
    out = StringIO()
    call_command("taskiq_beat", "show", job.pk, stdout=out)
    assert "retry pending" in out.getvalue() and "ConnectionError: boom" in out.getvalue()
    out = StringIO()
    call_command("taskiq_beat", "show", job.pk, "--json", stdout=out)
    assert [run["awaits_retry"] for run in json.loads(out.getvalue())["recent_runs"]] == [True]


def test_backfill_sends_only_past_slots_and_a_one_off_its_own(app: SchedulerApp) -> None:
    job = an_hour_old(app)
    now = timezone.now()
    written = app.backfill(job.pk, now - timedelta(minutes=5), now + timedelta(hours=5))
    assert written in (4, 5) and all(run.scheduled_for <= now for run in SchedulerRun.objects.filter(job=job))
    moment = now - timedelta(minutes=30)
    once = app.single(task="system.echo").schedule(OneOffSchedule(run_at=now + timedelta(hours=1)))
    assert app.backfill(once.pk, moment, now) == 0  # its slot is not in the range
    SchedulerJob.objects.filter(pk=once.pk).update(trigger_payload={"run_at": moment.isoformat()})
    assert app.backfill(once.pk, moment - timedelta(minutes=1), now) == 1


@pytest.mark.parametrize(
    ("start", "end", "field", "says"),
    [
        (timedelta(minutes=-5), timedelta(minutes=-10), "end", "after start"),
        (timedelta(days=-2), timedelta(0), "end", "More than 1,000 slots"),
    ],
)
def test_a_bad_range_is_refused_and_writes_nothing(
    app: SchedulerApp, start: timedelta, end: timedelta, field: str, says: str
) -> None:
    job = app.single(task="system.echo").schedule(EVERY_MINUTE)
    SchedulerJob.objects.filter(pk=job.pk).update(created_at=F("created_at") - timedelta(days=3))
    now = timezone.now()
    with pytest.raises(SchedulerValidationError, match=says) as refused:
        app.backfill(job.pk, now + start, now + end)
    assert refused.value.field == field and not SchedulerRun.objects.exists()
    with pytest.raises(SchedulerValidationError, match="timezone-aware"):
        app.backfill(job.pk, (now - timedelta(hours=1)).replace(tzinfo=None), now)


def test_the_admin_action_asks_for_the_range_then_backfills(admin_client: Any) -> None:
    from django_taskiq_beat import get_scheduler_app
    from tests.test_admin import JOBS

    job = get_scheduler_app().single(task="demo.heartbeat").schedule(EVERY_MINUTE)  # on the admin's broker
    SchedulerJob.objects.filter(pk=job.pk).update(created_at=F("created_at") - timedelta(hours=1))
    page = admin_client.post(JOBS, {"action": "backfill_jobs", "_selected_action": [job.pk]})
    assert page.status_code == 200 and 'name="start"' in page.content.decode()
    assert not SchedulerRun.objects.exists()
    start = timezone.localtime(timezone.now() - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S")
    end = timezone.localtime(timezone.now() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    response = admin_client.post(
        JOBS,
        {
            "action": "backfill_jobs",
            "_selected_action": [job.pk],
            "apply": "Backfill",
            "start": start,
            "end": end,
            "timezone": timezone.get_current_timezone_name(),
        },
        follow=True,
    )
    assert "Backfilled 1 job." in response.content.decode()
    assert SchedulerRun.objects.filter(job=job, status=RunStatus.PENDING).count() == 5
    bad = admin_client.post(
        JOBS,
        {
            "action": "backfill_jobs",
            "_selected_action": [job.pk],
            "apply": "Backfill",
            "start": end,
            "end": start,
            "timezone": "UTC",
        },
    )
    assert "Must be after start." in bad.content.decode()


@pytest.mark.parametrize(
    ("start", "zone", "read_as"),
    [
        ("2026-03-29T02:30", "UTC", datetime(2026, 3, 29, 2, 30, tzinfo=UTC)),  # in the gap of Berlin, the site's zone
        ("2026-03-29T02:30:00+05:00", "Europe/Berlin", datetime(2026, 3, 28, 21, 30, tzinfo=UTC)),  # a typed offset
        ("2026-03-08T02:30", "America/Adak", None),  # Adak skips it
        ("2026-11-01T01:30", "America/Adak", None),  # and repeats this one
    ],
    ids=["gap-of-the-site-zone", "typed-offset", "gap-of-the-chosen-zone", "repeated-in-the-chosen-zone"],
)
def test_the_admin_reads_a_backfill_range_in_its_chosen_zone(start: str, zone: str, read_as: datetime | None) -> None:
    form = BackfillForm({"start": start, "end": "2026-12-01T00:00", "timezone": zone}, default_timezone="UTC")
    if read_as is None:
        assert not form.is_valid()
        (error,) = form.errors["start"]
        assert f"skipped or repeated in {zone}" in error and f"(start={start.replace('T', ' ')}:00)" in error
    else:
        assert form.is_valid(), form.errors
        assert form.cleaned_data["start"] == read_as
