"""The admin screens through Django's test client: columns, filters, actions, permissions."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.forms import Select
from django.test import Client
from django.test.html import parse_html
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_taskiq_beat import (
    ChainStep,
    CrontabTrigger,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulerApp,
    get_scheduler_app,
)
from django_taskiq_beat.forms import BackfillForm, SchedulerJobForm, ZoneSelect
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from django_taskiq_beat.triggers import resolve_timezone

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:django_taskiq_beat_schedulerjob_changelist")
RUNS = reverse("admin:django_taskiq_beat_schedulerrun_changelist")
EVERY_FIVE = PeriodicSchedule(interval=IntervalTrigger(minutes=5))


@pytest.fixture
def app() -> SchedulerApp:
    return get_scheduler_app()  # the admin's own: TASKIQ_BEAT["BROKER"] of the test project


def job_change_url(job: SchedulerJob) -> str:
    return reverse("admin:django_taskiq_beat_schedulerjob_change", args=[quote(job.pk)])


def add_runs(job: SchedulerJob, *statuses: str) -> None:
    now = timezone.now()
    for minutes, status in enumerate(statuses):
        slot = now - timedelta(minutes=len(statuses) - minutes)
        SchedulerRun.objects.create(
            job=job,
            scheduled_for=slot,
            status=status,
            dispatched_at=slot + timedelta(milliseconds=40) if status != RunStatus.PENDING else None,
            finished_at=slot + timedelta(milliseconds=50),
            error="boom" if status == RunStatus.FAILED else None,
        )


def post_action(client: Client, action: str, *jobs: SchedulerJob) -> Any:
    return client.post(JOBS, {"action": action, "_selected_action": [job.pk for job in jobs]}, follow=True)


# -- the list ---------------------------------------------------------------------------------------


def test_job_list_shows_every_column(admin_client: Client, app: SchedulerApp) -> None:
    interval = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="Heartbeat")
    add_runs(interval, RunStatus.DISPATCHED, RunStatus.FAILED, RunStatus.DISPATCHED)
    SchedulerJob.objects.filter(pk=interval.pk).update(dispatch_count=2)
    app.single(task="demo.greet", args=["x"]).schedule(
        PeriodicSchedule(crontab=CrontabTrigger.from_expression("*/5 * * * *", "Europe/Berlin")), name="Greeting"
    )
    app.single(task="demo.heartbeat").schedule(OneOffSchedule(run_at=timezone.now() + timedelta(hours=2)), name="Once")
    app.chain(steps=[ChainStep(task="demo.heartbeat"), ChainStep(task="demo.greet", args=["y"])]).schedule(
        EVERY_FIVE, name="Chain"
    )
    page = admin_client.get(JOBS).content.decode()
    for text in (
        "Heartbeat",
        "demo.heartbeat",
        "every 5 minutes",
        "cron 0 */5 * * * * (Europe/Berlin)",
        "once at ",
        "chain of 2 steps, every 5 minutes",
        "active",
        "in 4 min",
        ">dispatched</small>",
        "Last 20 runs",
    ):
        assert text in page, text
    assert page.count('title="failed ') == 1 and page.count('title="dispatched ') == 2  # the run strip
    assert "<small>2 sent</small>" in page  # the sends so far, under the strip


def test_states_and_the_state_filter(
    admin_client: Client, app: SchedulerApp, django_capture_on_commit_callbacks: Any
) -> None:
    active = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="job-active")
    paused = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="job-paused", is_enabled=False)
    with django_capture_on_commit_callbacks(execute=True):
        finished = app.single(task="demo.heartbeat").schedule(name="job-finished")  # immediate: sent, finished
    failing = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="job-failing")
    SchedulerJob.objects.filter(pk=failing.pk).update(dispatch_failures=2, last_error="boom")
    expected = {"active": active, "paused": paused, "finished": finished, "failing": failing}
    for state, job in expected.items():
        page = admin_client.get(JOBS, {"state": state}).content.decode()
        shown = {name for name in ("job-active", "job-paused", "job-finished", "job-failing") if name in page}
        assert shown == {job.name}, state


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ({"kind": "chain"}, {"chain-job"}),
        ({"kind": "single"}, {"cron-job", "greet-job"}),
        ({"strategy": "crontab"}, {"cron-job"}),
        ({"task_name": "demo.greet"}, {"greet-job"}),
        ({"q": "greet"}, {"greet-job"}),
        ({"q": "cron-j"}, {"cron-job"}),
    ],
)
def test_filters_and_search(admin_client: Client, app: SchedulerApp, query: dict[str, str], shown: set[str]) -> None:
    app.single(task="demo.heartbeat").schedule(PeriodicSchedule(crontab=CrontabTrigger(minute="0")), name="cron-job")
    app.single(task="demo.greet", args=["z"]).schedule(EVERY_FIVE, name="greet-job")
    app.chain(steps=[ChainStep(task="demo.heartbeat")]).schedule(EVERY_FIVE, name="chain-job")
    page = admin_client.get(JOBS, query).content.decode()
    assert {name for name in ("cron-job", "greet-job", "chain-job") if name in page} == shown


def test_list_is_ordered_by_next_run(admin_client: Client, app: SchedulerApp) -> None:
    later = app.single(task="demo.heartbeat").schedule(
        OneOffSchedule(run_at=timezone.now() + timedelta(hours=3)), name="zz-later"
    )
    app.single(task="demo.heartbeat").schedule(
        OneOffSchedule(run_at=timezone.now() + timedelta(hours=1)), name="zz-sooner"
    )
    app.pause(later.id)  # no next run: last
    page = admin_client.get(JOBS).content.decode()
    assert page.index("zz-sooner") < page.index("zz-later")


def test_list_query_count_does_not_grow_with_the_page(admin_client: Client, app: SchedulerApp) -> None:
    def queries_for(job_count: int) -> int:
        SchedulerJob.objects.all().delete()
        for number in range(job_count):
            job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name=f"job {number}")
            add_runs(job, RunStatus.DISPATCHED, RunStatus.FAILED)
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(JOBS).status_code == 200
        return len(captured)

    assert queries_for(3) == queries_for(30)


# -- actions, through SchedulerApp ------------------------------------------------------------------


def test_pause_resume_and_run_now_actions(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE)
    response = post_action(admin_client, "pause_jobs", job)
    assert "Paused 1 job." in response.content.decode()
    assert SchedulerJob.objects.get(pk=job.pk).state == "paused"
    response = post_action(admin_client, "resume_jobs", job)
    assert "Resumed 1 job." in response.content.decode()
    assert SchedulerJob.objects.get(pk=job.pk).state == "active"
    response = post_action(admin_client, "run_jobs_now", job)
    assert "Marked to run now: 1 job." in response.content.decode()
    assert SchedulerJob.objects.get(pk=job.pk).next_run_at <= timezone.now()


def test_delete_action_goes_through_the_app_and_removes_runs(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE)
    add_runs(job, RunStatus.DISPATCHED)
    response = admin_client.post(
        JOBS, {"action": "delete_selected", "_selected_action": [job.pk], "post": "yes"}, follow=True
    )
    assert "Successfully deleted 1" in response.content.decode()
    assert not SchedulerJob.objects.exists() and not SchedulerRun.objects.exists()


def test_no_action_runs_on_get(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE)
    admin_client.get(JOBS, {"action": "pause_jobs", "_selected_action": job.pk})
    assert SchedulerJob.objects.get(pk=job.pk).is_enabled


# -- the job page ---------------------------------------------------------------------------------------


def test_job_page_shows_next_fire_times_chain_steps_and_recent_runs(admin_client: Client, app: SchedulerApp) -> None:
    job = app.chain(steps=[ChainStep(task="demo.heartbeat"), ChainStep(task="demo.greet", args=["<b>"])]).schedule(
        EVERY_FIVE, name="Reports"
    )
    add_runs(job, RunStatus.FAILED, RunStatus.DISPATCHED)
    page = admin_client.get(job_change_url(job)).content.decode()
    assert "Next five fire times" in page
    first = job.next_run_at
    for step in range(5):
        assert timezone.localtime(first + timedelta(minutes=5 * step)).strftime("%Y-%m-%d %H:%M:%S") in page
    assert "demo.greet" in page and "[&#x27;&lt;b&gt;&#x27;]" in page  # steps, escaped
    assert page.count("All runs of this job") == 1 and "40 ms" in page and "boom" in page
    assert 'name="task_name"' not in page and 'name="schedule_type"' not in page  # a chain is shown read-only


def test_runs_cannot_be_added_by_hand(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:django_taskiq_beat_schedulerrun_add")).status_code == 403


# -- runs ---------------------------------------------------------------------------------------------------


def test_run_history_list_filters_and_chain_progress(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="History")
    add_runs(job, RunStatus.DISPATCHED, RunStatus.FAILED)
    page = admin_client.get(RUNS).content.decode()
    assert "History" in page and "40 ms" in page and "boom" in page
    first = SchedulerRun.objects.earliest("scheduled_for")
    assert timezone.localtime(first.scheduled_for).strftime("%H:%M:%S") in page  # to the second
    failed_only = admin_client.get(RUNS, {"status__exact": "failed"}).content.decode()
    assert failed_only.count('<strong style="color: #c62828">failed</strong>') == 1
    assert ">dispatched</strong>" not in failed_only
    run = SchedulerRun.objects.filter(status=RunStatus.DISPATCHED).get()
    run.progress = {
        "status": "running",
        "chain_attempt": 1,
        "steps": [
            {"task_name": "demo.heartbeat", "status": "succeeded", "attempts": 1, "error": None},
            {"task_name": "demo.greet", "status": "running", "attempts": 2, "error": "<i>flaky</i>"},
        ],
    }
    run.save()
    detail = admin_client.get(reverse("admin:django_taskiq_beat_schedulerrun_change", args=[run.pk])).content.decode()
    assert "chain attempt 1" in detail and "&lt;i&gt;flaky&lt;/i&gt;" in detail
    assert (
        admin_client.post(
            reverse("admin:django_taskiq_beat_schedulerrun_change", args=[run.pk]), {"status": "failed"}
        ).status_code
        == 403
    )


def test_runs_of_one_job(admin_client: Client, app: SchedulerApp) -> None:
    mine = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="mine")
    other = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="other")
    add_runs(mine, RunStatus.DISPATCHED)
    add_runs(other, RunStatus.DISPATCHED)
    page = admin_client.get(RUNS, {"job__id__exact": mine.pk}).content.decode()
    assert ">mine</a>" in page and ">other</a>" not in page


# -- permissions and escaping ------------------------------------------------------------------------------


def staff_client(*codenames: str) -> Client:
    user = User.objects.create_user("operator", password="secret", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_staff_without_permissions_sees_nothing(app: SchedulerApp) -> None:
    client = staff_client()
    assert client.get(JOBS).status_code == 403
    assert client.get(RUNS).status_code == 403


def test_view_permission_reads_but_cannot_act(app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="watched")
    client = staff_client("view_schedulerjob", "view_schedulerrun")
    page = client.get(JOBS).content.decode()
    assert "watched" in page and "pause_jobs" not in page
    post_action(client, "pause_jobs", job)
    assert SchedulerJob.objects.get(pk=job.pk).is_enabled
    assert client.get(RUNS).status_code == 200


def test_change_permission_allows_the_actions(app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE)
    client = staff_client("view_schedulerjob", "change_schedulerjob")
    post_action(client, "pause_jobs", job)
    assert not SchedulerJob.objects.get(pk=job.pk).is_enabled


def test_names_args_and_errors_are_escaped(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.greet", args=["<img src=x onerror=alert(1)>"]).schedule(
        EVERY_FIVE, name="<script>alert(1)</script>"
    )
    SchedulerJob.objects.filter(pk=job.pk).update(last_error="<script>bad()</script>")
    add_runs(job, RunStatus.FAILED)
    SchedulerRun.objects.filter(job=job).update(error="<script>run()</script>")
    for url in (JOBS, job_change_url(job), RUNS):
        page = admin_client.get(url).content.decode()
        assert "<script>alert(1)</script>" not in page and "<script>bad()</script>" not in page
        assert "<script>run()</script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in admin_client.get(JOBS).content.decode()


# -- the add and edit form, saving through SchedulerApp ------------------------------------------------

ADD = reverse("admin:django_taskiq_beat_schedulerjob_add")


def form_data(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "From the form",
        "description": "",
        "job_id": "",
        "task": "demo.greet",
        "task_name": "",
        "args": '["Django"]',
        "kwargs": '{"punctuation": "?"}',
        "is_enabled": "on",
        "schedule_type": "interval",
        "interval_every": "5",
        "interval_unit": "minutes",
        "cron_expression": "",
        "second": "0",
        "minute": "*",
        "hour": "*",
        "day_of_month": "*",
        "month_of_year": "*",
        "day_of_week": "*",
        "timezone": "Europe/Berlin",
        "run_at": "",
        "start_at": "",
        "end_at": "",
    }
    return {**data, **overrides}


def errors_of(response: Any) -> dict[str, list[str]]:
    form = response.context["adminform"].form
    return {field: [str(message) for message in messages] for field, messages in form.errors.items()}


def test_add_form_offers_the_brokers_tasks_and_timezones(admin_client: Client) -> None:
    page = admin_client.get(ADD).content.decode()
    assert '<option value="demo.greet">demo.greet</option>' in page
    assert "taskiq_beat.chain_orchestrator" not in page
    assert '<option value="Asia/Tokyo">Asia/Tokyo</option>' in page
    assert '<option value="Europe/Berlin" selected>Europe/Berlin</option>' in page  # DEFAULT_TIMEZONE


@pytest.mark.parametrize(
    ("overrides", "kind", "strategy", "check"),
    [
        ({}, "periodic", "interval", lambda job: job.trigger_payload["interval"]["minutes"] == 5),
        (
            {"schedule_type": "crontab", "cron_expression": "30 2 * * mon-fri"},
            "periodic",
            "crontab",
            lambda job: (
                job.trigger_payload["crontab"]
                == {
                    "second": "0",
                    "minute": "30",
                    "hour": "2",
                    "day_of_month": "*",
                    "month_of_year": "*",
                    "day_of_week": "mon-fri",
                    "timezone": "Europe/Berlin",
                }
            ),
        ),
        (
            {"schedule_type": "crontab", "minute": "*/15", "hour": "8-18", "timezone": "Asia/Tokyo"},
            "periodic",
            "crontab",
            lambda job: (
                job.trigger_payload["crontab"]["minute"] == "*/15"
                and job.trigger_payload["crontab"]["timezone"] == "Asia/Tokyo"
            ),
        ),
        (
            {"schedule_type": "one_off", "run_at": "2030-01-02T03:04:05"},
            "one_off",
            "one_off",
            lambda job: (
                job.trigger_payload
                == {
                    "run_at": "2030-01-02T02:04:05+00:00",  # Berlin is UTC+1 in winter
                    "timezone": "Europe/Berlin",
                }
            ),
        ),
        (
            {"start_at": "2030-06-01T08:00:00", "end_at": "2030-06-30T18:00:00"},
            "periodic",
            "interval",
            lambda job: (
                job.trigger_payload["start_at"] == "2030-06-01T06:00:00+00:00"
                and job.next_run_at.isoformat() == "2030-06-01T06:00:00+00:00"
            ),
        ),
        (
            {"task": "", "task_name": "demo.add", "args": "[1, 2]", "kwargs": "{}"},
            "periodic",
            "interval",
            lambda job: job.task_name == "demo.add" and job.task_args == [1, 2],
        ),
    ],
    ids=["interval", "cron-expression", "cron-fields", "one-off", "window", "free-text-task"],
)
def test_add_form_creates_each_kind_of_job(
    admin_client: Client, overrides: dict[str, str], kind: str, strategy: str, check: Any
) -> None:
    response = admin_client.post(ADD, form_data(**overrides))
    assert response.status_code == 302, errors_of(response)
    job = SchedulerJob.objects.get()
    assert (job.kind, job.strategy, job.name, job.is_enabled) == (kind, strategy, "From the form", True)
    assert check(job)


@pytest.mark.parametrize(
    ("run_at", "zone", "stored"),
    [
        ("2030-03-31T02:30:00", "UTC", "2030-03-31T02:30:00+00:00"),  # Berlin, the site's zone, skips 02:30
        ("2030-03-31T02:30:00+05:00", "Europe/Berlin", "2030-03-30T21:30:00+00:00"),  # an offset typed with it
        ("2030-03-10T02:30:00", "America/Adak", None),  # Adak skips it
        ("2030-11-03T01:30:00", "America/Adak", None),  # and repeats this one
    ],
    ids=["gap-of-the-site-zone", "typed-offset", "gap-of-the-chosen-zone", "repeated-in-the-chosen-zone"],
)
def test_a_time_is_read_in_the_chosen_zone_and_refused_where_a_dst_change_makes_it_no_single_instant(
    admin_client: Client, run_at: str, zone: str, stored: str | None
) -> None:
    response = admin_client.post(ADD, form_data(schedule_type="one_off", run_at=run_at, timezone=zone))
    if stored is not None:
        assert response.status_code == 302, errors_of(response)
        assert SchedulerJob.objects.get().trigger_payload["run_at"] == stored
    else:
        (error,) = errors_of(response)["run_at"]
        assert f"skipped or repeated in {zone}" in error and f"(run_at={run_at.replace('T', ' ')})" in error
        assert not SchedulerJob.objects.exists()


def test_add_form_uses_the_given_job_id_and_the_enabled_flag(admin_client: Client) -> None:
    response = admin_client.post(ADD, form_data(job_id="reports.nightly", is_enabled=""))
    assert response.status_code == 302
    job = SchedulerJob.objects.get(pk="reports.nightly")
    assert (job.is_enabled, job.next_run_at) == (False, None)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"task": "", "task_name": "demo.nope"}, "task_name", "not registered"),
        ({"task": "", "task_name": ""}, "task_name", "must not be empty"),
        ({"args": "[1, 2"}, "args", "Enter a valid JSON"),
        ({"args": '{"a": 1}'}, "args", "JSON array"),
        ({"kwargs": "[1]"}, "kwargs", "JSON object"),
        ({"interval_every": "0"}, "interval_every", "positive"),
        ({"interval_every": ""}, "interval_every", "how often"),
        ({"schedule_type": "crontab", "minute": "61"}, "minute", "Invalid cron field"),
        ({"schedule_type": "crontab", "cron_expression": "* * *"}, "cron_expression", "5 fields"),
        ({"schedule_type": "crontab", "cron_expression": "0 0 30 2 *"}, "cron_expression", "never matches"),
        ({"schedule_type": "crontab", "cron_expression": "61 * * * *"}, "cron_expression", "Invalid cron field"),
        ({"schedule_type": "crontab", "cron_expression": "0 25 * * *"}, "cron_expression", "Invalid cron field"),
        ({"schedule_type": "one_off"}, "run_at", "needs a time"),
        ({"start_at": "2030-06-30T00:00:00", "end_at": "2030-06-01T00:00:00"}, "end_at", "later than start_at"),
        ({"timezone": "Mars/Base"}, "timezone", "Select a valid choice"),
        ({"job_id": "x" * 256}, "job_id", "at most 255"),
    ],
)
def test_add_form_rejects_bad_input_with_a_clear_error_and_writes_nothing(
    admin_client: Client, overrides: dict[str, str], field: str, message: str
) -> None:
    response = admin_client.post(ADD, form_data(**overrides))
    assert response.status_code == 200
    errors = errors_of(response)
    assert field in errors and any(message in text for text in errors[field]), errors
    assert not SchedulerJob.objects.exists()


def test_edit_form_shows_the_job_and_saves_through_upsert(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.greet", args=["A"]).schedule(
        PeriodicSchedule(crontab=CrontabTrigger.from_expression("0 9 * * *", "Asia/Tokyo")), name="Morning"
    )
    page = admin_client.get(job_change_url(job)).content.decode()
    assert 'value="Morning"' in page and '<option value="Asia/Tokyo" selected>' in page
    assert 'name="hour" value="9"' in page and "Next five fire times" in page
    response = admin_client.post(
        job_change_url(job),
        form_data(
            name="Morning, later",
            schedule_type="crontab",
            minute="30",
            hour="10",
            timezone="Asia/Tokyo",
            task="demo.greet",
            args='["B"]',
            kwargs="{}",
        ),
    )
    assert response.status_code == 302, errors_of(response)
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.name, stored.task_args, stored.trigger_payload["crontab"]["hour"]) == ("Morning, later", ["B"], "10")
    assert timezone.localtime(stored.next_run_at, timezone.get_fixed_timezone(9 * 60)).strftime("%H:%M") == "10:30"
    assert SchedulerJob.objects.count() == 1


def test_a_one_off_reopens_in_the_zone_it_was_entered_in(admin_client: Client, app: SchedulerApp) -> None:
    response = admin_client.post(
        ADD, form_data(schedule_type="one_off", run_at="2030-01-02T03:04:05", timezone="Asia/Tokyo")
    )
    assert response.status_code == 302, errors_of(response)
    job = SchedulerJob.objects.get()
    assert job.next_run_at.isoformat() == "2030-01-01T18:04:05+00:00"  # Tokyo is UTC+9, not the default Berlin
    page = admin_client.get(job_change_url(job)).content.decode()
    assert '<option value="Asia/Tokyo" selected>' in page
    assert 'name="run_at" value="2030-01-02T03:04:05"' in page
    assert "once at 2030-01-02 03:04:05 JST (Asia/Tokyo)" in admin_client.get(JOBS).content.decode()
    unchanged = admin_client.post(
        job_change_url(job),
        form_data(
            schedule_type="one_off",
            run_at="2030-01-02T03:04:05",
            timezone="Asia/Tokyo",
        ),
    )
    assert unchanged.status_code == 302, errors_of(unchanged)
    assert SchedulerJob.objects.get().next_run_at == job.next_run_at


@pytest.mark.parametrize("utc_hour", [10, 11], ids=["first-of-the-repeated-hour", "second-of-the-repeated-hour"])
def test_a_job_whose_time_lies_in_an_hour_its_zone_repeats_is_saved_with_that_time_unchanged(
    admin_client: Client, app: SchedulerApp, utc_hour: int
) -> None:
    """Adak repeats 01:00-02:00 on 2030-11-03 (10:00-12:00 UTC): the form shows 01:30 for both instants, a time
    typed so is refused, but the job's own time, left as it was, is kept as it was."""
    run_at = datetime(2030, 11, 3, utc_hour, 30, tzinfo=UTC)
    job = app.single(task="demo.heartbeat").schedule(OneOffSchedule(run_at=run_at, timezone="America/Adak"))
    page = admin_client.get(job_change_url(job)).content.decode()
    assert 'name="run_at" value="2030-11-03T01:30:00"' in page
    edited = form_data(name="Renamed", task="demo.heartbeat", args="[]", kwargs="{}", schedule_type="one_off")
    response = admin_client.post(
        job_change_url(job), {**edited, "run_at": "2030-11-03T01:30:00", "timezone": "America/Adak"}
    )
    assert response.status_code == 302, errors_of(response)
    assert SchedulerJob.objects.values_list("name", "next_run_at").get() == ("Renamed", run_at)
    retyped = admin_client.post(
        job_change_url(job), {**edited, "run_at": "2030-11-03T01:30:01", "timezone": "America/Adak"}
    )
    assert "skipped or repeated in America/Adak" in errors_of(retyped)["run_at"][0]


