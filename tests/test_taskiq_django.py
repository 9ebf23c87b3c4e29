"""taskiq-django's schedule table as jobs: with ``IMPORT_TASKIQ_DJANGO`` each row of
``taskiq_schedules`` becomes the job ``taskiq-django:<schedule_id>``.

taskiq-django needs Python 3.12+ and Django 6.0.5+, so most of these tests run only where it
is installed (the py312/py313 tox environments); the testproject adds its app wherever it is
importable. The missing-package error is tested everywhere: where the package is installed,
its app is taken out of ``INSTALLED_APPS`` to look the same to the scheduler.
"""

import importlib.util
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings
from django.utils import timezone
from taskiq import InMemoryBroker

from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, SchedulerApp, SchedulerConfig
from django_taskiq_beat.declarations import TASKIQ_DJANGO_MISSING
from django_taskiq_beat.models import JobSource, RunStatus, SchedulerJob, SchedulerRun
from django_taskiq_beat.sync import SyncReport, sync_declared
from tests.processes import EngineProcess, wait_until

pytestmark = pytest.mark.django_db

HAS_TASKIQ_DJANGO = importlib.util.find_spec("taskiq_django") is not None
requires_taskiq_django = pytest.mark.skipif(
    not HAS_TASKIQ_DJANGO,
    reason="taskiq-django needs Python 3.12+ and Django 6.0.5+; the py312/py313 tox environments run these",
)
WITHOUT_TASKIQ_DJANGO = [name for name in settings.INSTALLED_APPS if name != "taskiq_django"]


def importing(enabled: bool = True) -> override_settings:
    return override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "IMPORT_TASKIQ_DJANGO": enabled})


def sync(broker: InMemoryBroker, enabled: bool = True) -> SyncReport:
    """``sync_declared`` with an app configured from ``TASKIQ_BEAT`` (DEFAULT_TIMEZONE: TIME_ZONE, Europe/Berlin)."""
    with importing(enabled):
        return sync_declared(SchedulerApp(broker=broker, config=SchedulerConfig.from_settings()))


def changes(broker: InMemoryBroker, enabled: bool = True) -> dict[str, str]:
    report = sync(broker, enabled)
    assert not report.errors, report.errors
    return {item.job_id: item.change for item in report.changes}


def add_row(schedule_id: str, task_name: str = "system.echo", **fields: Any) -> Any:
    from taskiq_django.models import TaskiqTaskSchedule

    return TaskiqTaskSchedule.objects.create(schedule_id=schedule_id, task_name=task_name, **fields)


def rows() -> Any:
    from taskiq_django.models import TaskiqTaskSchedule

    return TaskiqTaskSchedule.objects


# -- the rows become jobs ----------------------------------------------------------------------------------


@requires_taskiq_django
def test_rows_become_jobs_and_a_second_sync_changes_nothing(broker: InMemoryBroker) -> None:
    add_row("nightly", cron="0 3 * * *", cron_offset="Europe/Paris", args=[1], kwargs={"b": 2}, labels={"queue": "low"})
    add_row("nine-plus-one", cron="0 9 * * *", cron_offset="3600")  # a timedelta offset, as taskiq-django stores it
    add_row("plain-cron", cron="*/5 * * * *")
    add_row("often", task_name="system.other", interval=30)
    add_row("once", time=datetime(2099, 6, 1, 12, 0, tzinfo=UTC))

    assert changes(broker) == {
        f"taskiq-django:{schedule_id}": "created"
        for schedule_id in ("nightly", "nine-plus-one", "once", "often", "plain-cron")
    }
    jobs = {job.pk: job for job in SchedulerJob.objects.all()}
    assert {job.source for job in jobs.values()} == {JobSource.TASKIQ_DJANGO}
    nightly = jobs["taskiq-django:nightly"]
    assert (nightly.task_name, nightly.task_args, nightly.task_kwargs, nightly.task_labels) == (
        "system.echo",
        [1],
        {"b": 2},
        {"queue": "low"},
    )
    assert (nightly.trigger.crontab.hour, nightly.trigger.crontab.timezone) == ("3", "Europe/Paris")
    assert nightly.declaration["origin"] == "taskiq-django's schedule 'nightly'"
    assert jobs["taskiq-django:nine-plus-one"].trigger.crontab.timezone == "Etc/GMT-1"  # UTC+1
    # No cron_offset: UTC, as taskiq's own scheduler reads it (not DEFAULT_TIMEZONE, unlike settings entries).
    assert jobs["taskiq-django:plain-cron"].trigger.crontab.timezone == "UTC"
    assert (jobs["taskiq-django:often"].task_name, jobs["taskiq-django:often"].trigger.interval.total_seconds) == (
        "system.other",
        30,
    )
    assert jobs["taskiq-django:once"].next_run_at == datetime(2099, 6, 1, 12, 0, tzinfo=UTC)
    assert all(job.is_enabled and not job.is_finished for job in jobs.values())
    before = {job.pk: (job.updated_at, job.next_run_at) for job in SchedulerJob.objects.all()}

    assert set(changes(broker).values()) == {"unchanged"}
    assert {job.pk: (job.updated_at, job.next_run_at) for job in SchedulerJob.objects.all()} == before


