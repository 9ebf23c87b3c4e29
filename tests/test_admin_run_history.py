"""The run history: filtered by the job's source and by skipped runs; a run's page in full."""

from datetime import timedelta
from urllib.parse import quote_plus

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, get_scheduler_app
from django_taskiq_beat.conf import BACKFILL_CLAIMANT, BACKFILLED, WAITING_CLAIMANT
from django_taskiq_beat.models import SHOWN_STATUSES, JobSource, RunStatus, SchedulerJob, SchedulerRun

pytestmark = pytest.mark.django_db

RUNS = reverse("admin:django_taskiq_beat_schedulerrun_changelist")
LONG_ERROR = "ValueError: " + "the feed returned rows that do not parse; " * 10 + "the end"


def run_of(job: SchedulerJob, minutes_ago: int, **values: object) -> SchedulerRun:
    slot = timezone.now() - timedelta(minutes=minutes_ago)
    return SchedulerRun.objects.create(job=job, scheduled_for=slot, finished_at=slot, **values)


def jobs() -> tuple[SchedulerJob, SchedulerJob]:
    app = get_scheduler_app()
    every_hour = PeriodicSchedule(interval=IntervalTrigger(hours=1))
    from_api = app.single(task="demo.heartbeat").schedule(every_hour, job_id="api-job")
    declared = app.single(task="demo.heartbeat").schedule(every_hour, job_id="settings-job")
    SchedulerJob.objects.filter(pk="settings-job").update(source=JobSource.SETTINGS)
    return from_api, declared


def test_the_history_filters_by_the_jobs_source_and_by_skipped(admin_client: Client) -> None:
    from_api, declared = jobs()
    run_of(from_api, 1, status=RunStatus.DISPATCHED)
    skipped = run_of(declared, 2, status=RunStatus.SKIPPED, reason="overlap: the previous run (…) had not finished")
    run_of(declared, 3, status=RunStatus.DISPATCHED)
    page = admin_client.get(RUNS).content.decode()
    assert "job__source__exact=settings" in page and "status=skipped" in page  # the filters are offered
    listed = admin_client.get(RUNS, {"job__source__exact": "settings"}).context["cl"].result_list
    assert {run.job_id for run in listed} == {"settings-job"} and len(listed) == 2
    for query in ({"status": "skipped"}, {"status__exact": "skipped"}):  # the field's own lookup still works
        listed = admin_client.get(RUNS, query).context["cl"].result_list
        assert [run.pk for run in listed] == [skipped.pk]


def test_the_status_filter_lists_each_status_as_the_history_shows_it(admin_client: Client) -> None:
    """A held slot is "waiting" and a backfill awaiting its retry "retry pending", apart from the pending runs."""
    from_api, declared = jobs()
    runs = [
        run_of(from_api, 1, status=RunStatus.PENDING, claimed_by="engine-a"),
        run_of(from_api, 2, status=RunStatus.PENDING, claimed_by=WAITING_CLAIMANT, reason="overlap: held"),
        run_of(from_api, 3, status=RunStatus.PENDING, claimed_by=BACKFILL_CLAIMANT, error="ConnectionError: boom"),
        run_of(from_api, 4, status=RunStatus.PENDING, claimed_by=BACKFILL_CLAIMANT, reason=BACKFILLED),
        run_of(declared, 1, status=RunStatus.DISPATCHED),
        run_of(declared, 2, status=RunStatus.FAILED, error="ConnectionError: boom"),
        run_of(declared, 3, status=RunStatus.SKIPPED, reason="grace"),
    ]
    page = admin_client.get(RUNS).content.decode()
    for status in SHOWN_STATUSES:
        assert f"?status={quote_plus(status)}" in page, status
        listed = admin_client.get(RUNS, {"status": status}).context["cl"].result_list
        assert sorted(run.pk for run in listed) == sorted(run.pk for run in runs if run.shown_status == status), status
    assert len(admin_client.get(RUNS).context["cl"].result_list) == len(runs)
    for unknown in ("retrying", ""):  # no status the list shows (an old bookmark, an emptied URL)
        assert not admin_client.get(RUNS, {"status": unknown}).context["cl"].result_list, unknown
    assert [run.shown_status for run in runs] == [
        "pending", "waiting", "retry pending", "pending", "dispatched", "failed", "skipped"
    ]  # fmt: skip


def test_a_runs_page_shows_the_whole_error_and_a_title_in_words(admin_client: Client) -> None:
    from_api, _ = jobs()
    run = run_of(from_api, 1, status=RunStatus.DISPATCHED, outcome="failed", error=LONG_ERROR)
    page = admin_client.get(reverse("admin:django_taskiq_beat_schedulerrun_change", args=[run.pk])).content.decode()
    assert LONG_ERROR in page  # not cut at 120 characters as in the list
    slot = timezone.localtime(run.scheduled_for).strftime("%Y-%m-%d %H:%M:%S")
    assert f"Run of api-job for {slot}" in page


def test_a_chain_runs_page_shows_its_steps(admin_client: Client) -> None:
    from_api, _ = jobs()
    progress = {
        "status": "failed",
        "chain_attempt": 1,
        "error": "step 1 failed",
        "steps": [
            {"task_name": "demo.greet", "status": "succeeded", "attempts": 1},
            {"task_name": "demo.add", "status": "failed", "attempts": 3, "error": "TypeError: bad operand"},
        ],
    }
    run = run_of(from_api, 1, status=RunStatus.DISPATCHED, outcome="failed", progress=progress)
    page = admin_client.get(reverse("admin:django_taskiq_beat_schedulerrun_change", args=[run.pk])).content.decode()
    assert "<td>demo.add</td><td>failed</td><td>3</td><td>TypeError: bad operand</td>" in page
