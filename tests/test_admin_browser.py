"""The admin in a real headless browser: create a job, run it now, see its run; the engines screen.

Playwright drives Debian's ``chromium`` (CI installs it with apt; Playwright's own
browser download is not used). An engine process on the test database sends the job.
Screenshots go to the test's temporary directory; with ``UPDATE_SCREENSHOTS=1`` they replace
the ones in ``docs/screenshots/`` that the docs' admin page shows (a plain test run changes no tracked file).
"""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, get_scheduler_app
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from tests.processes import REPO, child_env, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it: apt-get install chromium)"
    ),
]


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    return REPO / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[None]:
    """``run_taskiq_beat`` with the demo project's in-process broker, on the test database."""
    log = tmp_path / "engine.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "testproject" / "manage.py"), "run_taskiq_beat"],
            env=child_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Scheduler engine started." in log.read_text(), timeout=30, what="the engine")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)
        print(log.read_text())


@pytest.fixture
def page(live_server: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop here
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def messages_of(page: object) -> str:
    """The admin's message bar once the page after a POST has loaded."""
    page.wait_for_selector("ul.messagelist")  # type: ignore[attr-defined]
    return page.inner_text("ul.messagelist")  # type: ignore[attr-defined]


def test_create_run_now_and_see_the_run_in_the_history(
    live_server: object, engine: None, page: object, screenshots: Path
) -> None:
    User.objects.create_superuser("admin", "admin@example.com", "secret")
    base = str(live_server)
    page.goto(f"{base}/admin/login/?next=/admin/django_taskiq_beat/schedulerjob/")  # type: ignore[attr-defined]
    page.fill("#id_username", "admin")  # type: ignore[attr-defined]
    page.fill("#id_password", "secret")  # type: ignore[attr-defined]
    page.click("input[type=submit]")  # type: ignore[attr-defined]

    page.goto(f"{base}/admin/django_taskiq_beat/schedulerjob/add/")  # type: ignore[attr-defined]
    page.fill("#id_name", "Greeting from the browser")  # type: ignore[attr-defined]
    page.select_option("#id_task", "demo.greet")  # type: ignore[attr-defined]
    page.fill("#id_args", '["browser"]')  # type: ignore[attr-defined]
    page.select_option("#id_schedule_type", "interval")  # type: ignore[attr-defined]
    page.fill("#id_interval_every", "1")  # type: ignore[attr-defined]
    page.select_option("#id_interval_unit", "hours")  # type: ignore[attr-defined]
    page.screenshot(path=str(screenshots / "job-form.png"), full_page=True)  # type: ignore[attr-defined]
    page.click("input[name=_save]")  # type: ignore[attr-defined]
    assert "was added successfully" in messages_of(page)
    job = SchedulerJob.objects.get(name="Greeting from the browser")

    page.check(f"input[name=_selected_action][value='{job.pk}']")  # type: ignore[attr-defined]
    page.select_option("select[name=action]", "run_jobs_now")  # type: ignore[attr-defined]
    page.click("button[name=index]")  # type: ignore[attr-defined]
    assert "Marked to run now: 1 job." in messages_of(page)
    wait_until(
        lambda: SchedulerRun.objects.filter(job=job, status=RunStatus.DISPATCHED).exists(),
        timeout=30,
        what="the engine to send the job",
    )

    page.goto(f"{base}/admin/django_taskiq_beat/schedulerjob/")  # type: ignore[attr-defined]
    assert "every hour" in page.inner_text("#result_list")  # type: ignore[attr-defined]
    page.goto(f"{base}/admin/django_taskiq_beat/schedulerrun/?job__id__exact={job.pk}")  # type: ignore[attr-defined]
    history = page.inner_text("#result_list")  # type: ignore[attr-defined]
    assert "Greeting from the browser" in history and "succeeded" in history  # the worker's outcome
    page.screenshot(path=str(screenshots / "run-history.png"), full_page=True)  # type: ignore[attr-defined]


def log_in(page: object, base: str, next_url: str) -> None:
    User.objects.create_superuser("operator", "operator@example.com", "secret")
    page.goto(f"{base}/admin/login/?next={next_url}")  # type: ignore[attr-defined]
    page.fill("#id_username", "operator")  # type: ignore[attr-defined]
    page.fill("#id_password", "secret")  # type: ignore[attr-defined]
    page.click("input[type=submit]")  # type: ignore[attr-defined]


def test_the_engines_screen_and_the_warning_when_none_is_alive(
    live_server: object, page: object, screenshots: Path
) -> None:
    from tests.test_cli import engine_row

    get_scheduler_app().single(task="demo.heartbeat").schedule(
        PeriodicSchedule(interval=IntervalTrigger(seconds=5)), name="Heartbeat"
    )
    engine_row("engine-b7", heartbeat_age=300, dispatched_count=5120, failed_dispatch_count=3)
    engine_row("engine-a1", heartbeat_age=3600, stopped=True, dispatched_count=20411)
    base = str(live_server)
    log_in(page, base, "/admin/django_taskiq_beat/schedulerjob/")
    assert "No scheduler engine is alive" in page.inner_text("ul.messagelist")  # type: ignore[attr-defined]
    page.screenshot(path=str(screenshots / "no-engine-warning.png"), full_page=True)  # type: ignore[attr-defined]

    engine_row("engine-c3", heartbeat_age=2, dispatched_count=812, recovered_run_count=4)
    page.goto(f"{base}/admin/django_taskiq_beat/schedulerengine/")  # type: ignore[attr-defined]
    listed = page.inner_text("#result_list")  # type: ignore[attr-defined]
    for text in ("engine-c3", "alive", "engine-b7", "dead", "engine-a1", "stopped", "5120"):
        assert text in listed, text
    page.screenshot(path=str(screenshots / "engines.png"), full_page=True)  # type: ignore[attr-defined]
    page.goto(f"{base}/admin/django_taskiq_beat/schedulerjob/")  # type: ignore[attr-defined]
    assert page.query_selector("ul.messagelist") is None  # type: ignore[attr-defined]  # an engine is alive: no warning


def test_a_declared_job_is_read_only_says_where_it_is_declared_and_can_be_paused(
    live_server: object, page: object, screenshots: Path
) -> None:
    from django.test import override_settings

    from django_taskiq_beat.sync import sync_declared

    schedule = {
        "nightly-report": {
            "task": "demo.greet",
            "cron": "0 6 * * mon-fri",
            "args": ["team"],
            "labels": {"queue": "reports"},
            "name": "Nightly report",
        }
    }
    with override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": schedule}):
        sync_declared(get_scheduler_app())
    base = str(live_server)
    log_in(page, base, "/admin/django_taskiq_beat/schedulerjob/?source__exact=settings")
    assert "Nightly report\ndemo.greet · settings" in page.inner_text("#result_list")  # type: ignore[attr-defined]
    page.click("text=Nightly report")  # type: ignore[attr-defined]
    assert "declared in code, in TASKIQ_BEAT['SCHEDULE']['nightly-report']" in messages_of(page)
    assert page.query_selector("input[name=_save]") is None  # type: ignore[attr-defined]
    assert page.query_selector("#id_cron_expression") is None  # type: ignore[attr-defined]
    assert '"queue": "reports"' in page.inner_text("div.field-task_labels")  # type: ignore[attr-defined]
    page.screenshot(path=str(screenshots / "declared-job.png"), full_page=True)  # type: ignore[attr-defined]

    page.goto(f"{base}/admin/django_taskiq_beat/schedulerjob/")  # type: ignore[attr-defined]
    page.check("input[name=_selected_action]")  # type: ignore[attr-defined]
    page.select_option("select[name=action]", "pause_jobs")  # type: ignore[attr-defined]
    page.click("button[name=index]")  # type: ignore[attr-defined]
    assert "Paused 1 job" in messages_of(page)
    assert SchedulerJob.objects.get(pk="settings:nightly-report").state == "paused"


def test_a_policy_set_in_the_form_reads_in_words_and_a_held_slot_shows_as_waiting(
    live_server: object, page: object, screenshots: Path
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from django_taskiq_beat.claims import WAITING_CLAIMANT

    base = str(live_server)
    log_in(page, base, "/admin/django_taskiq_beat/schedulerjob/add/")
    page.fill("#id_name", "Hourly export")  # type: ignore[attr-defined]
    page.select_option("#id_task", "demo.sleep")  # type: ignore[attr-defined]
    page.fill("#id_args", "[5400]")  # type: ignore[attr-defined]
    page.fill("#id_interval_every", "1")  # type: ignore[attr-defined]
    page.select_option("#id_interval_unit", "hours")  # type: ignore[attr-defined]
    page.select_option("#id_overlap", "buffer_one")  # type: ignore[attr-defined]
    page.fill("#id_misfire_grace_seconds", "300")  # type: ignore[attr-defined]
    page.fill("#id_jitter_seconds", "30")  # type: ignore[attr-defined]
    page.fill("#id_max_runs", "10")  # type: ignore[attr-defined]
    page.click("input[name=_save]")  # type: ignore[attr-defined]
    assert "was added successfully" in messages_of(page)
    words = "wait if still running (one slot waits); missed after 300 s; jitter 30 s; 10 of 10 runs left"
    assert words in page.inner_text("#result_list")  # type: ignore[attr-defined]

    job = SchedulerJob.objects.get(name="Hourly export")
    going = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    SchedulerRun.objects.create(
        job=job,
        scheduled_for=going,
        status=RunStatus.DISPATCHED,
        dispatched_at=going,
        finished_at=going,
        outcome="running",
        started_at=going,
    )
    reason = "held until the previous run (an hour ago, running) finishes"
    SchedulerRun.objects.create(
        job=job,
        scheduled_for=going + timedelta(hours=1),
        status=RunStatus.PENDING,
        claimed_by=WAITING_CLAIMANT,
        reason=reason,
    )
    page.click("text=Hourly export")  # type: ignore[attr-defined]
    assert words in page.inner_text("div.field-policy")  # type: ignore[attr-defined]
    runs = page.inner_text("div.field-recent_runs_table")  # type: ignore[attr-defined]
    assert "waiting" in runs and reason in runs
    page.screenshot(path=str(screenshots / "job-policy.png"), full_page=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (1920, 1080)])
def test_the_dashboard_draws_its_charts_from_the_runs(
    live_server: object, page: object, screenshots: Path, width: int, height: int
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from tests.test_admin_dashboard import schedule, sent
    from tests.test_cli import engine_row

    engine_row("engine-a1", heartbeat_age=2, dispatched_count=4210)
    report = schedule("reports.hourly", every=900, name="Hourly report")
    export = schedule("exports.nightly", every=1200, name="Nightly export")
    for hours_ago in range(23):
        for minute in range(0, 60, 15):
            sent(report, timedelta(hours=hours_ago, minutes=minute + 1), lag=0.004 if minute else 0.3)
        if hours_ago % 4 == 0:
            sent(export, timedelta(hours=hours_ago, minutes=2), outcome="failed", error="ValueError: bad row 17")
        if hours_ago % 6 == 1:
            sent(export, timedelta(hours=hours_ago, minutes=3), status=RunStatus.SKIPPED, outcome="")
    page.set_viewport_size({"width": width, "height": height})  # type: ignore[attr-defined]
    log_in(page, str(live_server), "/admin/django_taskiq_beat/schedulerdashboard/")

    segments = page.eval_on_selector_all(  # type: ignore[attr-defined]
        "rect.tb-bar-segment", "els => els.map(e => [e.dataset.category, +e.dataset.count, e.getBBox().height])"
    )
    counted = {category: sum(count for kind, count, _ in segments if kind == category) for category, _, _ in segments}
    assert counted == {
        "succeeded": SchedulerRun.objects.filter(outcome="succeeded").count(),
        "failed": SchedulerRun.objects.filter(outcome="failed").count(),
        "skipped": SchedulerRun.objects.filter(status="skipped").count(),
    }
    assert all(drawn > 0 for _, _, drawn in segments)
    points = page.eval_on_selector_all(  # type: ignore[attr-defined]
        "circle.tb-lag-point", "els => els.map(e => [e.dataset.percentile, e.dataset.seconds])"
    )
    assert ["p95", "0.5"] in points and ["p50", "0.01"] in points, points  # one send in four 0.3 s late
    rows = page.eval_on_selector_all(  # type: ignore[attr-defined]
        "g.tb-timeline-row", "els => els.map(e => [e.dataset.job, e.querySelectorAll('rect').length])"
    )
    assert sorted(rows) == [["exports.nightly", 3], ["reports.hourly", 4]], rows
    assert "ValueError: bad row 17" in page.inner_text("#tb-failing")  # type: ignore[attr-defined]
    assert "1 alive" in page.inner_text("#tb-engines")  # type: ignore[attr-defined]
    assert page.evaluate(  # type: ignore[attr-defined]
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    ), "the dashboard scrolls sideways"
    page.screenshot(path=str(screenshots / f"dashboard-{width}.png"), full_page=True)  # type: ignore[attr-defined]
    assert timezone.now()  # the rows above were written relative to now


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (1920, 1080)])
def test_the_job_and_run_lists_fit_the_window(
    live_server: object, page: object, screenshots: Path, width: int, height: int
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from django_taskiq_beat import CrontabTrigger, SchedulePolicy
    from tests.test_admin_dashboard import sent

    app = get_scheduler_app()
    cron = PeriodicSchedule(crontab=CrontabTrigger.from_expression("*/15 8-18 * * mon-fri", timezone="Europe/Berlin"))
    named = app.single(task="demo.greet", args=["team"]).schedule(
        cron,
        name="Quarter-hourly sales figures for the regional dashboards",
        job_id="reports.sales-quarter-hourly",
        policy=SchedulePolicy(overlap="skip", misfire_grace_seconds=300, jitter_seconds=30, max_runs=1000),
    )
    unnamed = app.single(task="demo.heartbeat").schedule(PeriodicSchedule(interval=IntervalTrigger(seconds=5)))
    for minutes in range(1, 25):
        sent(
            named,
            timedelta(minutes=15 * minutes),
            outcome="failed" if minutes % 5 == 0 else "succeeded",
            error="ValueError: the regional feed returned an empty body after 3 retries" if minutes % 5 == 0 else None,
        )
        sent(unnamed, timedelta(seconds=5 * minutes))
    page.set_viewport_size({"width": width, "height": height})  # type: ignore[attr-defined]
    log_in(page, str(live_server), "/admin/django_taskiq_beat/schedulerjob/")
    page.wait_for_selector("#result_list")  # type: ignore[attr-defined]
    # Neither the page nor the box the admin scrolls a wide table in (the table's parent).
    fits = (
        "[document.documentElement, document.querySelector('#result_list').parentElement]"
        ".every(box => box.scrollWidth <= box.clientWidth)"
    )
    assert page.evaluate(fits), "the job list scrolls sideways"  # type: ignore[attr-defined]
    listed = page.inner_text("#result_list")  # type: ignore[attr-defined]
    assert f"demo.heartbeat · {unnamed.pk[:8]}" in listed  # an unnamed job: its task and a short id
    if width == 1280:
        page.screenshot(path=str(screenshots / "job-list.png"), full_page=True)  # type: ignore[attr-defined]
    page.goto(f"{live_server}/admin/django_taskiq_beat/schedulerrun/")  # type: ignore[attr-defined]
    assert page.evaluate(fits), "the run list scrolls sideways"  # type: ignore[attr-defined]
    assert timezone.now()


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (1920, 1080)])
def test_the_form_puts_a_cron_error_on_the_expression_and_keeps_a_one_offs_zone(
    live_server: object, page: object, width: int, height: int
) -> None:
    base = str(live_server)
    page.set_viewport_size({"width": width, "height": height})  # type: ignore[attr-defined]
    log_in(page, base, "/admin/django_taskiq_beat/schedulerjob/add/")
    page.fill("#id_name", "Launch mail")  # type: ignore[attr-defined]
    page.select_option("#id_task", "demo.heartbeat")  # type: ignore[attr-defined]
    page.select_option("#id_schedule_type", "crontab")  # type: ignore[attr-defined]
    page.fill("#id_cron_expression", "*/5 * * 13 *")  # type: ignore[attr-defined]
    page.click("input[name=_save]")  # type: ignore[attr-defined]
    page.wait_for_selector("ul.errorlist")  # type: ignore[attr-defined]
    assert "month_of_year" in page.inner_text(".field-cron_expression ul.errorlist")  # type: ignore[attr-defined]
    assert page.locator(".field-minute ul.errorlist").count() == 0  # type: ignore[attr-defined]
    assert page.locator(".field-month_of_year ul.errorlist").count() == 0  # type: ignore[attr-defined]
    assert not SchedulerJob.objects.exists()

    page.select_option("#id_schedule_type", "one_off")  # type: ignore[attr-defined]
    page.fill("#id_run_at", "2030-01-02T03:04:05")  # type: ignore[attr-defined]
    page.select_option("#id_timezone", "Asia/Tokyo")  # type: ignore[attr-defined]
    page.click("input[name=_save]")  # type: ignore[attr-defined]
    assert "was added successfully" in messages_of(page)
    assert "once at 2030-01-02 03:04:05 JST (Asia/Tokyo)" in page.inner_text("#result_list")  # type: ignore[attr-defined]
    with page.expect_navigation():  # type: ignore[attr-defined]  # read the form once it has loaded, not mid-parse
        page.click("#result_list >> text=Launch mail")  # type: ignore[attr-defined]
    assert page.input_value("#id_timezone") == "Asia/Tokyo"  # type: ignore[attr-defined]
    assert page.input_value("#id_run_at") == "2030-01-02T03:04:05"  # type: ignore[attr-defined]
    assert SchedulerJob.objects.get().next_run_at.isoformat() == "2030-01-01T18:04:05+00:00"


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (1920, 1080)])
def test_the_job_page_shows_each_runs_outcome_duration_and_error(
    live_server: object, page: object, width: int, height: int
) -> None:
    from datetime import timedelta

    from tests.test_admin_dashboard import schedule, sent

    job = schedule("reports.daily", every=600, name="Daily report")
    sent(job, timedelta(minutes=30), outcome="succeeded")
    sent(job, timedelta(minutes=20), outcome="failed", error="ValueError: bad row 17")
    sent(job, timedelta(minutes=10), outcome="")  # sent, nothing reported yet
    succeeded = SchedulerRun.objects.get(outcome="succeeded")
    SchedulerRun.objects.filter(pk=succeeded.pk).update(
        started_at=succeeded.finished_at, completed_at=succeeded.finished_at + timedelta(seconds=1.25)
    )
    page.set_viewport_size({"width": width, "height": height})  # type: ignore[attr-defined]
    log_in(page, str(live_server), f"/admin/django_taskiq_beat/schedulerjob/{job.pk}/change/")
    table = "div.field-recent_runs_table table"
    page.wait_for_selector(table)  # type: ignore[attr-defined]
    headers = page.eval_on_selector_all(f"{table} th", "els => els.map(e => e.innerText)")  # type: ignore[attr-defined]
    rows = page.eval_on_selector_all(  # type: ignore[attr-defined]
        f"{table} tr:has(td)", "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))"
    )
    column = {name: headers.index(name) for name in ("outcome", "duration", "error or reason")}
    assert [row[column["outcome"]] for row in rows] == ["dispatched", "failed", "succeeded"], rows  # newest first
    assert rows[1][column["error or reason"]] == "ValueError: bad row 17"
    assert rows[2][column["duration"]] == "1250 ms", rows
    assert page.evaluate(  # type: ignore[attr-defined]
        f"document.querySelector('{table}').getBoundingClientRect().right <= document.documentElement.clientWidth"
    ), "the runs table runs off the window"
