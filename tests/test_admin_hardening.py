"""The admin under hostile input and partial permissions: no overwrite, no 500, no half-done action.

Driven through Django's test client with real users and permissions; the suite runs on
SQLite and on PostgreSQL (``make test``), where NUL bytes and some dates are database errors.
"""

import re
import sqlite3
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.options import ModelAdmin
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_taskiq_beat import ChainStep, IntervalTrigger, PeriodicSchedule, SchedulerApp, get_scheduler_app
from django_taskiq_beat.forms import SchedulerJobForm
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from tests.test_admin import ADD, JOBS, RUNS, errors_of, form_data, job_change_url, post_action

pytestmark = pytest.mark.django_db

EVERY_FIVE = PeriodicSchedule(interval=IntervalTrigger(minutes=5))
PERMISSIONS = ("add", "change", "delete", "view")


@pytest.fixture
def app() -> SchedulerApp:
    return get_scheduler_app()


def client_with(*codenames: str) -> Client:
    user = User.objects.create_user(f"user-{'-'.join(codenames) or 'none'}", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def snapshot(job_id: str) -> tuple[Any, ...]:
    return tuple(
        SchedulerJob.objects.filter(pk=job_id)
        .values_list("name", "task_name", "task_args", "trigger_payload", "is_enabled", "next_run_at", "updated_at")
        .get()
    )


# -- 3: adding never changes an existing job ------------------------------------------------------


@pytest.mark.parametrize("who", ["add permission only", "superuser"])
def test_adding_with_a_taken_id_is_a_form_error_and_changes_nothing(
    admin_client: Client, app: SchedulerApp, who: str
) -> None:
    app.single(task="demo.heartbeat").schedule(EVERY_FIVE, job_id="taken", name="Original")
    before = snapshot("taken")
    client = client_with("add_schedulerjob") if who == "add permission only" else admin_client
    response = client.post(ADD, form_data(job_id="taken", name="Hijacked", is_enabled=""))
    assert response.status_code == 200
    assert any("already exists" in message for message in errors_of(response)["job_id"])
    assert snapshot("taken") == before and SchedulerJob.objects.count() == 1


def test_add_permission_alone_creates_new_jobs(app: SchedulerApp) -> None:
    response = client_with("add_schedulerjob").post(ADD, form_data(job_id="fresh"))
    assert response.status_code == 302, errors_of(response)
    assert SchedulerJob.objects.get(pk="fresh").name == "From the form"


def test_the_disabled_id_on_the_edit_page_has_no_hint_about_generating_one(
    admin_client: Client, app: SchedulerApp
) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE)
    assert "Leave empty for a generated id" in admin_client.get(ADD).content.decode()
    assert "Leave empty for a generated id" not in admin_client.get(job_change_url(job)).content.decode()


# -- each single permission, on every screen ------------------------------------------------------


@pytest.mark.parametrize("permission", PERMISSIONS)
def test_each_single_permission_gets_exactly_its_screens(app: SchedulerApp, permission: str) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, job_id="target", name="Target")
    before = snapshot("target")
    client = client_with(f"{permission}_schedulerjob")
    can_read = permission in ("view", "change")
    assert client.get(JOBS).status_code == (200 if can_read else 403)
    assert client.get(job_change_url(job)).status_code == (200 if can_read else 403)
    assert client.get(ADD).status_code == (200 if permission == "add" else 403)
    delete_url = reverse("admin:django_taskiq_beat_schedulerjob_delete", args=[job.pk])
    assert client.get(delete_url).status_code == (200 if permission == "delete" else 403)
    assert client.get(RUNS).status_code == 403  # run history needs its own view permission

    edit = client.post(job_change_url(job), form_data(name="Edited"))
    assert edit.status_code == (302 if permission == "change" else 403)
    pause = post_action(client, "pause_jobs", job)
    assert pause.status_code in (200, 403)
    if permission == "change":
        assert SchedulerJob.objects.get(pk="target").name == "Edited"
        assert not SchedulerJob.objects.get(pk="target").is_enabled
    else:
        assert snapshot("target") == before, f"{permission} permission changed the job"

    deleted = client.post(delete_url, {"post": "yes"})
    assert deleted.status_code == (302 if permission == "delete" else 403)
    assert SchedulerJob.objects.filter(pk="target").exists() == (permission != "delete")