@requires_taskiq_django
def test_a_changed_row_updates_its_job(broker: InMemoryBroker) -> None:
    add_row("often", interval=30)
    add_row("other", interval=60)
    sync(broker)
    rows().filter(pk="often").update(interval=45, args=[2])
    assert changes(broker) == {"taskiq-django:often": "updated", "taskiq-django:other": "unchanged"}
    job = SchedulerJob.objects.get(pk="taskiq-django:often")
    assert (job.trigger.interval.total_seconds, job.task_args) == (45, [2])


@requires_taskiq_django
def test_a_deleted_row_finishes_its_job_and_keeps_its_runs(broker: InMemoryBroker) -> None:
    add_row("often", interval=30)
    add_row("other", interval=60)
    sync(broker)
    SchedulerRun.objects.create(job_id="taskiq-django:often", scheduled_for=timezone.now(), status=RunStatus.DISPATCHED)
    rows().filter(pk="often").delete()
    assert changes(broker) == {"taskiq-django:other": "unchanged", "taskiq-django:often": "finished"}
    job = SchedulerJob.objects.get(pk="taskiq-django:often")
    assert (job.is_enabled, job.next_run_at, job.is_finished, job.runs.count()) == (False, None, True, 1)


@requires_taskiq_django
@pytest.mark.parametrize(
    ("bad", "field", "says"),
    [
        ({"task_name": "no.such.task"}, "task", "not registered"),
        ({"interval": None, "cron": "0 25 * * *"}, "cron", "hour='25'"),
    ],
)
def test_a_bad_row_is_an_error_naming_it_the_others_are_synced_and_its_job_is_kept(
    broker: InMemoryBroker, bad: dict[str, Any], field: str, says: str
) -> None:
    add_row("good", interval=30)
    add_row("bad", interval=60)
    sync(broker)
    rows().filter(pk="bad").update(**bad)
    rows().filter(pk="good").update(interval=90)
    add_row("new", interval=120)

    report = sync(broker)
    [error] = report.errors
    assert str(error).startswith("taskiq-django's schedule 'bad': ") and says in str(error)
    assert (error.field, error.job_id) == (field, "taskiq-django:bad")
    assert {item.job_id: item.change for item in report.changes} == {
        "taskiq-django:good": "updated",
        "taskiq-django:new": "created",
    }
    job = SchedulerJob.objects.get(pk="taskiq-django:bad")  # not finished: a bad row must not stop a job
    assert (job.is_enabled, job.is_finished, job.task_name, job.trigger.interval.total_seconds) == (
        True,
        False,
        "system.echo",
        60,
    )


