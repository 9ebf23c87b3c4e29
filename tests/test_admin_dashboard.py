"""The admin's dashboard page: its numbers and charts from real rows, who may see it, what it costs."""

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, get_scheduler_app
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from tests.test_cli import engine_row

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("admin:django_taskiq_beat_schedulerdashboard_changelist")
JOBS = reverse("admin:django_taskiq_beat_schedulerjob_changelist")


def schedule(job_id: str, every: int = 600, name: str | None = None) -> SchedulerJob:
    return (
        get_scheduler_app()
        .single(task="demo.heartbeat")
        .schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=every)), job_id=job_id, name=name)
    )


def sent(
    job: SchedulerJob,
    ago: timedelta,
    outcome: str = "succeeded",
    lag: float = 0.02,
    status: str = RunStatus.DISPATCHED,
    error: str | None = None,
) -> None:
    slot = timezone.now() - ago
    SchedulerRun.objects.create(
        job=job,
        scheduled_for=slot,
        status=status,
        outcome=outcome,
        error=error,
        dispatched_at=slot + timedelta(seconds=lag) if status == RunStatus.DISPATCHED else None,
        finished_at=slot + timedelta(seconds=1),
    )


def marks(page: str, css_class: str) -> list[dict[str, str]]:
    """The data-* attributes of each SVG element of a class."""
    found = []
    for element in re.findall(rf'<\w+ class="{css_class}"([^>]*)>', page):
        found.append(dict(re.findall(r'data-([\w-]+)="([^"]*)"', element)))
    return found


def test_the_dashboard_draws_the_last_day_the_next_hour_and_the_failing_jobs(admin_client: Client) -> None:
    engine_row("engine-up", heartbeat_age=1)
    engine_row("engine-gone", heartbeat_age=600)
    report = schedule("report", name="Hourly report")
    flaky = schedule("flaky", name="Flaky export")
    for minutes in (5, 65, 125):
        sent(report, timedelta(minutes=minutes))
    sent(flaky, timedelta(minutes=6), outcome="failed", error="ValueError: bad row")
    sent(flaky, timedelta(minutes=7), status=RunStatus.SKIPPED, outcome="")
    SchedulerJob.objects.filter(pk="flaky").update(next_run_at=timezone.now() - timedelta(minutes=3))

    page = admin_client.get(DASHBOARD).content.decode()
    assert "1 alive" in page and "1 dead" in page
    assert 'data-state="active" data-count="2"' in page
    assert 'data-overdue="1"' in page and "Flaky export" not in page.split('id="tb-due"')[0]
    bars = marks(page, "tb-bar-segment")
    assert sum(int(bar["count"]) for bar in bars if bar["category"] == "succeeded") == 3
    assert sorted((bar["category"], bar["count"]) for bar in bars if bar["category"] != "succeeded") == [
        ("failed", "1"),
        ("skipped", "1"),
    ]
    points = marks(page, "tb-lag-point")
    assert {point["percentile"] for point in points} == {"p50", "p95"}
    assert {point["seconds"] for point in points} == {"0.025"}  # every send 20 ms late: under 25 ms
    rows = marks(page, "tb-timeline-row")
    assert {row["job"] for row in rows} == {"report", "flaky"}  # flaky is overdue: its slot shows at "now"
    assert {row["job"]: row["slots"] for row in rows}["report"] == "6"
    assert 'data-job="flaky" data-failed="1"' in page and "ValueError: bad row" in page


def test_the_dashboard_is_linked_from_the_index_and_the_job_list(admin_client: Client) -> None:
    assert DASHBOARD in admin_client.get(reverse("admin:index")).content.decode()
    assert DASHBOARD in admin_client.get(JOBS).content.decode()


@pytest.mark.parametrize(
    ("permission", "allowed"),
    [
        ("view_schedulerjob", True),
        ("change_schedulerjob", True),
        ("view_schedulerrun", False),
        ("view_schedulerengine", False),
        (None, False),
    ],
)
def test_who_may_see_the_dashboard(client: Client, permission: str | None, allowed: bool) -> None:
    user = User.objects.create_user("operator", password="secret", is_staff=True)
    if permission:
        user.user_permissions.add(Permission.objects.get(codename=permission))
    client.force_login(user)
    assert client.get(DASHBOARD).status_code == (200 if allowed else 403)
    index = client.get(reverse("admin:index")).content.decode()
    assert (DASHBOARD in index) is allowed


def test_the_dashboard_changes_nothing(admin_client: Client) -> None:
    assert admin_client.post(DASHBOARD).status_code in (200, 403, 405)
    assert not SchedulerJob.objects.exists()
    add_url = DASHBOARD + "add/"
    assert admin_client.get(add_url).status_code in (302, 403, 404)


def test_the_dashboards_queries_do_not_grow_with_jobs_and_runs(admin_client: Client) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(DASHBOARD).status_code == 200
        return len(captured.captured_queries)

    def add(count: int) -> None:
        for index in range(count):
            job = schedule(f"job-{SchedulerJob.objects.count()}", every=60 * (index + 1))
            sent(job, timedelta(minutes=index), outcome="failed" if index % 3 == 0 else "succeeded")
            engine_row(f"engine-{job.pk}", heartbeat_age=index)

    add(2)
    few = queries()
    add(40)
    assert queries() == few


def test_an_empty_scheduler_says_so(admin_client: Client) -> Any:
    page = admin_client.get(DASHBOARD).content.decode()
    assert "Nothing fires in the next hour." in page and "No run failed in the last 24 hours." in page
    assert "0 alive" in page and "Nothing is being sent" in page