# -- 4: a job whose trigger cannot be read ----------------------------------------------------------


def break_trigger(job: SchedulerJob) -> None:
    SchedulerJob.objects.filter(pk=job.pk).update(trigger_payload={"strategy": "interval", "interval": {"seconds": -5}})


def test_a_job_with_an_unreadable_trigger_opens_says_why_and_can_be_fixed(
    admin_client: Client, app: SchedulerApp
) -> None:
    job = app.single(task="demo.greet", args=["x"]).schedule(EVERY_FIVE, name="Broken")
    break_trigger(job)
    page = admin_client.get(job_change_url(job))
    assert page.status_code == 200
    text = page.content.decode()
    assert "cannot be read" in text and "seconds" in text
    fixed = admin_client.post(job_change_url(job), form_data(name="Broken", args='["x"]', kwargs="{}"))
    assert fixed.status_code == 302, errors_of(fixed)
    assert SchedulerJob.objects.get(pk=job.pk).trigger == EVERY_FIVE


@pytest.mark.parametrize("action", ["resume_jobs", "pause_jobs", "run_jobs_now", "delete_selected"])
def test_actions_do_all_they_can_and_name_the_job_they_could_not_change(
    admin_client: Client, app: SchedulerApp, action: str
) -> None:
    jobs = [
        app.single(task="demo.heartbeat").schedule(EVERY_FIVE, job_id=f"job-{n}", is_enabled=False) for n in range(3)
    ]
    break_trigger(jobs[1])
    if action == "delete_selected":
        response = admin_client.post(
            JOBS, {"action": action, "_selected_action": [job.pk for job in jobs], "post": "yes"}, follow=True
        )
        assert response.status_code == 200 and not SchedulerJob.objects.exists()
        return
    response = post_action(admin_client, action, *jobs)
    assert response.status_code == 200
    states = {job.pk: SchedulerJob.objects.get(pk=job.pk).is_enabled for job in jobs}
    if action == "resume_jobs":
        assert states == {"job-0": True, "job-1": False, "job-2": True}
        messages = [str(message) for message in response.context["messages"]]
        assert any("job-1" in message and "could not be changed" in message for message in messages), messages
        assert any("Resumed 2 jobs" in message for message in messages), messages
    else:  # pausing and running now do not read the trigger: all three are changed
        assert len(set(states.values())) == 1


# -- 5: the delete confirmation summarises the runs -------------------------------------------------


