"""The admin and declared jobs: the source is shown and filterable, declared jobs are read-only
(pause, resume and run now still work) and their page says where to edit them; taskiq labels
are a field of the form; the add form records ``admin`` as the source."""

import pytest
from django.contrib.admin.utils import quote
from django.test import Client, override_settings
from django.urls import reverse

from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, get_scheduler_app
from django_taskiq_beat.models import JobSource, SchedulerJob
from django_taskiq_beat.sync import sync_declared
from tests.test_admin import ADD, JOBS, errors_of, form_data, post_action, staff_client

pytestmark = pytest.mark.django_db

SCHEDULE = {"nightly": {"task": "demo.heartbeat", "cron": "0 3 * * *", "name": "Nightly beat"}}


@pytest.fixture
def declared_job() -> SchedulerJob:
    with override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": SCHEDULE}):
        sync_declared(get_scheduler_app())
    return SchedulerJob.objects.get(pk="settings:nightly")


@pytest.fixture
def api_job() -> SchedulerJob:
    return (
        get_scheduler_app()
        .single(task="demo.heartbeat")
        .schedule(PeriodicSchedule(interval=IntervalTrigger(minutes=5)), job_id="from-code", name="From code")
    )


def change_url(job: SchedulerJob) -> str:
    return reverse("admin:django_taskiq_beat_schedulerjob_change", args=[quote(job.pk)])


def test_the_list_shows_where_a_job_is_declared_and_filters_by_source(
    admin_client: Client, declared_job: SchedulerJob, api_job: SchedulerJob
) -> None:
    page = admin_client.get(JOBS).content.decode()
    assert "Nightly beat<br><small>demo.heartbeat · settings</small>" in page  # its task, and where it is declared
    assert "From code<br><small>demo.heartbeat</small>" in page  # a job from the API: its task only
    only_declared = admin_client.get(JOBS, {"source__exact": "settings"}).content.decode()
    assert "Nightly beat" in only_declared and "From code" not in only_declared


def test_a_declared_jobs_page_is_read_only_and_says_where_to_edit_it(
    admin_client: Client, declared_job: SchedulerJob
) -> None:
    page = admin_client.get(change_url(declared_job)).content.decode()
    assert "This job is declared in code, in TASKIQ_BEAT[&#x27;SCHEDULE&#x27;][&#x27;nightly&#x27;]" in page
    assert 'name="_save"' not in page and 'name="cron_expression"' not in page
    response = admin_client.post(change_url(declared_job), form_data(name="Hijacked"))
    assert response.status_code == 403
    assert SchedulerJob.objects.get(pk=declared_job.pk).name == "Nightly beat"


def test_pause_resume_and_run_now_work_on_a_declared_job(declared_job: SchedulerJob) -> None:
    client = staff_client("view_schedulerjob", "change_schedulerjob")
    post_action(client, "pause_jobs", declared_job)
    assert SchedulerJob.objects.get(pk=declared_job.pk).state == "paused"
    post_action(client, "resume_jobs", declared_job)
    assert SchedulerJob.objects.get(pk=declared_job.pk).state == "active"
    post_action(client, "run_jobs_now", declared_job)
    job = SchedulerJob.objects.get(pk=declared_job.pk)
    assert job.next_run_at <= job.updated_at


def test_a_job_no_longer_declared_says_so(admin_client: Client, declared_job: SchedulerJob) -> None:
    with override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker"}):
        sync_declared(get_scheduler_app())
    page = admin_client.get(change_url(declared_job)).content.decode()
    assert "was declared in code and is no longer declared; it was in TASKIQ_BEAT" in page


def test_the_add_form_records_the_admin_as_source_and_keeps_labels(admin_client: Client) -> None:
    response = admin_client.post(ADD, form_data(job_id="by-hand", labels='{"queue": "low", "priority": 3}'))
    assert response.status_code == 302, errors_of(response)
    job = SchedulerJob.objects.get(pk="by-hand")
    assert (job.source, job.task_labels) == (JobSource.ADMIN, {"queue": "low", "priority": 3})
    page = admin_client.get(change_url(job)).content.decode()
    assert "{&quot;queue&quot;: &quot;low&quot;, &quot;priority&quot;: 3}" in page
    response = admin_client.post(change_url(job), form_data(labels='{"queue": "high"}'))
    assert response.status_code == 302, errors_of(response)
    job = SchedulerJob.objects.get(pk="by-hand")
    assert (job.source, job.task_labels) == (JobSource.ADMIN, {"queue": "high"})


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ('{"queue": ["a", "b"]}', "string, number or boolean"),
        ('{"scheduler_job_id": "x"}', "scheduler's own"),
        ('["queue"]', "JSON object"),
    ],
)
def test_bad_labels_are_an_error_on_the_labels_field(admin_client: Client, labels: str, says: str) -> None:
    response = admin_client.post(ADD, form_data(labels=labels))
    assert response.status_code == 200
    assert says in " ".join(errors_of(response)["labels"])
    assert not SchedulerJob.objects.exists()


@pytest.mark.parametrize("job_id", ["settings:mine", "taskiq:mine", "taskiq-django:mine"])
def test_the_add_form_refuses_ids_kept_for_declared_jobs(admin_client: Client, job_id: str) -> None:
    response = admin_client.post(ADD, form_data(job_id=job_id))
    assert "kept for jobs declared in code" in " ".join(errors_of(response)["job_id"])
    assert not SchedulerJob.objects.exists()