@requires_taskiq_django
def test_switched_off_its_jobs_are_finished_and_switched_on_again_they_come_back(broker: InMemoryBroker) -> None:
    add_row("often", interval=30)
    sync(broker)
    assert changes(broker, enabled=False) == {"taskiq-django:often": "finished"}
    assert SchedulerJob.objects.get(pk="taskiq-django:often").is_finished
    assert changes(broker) == {"taskiq-django:often": "updated"}
    job = SchedulerJob.objects.get(pk="taskiq-django:often")
    assert (job.state, job.is_finished) == ("active", False)


# -- a real engine process ----------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EngineProcess]:
    sink = tmp_path / "sink.txt"
    sink.touch()
    process = EngineProcess(
        "engine-taskiq-django",
        tmp_path,
        {"SYNC_INTERVAL_SECONDS": 0.5, "IMPORT_TASKIQ_DJANGO": True},
        TEST_SINK=str(sink),
    )
    yield process
    process.stop()
    print(f"----- log of {process.name} -----\n{process.log()}")


@requires_taskiq_django
@pytest.mark.django_db(transaction=True)
def test_run_taskiq_beat_makes_a_row_a_job_at_start_and_sends_it_on_its_slots(
    engine: EngineProcess, tmp_path: Path
) -> None:
    add_row("every-second", task_name="test.record", interval=1)  # the engine's broker: tests.process_broker
    engine.start()
    assert "Declared job taskiq-django:every-second created" in engine.log()
    job = SchedulerJob.objects.get(pk="taskiq-django:every-second")
    assert (job.source, job.task_name, job.trigger.interval.total_seconds) == (
        JobSource.TASKIQ_DJANGO,
        "test.record",
        1,
    )

    sink = tmp_path / "sink.txt"
    wait_until(lambda: len(sink.read_text().split()) >= 2, timeout=15, what="two sends of the row's job")
    engine.signal(signal.SIGTERM)
    assert engine.wait() == 0
    sent = Counter(sink.read_text().split())
    dispatched = set(
        SchedulerRun.objects.filter(job_id=job.pk, status=RunStatus.DISPATCHED).values_list("id", flat=True)
    )
    assert set(sent) <= dispatched and set(sent.values()) == {1}  # each run sent once, all of the row's job


# -- requested but not installed (every environment) ---------------------------------------------------------


def test_requested_but_not_installed_is_check_error_e006_saying_to_install_the_extra() -> None:
    with override_settings(INSTALLED_APPS=WITHOUT_TASKIQ_DJANGO), importing():
        [error] = [message for message in run_checks() if message.id == "django_taskiq_beat.E006"]
    assert error.msg.startswith("TASKIQ_BEAT['IMPORT_TASKIQ_DJANGO'] is True, but taskiq-django is not installed")
    assert "pip install 'django-taskiq-beat[taskiq-django]'" in error.msg and "INSTALLED_APPS" in error.msg
    with override_settings(INSTALLED_APPS=WITHOUT_TASKIQ_DJANGO), importing(enabled=False):
        assert not [message for message in run_checks() if message.id == "django_taskiq_beat.E006"]


@requires_taskiq_django
def test_requested_and_installed_is_no_check_error() -> None:
    with importing():
        assert not [message for message in run_checks() if message.id == "django_taskiq_beat.E006"]


def test_requested_but_not_installed_the_sync_reports_it_and_finishes_none_of_its_jobs(broker: InMemoryBroker) -> None:
    app = SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="UTC"))
    app.single(task="system.echo").upsert_as(
        JobSource.TASKIQ_DJANGO,
        PeriodicSchedule(interval=IntervalTrigger(seconds=30)),
        "taskiq-django:kept",
        declaration={"origin": "taskiq-django's schedule 'kept'"},
    )
    with override_settings(INSTALLED_APPS=WITHOUT_TASKIQ_DJANGO):
        report = sync(broker)
    [error] = report.errors
    assert str(error).startswith("TASKIQ_BEAT: IMPORT_TASKIQ_DJANGO=True: taskiq-django is not installed")
    assert TASKIQ_DJANGO_MISSING in str(error)
    assert report.changes == []
    job = SchedulerJob.objects.get(pk="taskiq-django:kept")
    assert (job.state, job.is_finished, job.declaration is not None) == ("active", False, True)