def test_delete_confirmation_counts_the_runs_instead_of_listing_them(admin_client: Client, app: SchedulerApp) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="Busy")
    start = timezone.now() - timedelta(days=30)
    SchedulerRun.objects.bulk_create(
        [
            SchedulerRun(job=job, scheduled_for=start + timedelta(seconds=n), status=RunStatus.DISPATCHED)
            for n in range(30_000)
        ],
        batch_size=2000,
    )
    page = admin_client.get(reverse("admin:django_taskiq_beat_schedulerjob_delete", args=[job.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert len(text) < 50_000, f"the page is {len(text)} characters"
    assert "30000 scheduler runs" in text and "Busy" in text
    bulk = admin_client.post(JOBS, {"action": "delete_selected", "_selected_action": [job.pk]})
    assert len(bulk.content) < 50_000 and "30000 scheduler runs" in bulk.content.decode()
    admin_client.post(reverse("admin:django_taskiq_beat_schedulerjob_delete", args=[job.pk]), {"post": "yes"})
    assert not SchedulerRun.objects.exists()


# -- 6: input the form accepted and the save refused ------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"interval_every": "1e300"}, "interval_every"),
        ({"interval_every": "1e-9"}, "interval_every"),
        ({"interval_every": "100000", "interval_unit": "days"}, "interval_every"),
        ({"schedule_type": "one_off", "run_at": "9999-12-31T23:00:00", "timezone": "America/Adak"}, "run_at"),
        ({"schedule_type": "one_off", "run_at": "0001-01-01T00:00:00", "timezone": "Pacific/Kiritimati"}, "run_at"),
        ({"start_at": "9999-12-31T23:59:59"}, "start_at"),
        ({"args": "[" * 5000 + "]" * 5000}, "args"),
        ({"args": "[" * 200 + "]" * 200}, "args"),
        ({"args": '["\\u0000"]'}, "args"),
        ({"args": '["\\ud800"]'}, "args"),
        ({"kwargs": '{"\\u0000": 1}'}, "kwargs"),
        ({"kwargs": '{"self": 1}'}, "kwargs"),
        ({"kwargs": '{"unknown": 1}'}, "kwargs"),
        ({"schedule_type": "crontab", "cron_expression": "0 " + ",".join(["1"] * 500) + " * * *"}, "cron_expression"),
        ({"schedule_type": "crontab", "minute": ",".join(["1"] * 500)}, "minute"),
        ({"description": "nul\x00byte"}, "description"),
    ],
)
def test_input_the_save_would_refuse_is_a_form_error(
    admin_client: Client, overrides: dict[str, str], field: str
) -> None:
    response = admin_client.post(ADD, form_data(**overrides))
    assert response.status_code == 200
    errors = errors_of(response)
    assert field in errors, errors
    assert all(len(message) < 600 for messages in errors.values() for message in messages)
    assert not SchedulerJob.objects.exists()


def test_a_start_in_year_9999_is_accepted_when_it_fits_the_calendar(admin_client: Client) -> None:
    response = admin_client.post(ADD, form_data(start_at="9999-06-01T00:00:00"))
    assert response.status_code == 302, errors_of(response)
    job = SchedulerJob.objects.get()
    assert job.next_run_at.year == 9999
    assert admin_client.get(JOBS).status_code == 200 and admin_client.get(job_change_url(job)).status_code == 200


# -- 7: ids in links, and query strings the database cannot take ------------------------------------

ODD_IDS = ["a+b", "a&b=c", "a#b", "a%20b", "a_5Fb", "a/b", "a?b", "with space", "ünï"]


@pytest.mark.parametrize("job_id", ODD_IDS)
def test_links_to_and_from_a_job_quote_its_id(admin_client: Client, app: SchedulerApp, job_id: str) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, job_id=job_id, name="Odd one")
    decoy = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, job_id="a", name="Decoy")
    for owner in (job, decoy):
        SchedulerRun.objects.create(job=owner, scheduled_for=timezone.now(), status=RunStatus.DISPATCHED)
    page = admin_client.get(job_change_url(job))
    assert page.status_code == 200 and "Odd one" in page.content.decode()
    history = re.search(r'<a href="([^"]+)">All runs of this job</a>', page.content.decode())
    assert history, "no link to the job's runs"
    runs_page = admin_client.get(history.group(1).replace("&amp;", "&"))
    assert runs_page.status_code == 200
    listed = runs_page.context["cl"].result_list
    assert [run.job_id for run in listed] == [job_id]
    job_link = re.search(r'<a href="([^"]+)">Odd one</a>', runs_page.content.decode())
    assert job_link, "no link from the run to its job"
    opened = admin_client.get(job_link.group(1).replace("&amp;", "&"))
    assert opened.status_code == 200 and opened.context["original"].pk == job_id
    run_link = re.search(r'<td><a href="([^"]+)">', page.content.decode())
    assert run_link and admin_client.get(run_link.group(1)).status_code == 200


@pytest.mark.parametrize(
    ("url", "query"),
    [
        (RUNS, "scheduled_for__year=9999"),
        (RUNS, "scheduled_for__year=9999&scheduled_for__month=12"),
        (RUNS, "scheduled_for__year=99999"),
        (RUNS, "status=%00"),
        (RUNS, "q=%00"),
        (RUNS, "job__id__exact=a%00b"),
        (JOBS, "q=bad%00"),
        (JOBS, "task_name=%00"),
        (JOBS, "state=%00"),
        (JOBS, "strategy__exact=%00"),
        (JOBS, "%00=1"),
    ],
)
def test_query_strings_the_database_cannot_take_redirect_instead_of_failing(
    admin_client: Client, app: SchedulerApp, url: str, query: str
) -> None:
    app.single(task="demo.heartbeat").schedule(EVERY_FIVE)
    response = admin_client.get(f"{url}?{query}")
    assert response.status_code in (200, 302), response.status_code
    if response.status_code == 302:
        assert response["Location"].endswith("?e=1")


# -- 8: read-only pages have no save ------------------------------------------------------------------