def test_a_one_off_scheduled_without_a_zone_opens_in_the_default_zone(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(OneOffSchedule(run_at=datetime(2030, 1, 2, 2, 4, 5, tzinfo=UTC)))
    page = admin_client.get(job_change_url(job)).content.decode()
    assert '<option value="Europe/Berlin" selected>' in page  # DEFAULT_TIMEZONE
    assert 'name="run_at" value="2030-01-02T03:04:05"' in page


def test_edit_form_unchecking_enabled_pauses_and_keeps_the_rest(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="Beat")
    response = admin_client.post(
        job_change_url(job),
        form_data(
            name="Beat",
            task="demo.heartbeat",
            args="[]",
            kwargs="{}",
            is_enabled="",
        ),
    )
    assert response.status_code == 302, errors_of(response)
    assert SchedulerJob.objects.get(pk=job.pk).state == "paused"


def test_bad_edit_leaves_the_job_as_it_was(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="Stable")
    response = admin_client.post(job_change_url(job), form_data(name="Broken", interval_every="-1"))
    assert response.status_code == 200
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert (stored.name, stored.trigger_payload, stored.next_run_at) == ("Stable", job.trigger_payload, job.next_run_at)


def test_worker_outcomes_show_in_the_lists(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="Reported")
    add_runs(job, RunStatus.DISPATCHED, RunStatus.DISPATCHED)
    first, second = SchedulerRun.objects.order_by("scheduled_for")
    started = timezone.now() - timedelta(seconds=5)
    SchedulerRun.objects.filter(pk=first.pk).update(
        outcome="failed", started_at=started, completed_at=started + timedelta(milliseconds=1500)
    )
    SchedulerRun.objects.filter(pk=second.pk).update(outcome="running", started_at=started)
    jobs_page = admin_client.get(JOBS).content.decode()
    assert 'title="failed ' in jobs_page and ">running</small>" in jobs_page
    runs_page = admin_client.get(RUNS).content.decode()
    assert "1500 ms" in runs_page and "running since" in runs_page and "stale" not in runs_page
    assert admin_client.get(RUNS, {"outcome__exact": "failed"}).content.decode().count("1500 ms") == 1


def test_a_run_running_longer_than_the_threshold_is_flagged_stale(
    admin_client: Client, app: SchedulerApp, settings: Any
) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="Hung")
    add_runs(job, RunStatus.DISPATCHED)
    SchedulerRun.objects.update(outcome="running", started_at=timezone.now() - timedelta(minutes=10))
    assert "stale" not in admin_client.get(RUNS).content.decode()
    settings.TASKIQ_BEAT = {**settings.TASKIQ_BEAT, "STALE_RUN_SECONDS": 300}
    page = admin_client.get(RUNS).content.decode()
    assert '<strong style="color: #c62828">stale</strong>: running since' in page


