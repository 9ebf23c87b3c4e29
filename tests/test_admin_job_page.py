"""A job's page: its runs as they ended (the worker's outcome, duration and error), its last outcome,
its pause, and a sparkline of its latest runs."""

import re
from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, get_scheduler_app
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun

pytestmark = pytest.mark.django_db


def page_of(client: Client, job_id: str) -> str:
    return client.get(reverse("admin:django_taskiq_beat_schedulerjob_change", args=[quote(job_id)])).content.decode()


def job_with_runs() -> SchedulerJob:
    job = (
        get_scheduler_app()
        .single(task="demo.heartbeat")
        .schedule(PeriodicSchedule(interval=IntervalTrigger(minutes=5)), job_id="export")
    )
    now = timezone.now()
    for minutes, outcome, error in (
        (15, "succeeded", None),
        (10, "failed", "ValueError: row 17 is broken"),
        (5, "running", None),
    ):
        slot = now - timedelta(minutes=minutes)
        SchedulerRun.objects.create(
            job=job,
            scheduled_for=slot,
            status=RunStatus.DISPATCHED,
            dispatched_at=slot + timedelta(seconds=0.2),
            finished_at=slot + timedelta(seconds=0.2),
            outcome=outcome,
            error=error,
            started_at=slot + timedelta(seconds=1),
            completed_at=None if outcome == "running" else slot + timedelta(seconds=3.5),
        )
    SchedulerJob.objects.filter(pk="export").update(last_outcome="failed", consecutive_failures=1)
    return job


def test_the_runs_table_shows_the_workers_outcome_duration_and_error(admin_client: Client) -> None:
    job_with_runs()
    page = page_of(admin_client, "export")
    table = page[page.index("<th>scheduled for</th>") :]
    assert "<th>outcome</th>" in table and "<th>duration</th>" in table
    failed_row = next(row for row in table.split("<tr>") if "ValueError: row 17 is broken" in row)
    assert ">failed</td>" in failed_row and "2500 ms" in failed_row and "dispatched" not in failed_row
    assert any(">succeeded</td>" in row for row in table.split("<tr>"))
    assert "running since" in table


def test_the_page_shows_the_last_outcome_and_the_failures_in_a_row(admin_client: Client) -> None:
    job_with_runs()
    page = page_of(admin_client, "export")
    assert re.search(r">failed</strong> \(1 failed run in a row\)", page)
    SchedulerJob.objects.filter(pk="export").update(last_outcome="", consecutive_failures=0)
    assert "no outcome reported yet" in page_of(admin_client, "export")


def test_a_paused_job_shows_its_pause_and_no_fire_times(admin_client: Client) -> None:
    job = job_with_runs()
    upcoming = job.next_run_at.astimezone(timezone.get_current_timezone()).strftime("%Y-%m-%d %H:%M:%S")
    assert upcoming in page_of(admin_client, "export")
    get_scheduler_app().pause("export", note="vendor outage, INC-7")
    page = page_of(admin_client, "export")
    assert "paused: no slot until it is resumed" in page and "vendor outage, INC-7" in page
    assert upcoming not in page


def test_the_sparkline_draws_one_bar_per_run_coloured_by_outcome(admin_client: Client) -> None:
    job_with_runs()
    page = page_of(admin_client, "export")
    svg = page[page.index('<svg class="tb-sparkline"') :]
    svg = svg[: svg.index("</svg>")]
    assert re.findall(r'data-outcome="([^"]+)"', svg) == ["succeeded", "failed", "running"]  # oldest first
    assert "lag 200 ms" in svg