@pytest.mark.parametrize("who", ["superuser", "change permission"])
def test_a_chain_page_has_no_save_and_a_post_writes_nothing(admin_client: Client, app: SchedulerApp, who: str) -> None:
    chain = app.chain(steps=[ChainStep(task="demo.heartbeat"), ChainStep(task="demo.add", args=[1, 2])]).schedule(
        EVERY_FIVE, name="Chain"
    )
    client = admin_client if who == "superuser" else client_with("view_schedulerjob", "change_schedulerjob")
    page = client.get(job_change_url(chain)).content.decode()
    assert 'name="_save"' not in page and 'name="_continue"' not in page and "Chain" in page
    SchedulerJob.objects.filter(pk=chain.pk).update(dispatch_count=7)  # an engine records a dispatch meanwhile
    before = snapshot(chain.pk)
    response = client.post(job_change_url(chain), {"name": "Renamed", "_save": "Save"})
    assert response.status_code == 403
    assert snapshot(chain.pk) == before and SchedulerJob.objects.get(pk=chain.pk).dispatch_count == 7


# -- found by review ------------------------------------------------------------------------------------


def test_the_chain_orchestrator_cannot_be_typed_into_the_form(admin_client: Client) -> None:
    from django_taskiq_beat import CHAIN_ORCHESTRATOR_TASK_NAME

    response = admin_client.post(ADD, form_data(task="", task_name=CHAIN_ORCHESTRATOR_TASK_NAME, kwargs='{"steps": 5}'))
    assert response.status_code == 200 and "app.chain" in " ".join(errors_of(response)["task_name"])
    assert not SchedulerJob.objects.exists()


@pytest.mark.parametrize("kwargs", [{"steps": 5}, {"steps": [1, "x", None]}, [1, 2], "text"])
def test_a_chain_row_written_otherwise_still_shows(admin_client: Client, app: SchedulerApp, kwargs: Any) -> None:
    chain = app.chain(steps=[ChainStep(task="demo.heartbeat")]).schedule(EVERY_FIVE, name="Odd chain")
    SchedulerJob.objects.filter(pk=chain.pk).update(task_kwargs=kwargs)
    assert "Odd chain" in admin_client.get(JOBS).content.decode()
    assert admin_client.get(job_change_url(chain)).status_code == 200


def test_runs_with_a_status_or_outcome_this_version_does_not_know_still_show(
    admin_client: Client, app: SchedulerApp
) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, name="Newer rows")
    now = timezone.now()
    SchedulerRun.objects.create(job=job, scheduled_for=now, status="skipped")
    SchedulerRun.objects.create(
        job=job,
        scheduled_for=now - timedelta(minutes=1),
        status="dispatched",
        outcome="cancelled",
        progress=["not", "a", "dict"],
    )
    for url in (JOBS, job_change_url(job), RUNS):
        assert admin_client.get(url).status_code == 200, url
    for run in SchedulerRun.objects.all():
        assert (
            admin_client.get(reverse("admin:django_taskiq_beat_schedulerrun_change", args=[run.pk])).status_code == 200
        )


def test_a_view_only_user_sees_every_column_of_a_job(app: SchedulerApp) -> None:
    job = app.single(task="demo.greet", args=["Visible"]).schedule(EVERY_FIVE, job_id="seen", name="Seen")
    page = client_with("view_schedulerjob").get(job_change_url(job)).content.decode()
    for text in ("seen", "demo.greet", "Visible", "every 5 minutes", "Next five fire times"):
        assert text in page, text
    assert 'name="_save"' not in page


@pytest.mark.filterwarnings("ignore:DateTimeField .* received a naive datetime")  # Django's, for a bare date
@pytest.mark.parametrize(
    "query",
    [
        "scheduled_for__gte=0001-01-01",
        "scheduled_for__lt=0001-01-01",
        "scheduled_for__year=1",
        "scheduled_for__year=1&scheduled_for__month=1&scheduled_for__day=1",
    ],
)
def test_date_filters_at_the_start_of_the_calendar_do_not_fail(
    admin_client: Client, app: SchedulerApp, query: str
) -> None:
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE)
    SchedulerRun.objects.create(job=job, scheduled_for=timezone.now(), status=RunStatus.DISPATCHED)
    response = admin_client.get(f"{RUNS}?{query}")
    assert response.status_code in (200, 302)


def test_a_blank_second_field_means_second_zero(admin_client: Client) -> None:
    response = admin_client.post(ADD, form_data(schedule_type="crontab", second="", minute="5", hour="3"))
    assert response.status_code == 302, errors_of(response)
    assert SchedulerJob.objects.get().trigger_payload["crontab"]["second"] == "0"