def test_the_forms_offer_only_the_zones_a_schedule_takes(admin_client: Client) -> None:
    """Not the host's ``localtime`` or the ``Factory`` placeholder, which ``available_timezones()`` lists."""
    page = admin_client.get(ADD).content.decode()
    for form in (SchedulerJobForm(app=get_scheduler_app()), BackfillForm(default_timezone="UTC")):
        offered = [name for name, _ in form.fields["timezone"].choices]
        assert len(offered) > 400 and all(resolve_timezone(name).key == name for name in offered)
        assert {"localtime", "Factory", "posixrules"}.isdisjoint(offered)
    assert '<option value="Europe/Berlin"' in page and '<option value="localtime"' not in page


@pytest.mark.parametrize("value", ["Europe/Paris", "UTC", "", "Mars/Base", '"><b>'])
def test_the_zone_select_writes_what_djangos_select_writes(value: str) -> None:
    """Its own template writes each option (for speed): the same HTML as Django's Select, the value chosen."""
    zones = [("UTC", "UTC"), ("Europe/Paris", "Europe/Paris"), ('"><b>', "<b>&amp;")]
    attrs = {"id": "id_timezone", "required": True}
    ours = ZoneSelect(choices=zones).render("timezone", value, attrs)
    assert parse_html(ours) == parse_html(Select(choices=zones).render("timezone", value, attrs))
    assert ours.count(" selected") == (value in dict(zones)) and "<b>" not in ours