def test_the_message_of_a_failing_action_is_bounded(admin_client: Client, app: SchedulerApp) -> None:
    jobs = [
        app.single(task="demo.heartbeat").schedule(EVERY_FIVE, job_id=f"broken-{n:02}", is_enabled=False)
        for n in range(25)
    ]
    for job in jobs:
        break_trigger(job)
    response = post_action(admin_client, "resume_jobs", *jobs)
    (error,) = [str(message) for message in response.context["messages"] if "could not be changed" in str(message)]
    assert error.startswith("25 jobs could not be changed") and "and 15 more" in error and len(error) < 3000


def test_an_unreadable_row_is_refused_by_the_api_and_can_still_be_deleted(app: SchedulerApp) -> None:
    from django.db import connection

    from django_taskiq_beat import SchedulerValidationError
    from tests.conftest import UNREADABLE_TIMES, store_raw

    app.single(task="demo.heartbeat").schedule(EVERY_FIVE, job_id="bad-row")
    store_raw("scheduler_job", "bad-row", "created_at", UNREADABLE_TIMES[connection.vendor][0])
    for operation in (app.get_job, app.pause, app.resume, app.run_now):
        with pytest.raises(SchedulerValidationError, match="cannot be read"):
            operation("bad-row")
    app.delete("bad-row")
    assert not SchedulerJob.objects.filter(pk="bad-row").exists()


class EngineCommitsMeanwhile:
    """An engine process that commits a write while a view runs, right after ``owner.method`` has returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, database: str) -> None:
        self.monkeypatch, self.database = monkeypatch, database
        self.engine: threading.Thread | None = None

    def _writes(self) -> None:
        engine = sqlite3.connect(self.database, timeout=10, isolation_level=None)
        engine.execute("UPDATE scheduler_job SET dispatch_count = dispatch_count + 1 WHERE id = 'engines'")
        engine.close()

    def after(self, owner: Any, method: str) -> None:
        real = getattr(owner, method)

        def then_the_engine_commits(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            if self.engine is None:
                self.engine = threading.Thread(target=self._writes)
                self.engine.start()
                self.engine.join(0.5)  # if the view holds no write lock, the engine's write is committed by now
            return result

        self.monkeypatch.setattr(owner, method, then_the_engine_commits)

    def wrote(self) -> bool:
        assert self.engine is not None, "the view never got where the engine writes"
        self.engine.join()
        return SchedulerJob.objects.get(pk="engines").dispatch_count == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("view", ["add", "change", "delete"])
def test_on_sqlite_a_save_waits_for_an_engines_write_instead_of_failing(
    admin_client: Client, app: SchedulerApp, monkeypatch: pytest.MonkeyPatch, view: str
) -> None:
    """Django runs these views in one transaction that reads before it writes; SQLite refuses the write of a
    transaction that read before another process committed ("database is locked", at once)."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite only: the other databases lock rows, so a transaction that read can still write")
    engine = EngineCommitsMeanwhile(monkeypatch, connection.settings_dict["NAME"])
    every_hour = PeriodicSchedule(interval=IntervalTrigger(hours=1))
    app.single(task="demo.heartbeat").upsert(every_hour, job_id="engines")
    job = app.single(task="demo.heartbeat").upsert(every_hour, job_id="edited")
    if view == "add":
        engine.after(SchedulerJobForm, "clean")
        response = admin_client.post(ADD, form_data(job_id="added"))
        assert response.status_code == 302, errors_of(response)
        assert SchedulerJob.objects.filter(pk="added").exists()
    elif view == "change":
        engine.after(ModelAdmin, "get_object")
        response = admin_client.post(job_change_url(job), form_data(job_id="edited", name="Renamed"))
        assert response.status_code == 302, errors_of(response)
        assert SchedulerJob.objects.get(pk="edited").name == "Renamed"
    else:
        engine.after(ModelAdmin, "get_object")
        response = admin_client.post(
            reverse("admin:django_taskiq_beat_schedulerjob_delete", args=["edited"]), {"post": "yes"}
        )
        assert response.status_code == 302
        assert not SchedulerJob.objects.filter(pk="edited").exists()
    assert engine.wrote()
