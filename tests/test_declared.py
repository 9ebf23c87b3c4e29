"""Schedules declared in code: settings entries and taskiq's ``schedule=`` labels become jobs by the sync.

The sync is an upsert: a second sync changes nothing, a changed declaration updates its job,
a removed one finishes it (history kept) and a re-added one brings it back, and an
operator's pause survives. Bad entries are system-check errors naming the entry and field.
"""

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.checks import run_checks
from django.test import override_settings
from django.utils import timezone
from taskiq import InMemoryBroker

from django_taskiq_beat import CrontabTrigger, PeriodicSchedule, SchedulerApp, SchedulerValidationError
from django_taskiq_beat.declarations import from_task_labels
from django_taskiq_beat.models import JobSource, RunStatus, SchedulerJob, SchedulerRun
from django_taskiq_beat.sync import sync_declared
from tests.conftest import nested
from tests.test_discovery import make_app  # noqa: F401  (a fixture)

pytestmark = pytest.mark.django_db


def declared(schedule: dict[str, Any]) -> override_settings:
    return override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": schedule})


def changes(app: SchedulerApp, **options: Any) -> dict[str, str]:
    report = sync_declared(app, **options)
    assert not report.errors, report.errors
    return {item.job_id: item.change for item in report.changes}


NIGHTLY_TRIGGER = PeriodicSchedule(crontab=CrontabTrigger.from_expression("0 3 * * *"))
NIGHTLY = {"task": "system.echo", "cron": "0 3 * * *", "timezone": "Europe/Paris", "args": [1], "name": "Nightly"}


# -- TASKIQ_BEAT["SCHEDULE"] ----------------------------------------------------------------------------


def test_a_settings_entry_becomes_a_job_and_a_second_sync_changes_nothing(app: SchedulerApp) -> None:
    schedule = {
        "nightly": {**NIGHTLY, "kwargs": {"b": 2}, "labels": {"queue": "low"}, "description": "Clean up"},
        "often": {"task": "system.other", "interval": timedelta(seconds=30)},
        "once": {"task": "system.echo", "run_at": datetime(2099, 1, 1, tzinfo=UTC)},
    }
    with declared(schedule):
        assert changes(app) == {"settings:nightly": "created", "settings:often": "created", "settings:once": "created"}
        job = SchedulerJob.objects.get(pk="settings:nightly")
        assert (
            job.source,
            job.task_name,
            job.task_args,
            job.task_kwargs,
            job.task_labels,
            job.name,
            job.description,
        ) == (
            JobSource.SETTINGS,
            "system.echo",
            [1],
            {"b": 2},
            {"queue": "low"},
            "Nightly",
            "Clean up",
        )
        assert job.trigger.crontab.timezone == "Europe/Paris" and job.trigger.crontab.hour == "3"
        assert job.next_run_at.astimezone(ZoneInfo("Europe/Paris")).hour == 3
        assert SchedulerJob.objects.get(pk="settings:often").trigger.interval.total_seconds == 30
        assert SchedulerJob.objects.get(pk="settings:once").next_run_at == datetime(2099, 1, 1, tzinfo=UTC)
        before = {row.pk: (row.updated_at, row.next_run_at) for row in SchedulerJob.objects.all()}

        assert set(changes(app).values()) == {"unchanged"}
        assert {row.pk: (row.updated_at, row.next_run_at) for row in SchedulerJob.objects.all()} == before


def test_a_changed_declaration_updates_its_job_and_keeps_an_unchanged_slot(app: SchedulerApp) -> None:
    with declared({"nightly": NIGHTLY}):
        sync_declared(app)
    slot = SchedulerJob.objects.get(pk="settings:nightly").next_run_at
    with declared({"nightly": {**NIGHTLY, "args": [2]}}):
        assert changes(app) == {"settings:nightly": "updated"}
    job = SchedulerJob.objects.get(pk="settings:nightly")
    assert (job.task_args, job.next_run_at) == ([2], slot)
    with declared({"nightly": {**NIGHTLY, "cron": "30 4 * * *"}}):
        assert changes(app) == {"settings:nightly": "updated"}
    job = SchedulerJob.objects.get(pk="settings:nightly")
    assert (job.trigger.crontab.hour, job.trigger.crontab.minute) == ("4", "30")
    assert job.next_run_at != slot and job.next_run_at.astimezone(timezone.get_fixed_timezone(0)).minute == 30


def test_a_removed_declaration_finishes_its_job_with_history_and_re_adding_it_brings_it_back(
    app: SchedulerApp,
) -> None:
    with declared({"nightly": NIGHTLY, "other": {"task": "system.other", "interval": 60}}):
        sync_declared(app)
    SchedulerRun.objects.create(job_id="settings:nightly", scheduled_for=timezone.now(), status=RunStatus.DISPATCHED)
    with declared({"other": {"task": "system.other", "interval": 60}}):
        assert changes(app) == {"settings:other": "unchanged", "settings:nightly": "finished"}
        assert changes(app) == {"settings:other": "unchanged"}  # finished once, not again
    job = SchedulerJob.objects.get(pk="settings:nightly")
    assert (job.is_enabled, job.next_run_at, job.is_finished, job.runs.count()) == (False, None, True, 1)

    with declared({"nightly": NIGHTLY, "other": {"task": "system.other", "interval": 60}}):
        assert changes(app)["settings:nightly"] == "updated"
    job = SchedulerJob.objects.get(pk="settings:nightly")
    assert job.is_enabled and not job.is_finished and job.next_run_at > timezone.now()
    assert job.runs.count() == 1


def test_an_operators_pause_survives_syncs_even_when_the_declaration_changes(app: SchedulerApp) -> None:
    with declared({"nightly": NIGHTLY}):
        sync_declared(app)
    app.pause("settings:nightly", note="incident 42")
    with declared({"nightly": NIGHTLY}):
        assert changes(app) == {"settings:nightly": "unchanged"}
    with declared({"nightly": {**NIGHTLY, "cron": "0 5 * * *"}}):
        assert changes(app) == {"settings:nightly": "updated"}
    job = SchedulerJob.objects.get(pk="settings:nightly")
    assert (job.is_enabled, job.pause_note, job.trigger.crontab.hour) == (False, "incident 42", "5")


def test_enabled_false_declares_a_paused_job_and_enabling_it_in_the_declaration_resumes_it(
    app: SchedulerApp,
) -> None:
    with declared({"nightly": {**NIGHTLY, "enabled": False}}):
        sync_declared(app)
    job = SchedulerJob.objects.get(pk="settings:nightly")
    assert (job.state, job.is_finished) == ("paused", False)
    with declared({"nightly": NIGHTLY}):
        assert changes(app) == {"settings:nightly": "updated"}
    assert SchedulerJob.objects.get(pk="settings:nightly").state == "active"


def test_a_dry_run_reports_what_would_change_and_writes_nothing(app: SchedulerApp) -> None:
    with declared({"nightly": NIGHTLY}):
        report = sync_declared(app, dry_run=True)
    assert [(item.job_id, item.change) for item in report.changes] == [("settings:nightly", "created")]
    assert not SchedulerJob.objects.exists()
    with declared({"nightly": NIGHTLY}):
        sync_declared(app)
    with declared({}):
        assert changes(app, dry_run=True) == {"settings:nightly": "finished"}
    assert SchedulerJob.objects.get(pk="settings:nightly").is_enabled


@pytest.mark.parametrize(
    ("entry", "field", "says"),
    [
        ({"task": "system.echo", "cron": "61 * * * *"}, "cron", "minute='61'"),
        ({"task": "system.echo", "cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "cron", "Mars/Olympus"),
        ({"task": "system.echo"}, "cron", "Give one of 'cron', 'interval', 'run_at'"),
        ({"task": "system.echo", "cron": "* * * * *", "interval": 5}, "interval", "only one of"),
        ({"task": "system.echo", "interval": 0}, "interval", "seconds"),
        ({"task": "system.echo", "run_at": datetime(2030, 1, 1)}, "run_at", "timezone"),
        ({"task": "system.echo", "interval": 5, "timezone": "UTC"}, "timezone", "cron' only"),
        ({"task": "system.echo", "interval": 5, "args": {"a": 1}}, "args", "JSON array"),
        ({"task": "system.echo", "interval": 5, "labels": {"queue": ["a"]}}, "labels", "string, number or boolean"),
        ({"task": "system.echo", "interval": 5, "labels": {"scheduler_slot": "x"}}, "labels", "scheduler's own"),
        ({"task": "system.echo", "interval": 5, "enabled": "yes"}, "enabled", "True or False"),
        ({"task": "system.echo", "interval": 5, "every": 5}, "every", "Unknown field"),
        ({"task": "system.echo", "interval": 5, 7: 5}, "7", "Unknown field"),
        ({"task": "no.such.task", "interval": 5}, "task", "not registered"),
        ({"task": "system.other", "interval": 5, "kwargs": {"self": 1}}, "kwargs", "kiq()"),
        ("0 3 * * *", "entry", "Must be a dict"),
    ],
)
def test_a_bad_entry_is_an_error_naming_the_key_and_field_and_its_job_is_left_alone(
    app: SchedulerApp, entry: Any, field: str, says: str
) -> None:
    with declared({"nightly": NIGHTLY}):
        sync_declared(app)
    with declared({"nightly": entry}):
        report = sync_declared(app)
    [error] = report.errors
    assert str(error).startswith("TASKIQ_BEAT['SCHEDULE']['nightly']: ") and error.field == field
    assert says in str(error)
    assert report.changes == []  # not finished: a typo must not stop a job
    assert SchedulerJob.objects.get(pk="settings:nightly").trigger.crontab.hour == "3"


def test_manage_py_check_reports_each_bad_entry(app: SchedulerApp) -> None:
    with declared(
        {
            "good": NIGHTLY | {"task": "demo.heartbeat", "args": []},
            "bad_cron": {"task": "demo.heartbeat", "cron": "0 25 * * *"},
            "bad_task": {"task": "demo.nope", "interval": 5},
        }
    ):
        errors = [message for message in run_checks() if message.id == "django_taskiq_beat.E005"]
    assert sorted(message.msg.split(":")[0] for message in errors) == [
        "TASKIQ_BEAT['SCHEDULE']['bad_cron']",
        "TASKIQ_BEAT['SCHEDULE']['bad_task']",
    ]
    assert "hour='25'" in next(message.msg for message in errors if "bad_cron" in message.msg)


def test_a_schedule_that_is_not_a_dict_is_an_error_and_finishes_nothing(app: SchedulerApp) -> None:
    with declared({"nightly": NIGHTLY}):
        sync_declared(app)
    with declared(["nightly"]):  # type: ignore[arg-type]
        report = sync_declared(app)
    assert "Must be a dict" in str(report.errors[0]) and report.changes == []
    assert SchedulerJob.objects.get(pk="settings:nightly").is_enabled


def test_declared_ids_are_kept_for_the_sync(app: SchedulerApp) -> None:
    # In any case or accent: MariaDB and MySQL would find the declared job's row under SETTINGS:mine.
    for job_id in ("settings:mine", "taskiq:x", "taskiq-django:y", "SETTINGS:mine", "Taskiq:x", "séttings:mine"):
        with pytest.raises(SchedulerValidationError, match="kept for jobs declared in code"):
            app.single(task="system.echo").schedule(job_id=job_id)
        with pytest.raises(SchedulerValidationError, match="kept for jobs declared in code"):
            app.single(task="system.echo").upsert(NIGHTLY_TRIGGER, job_id)
    app.single(task="system.echo").upsert(NIGHTLY_TRIGGER, "settingsy:mine")  # only the exact prefix is kept
    assert not SchedulerJob.objects.filter(pk__startswith="settings:").exists()


# -- taskiq's schedule=[...] labels -------------------------------------------------------------------------


def test_taskiq_schedule_labels_become_jobs_read_by_taskiqs_own_rules(
    app: SchedulerApp, broker: InMemoryBroker
) -> None:
    @broker.task(
        task_name="labelled.report",
        schedule=[
            {"cron": "*/5 * * * *", "args": [1], "labels": {"priority": 3}},
            {"interval": 30, "schedule_id": "fast-report", "kwargs": {"x": 1}},
            {"time": datetime(2099, 6, 1, 12, 0)},  # naive: UTC, as taskiq reads it
            {"cron": "0 9 * * *", "cron_offset": "Europe/Berlin"},
            {"cron": "0 9 * * *", "cron_offset": timedelta(hours=3)},
            {"cron": "0 9 * * *", "cron_offset": "3600"},  # taskiq-django stores a timedelta offset as its seconds
        ],
    )
    async def report(*args: Any, **kwargs: Any) -> None:
        return None

    with declared({}):
        assert changes(app) == {
            "taskiq:labelled.report:0": "created",
            "taskiq:fast-report": "created",
            "taskiq:labelled.report:2": "created",
            "taskiq:labelled.report:3": "created",
            "taskiq:labelled.report:4": "created",
            "taskiq:labelled.report:5": "created",
        }
        assert set(changes(app).values()) == {"unchanged"}
    jobs = {job.pk: job for job in SchedulerJob.objects.all()}
    first = jobs["taskiq:labelled.report:0"]
    assert (first.source, first.task_args, first.task_labels, first.trigger.crontab.minute) == (
        JobSource.TASKIQ,
        [1],
        {"priority": 3},
        "*/5",
    )
    assert first.trigger.crontab.timezone == "UTC"  # no cron_offset: UTC, as taskiq matches it
    assert jobs["taskiq:fast-report"].trigger.interval.total_seconds == 30
    assert jobs["taskiq:fast-report"].task_kwargs == {"x": 1}
    assert jobs["taskiq:labelled.report:2"].next_run_at == datetime(2099, 6, 1, 12, 0, tzinfo=UTC)
    assert [jobs[f"taskiq:labelled.report:{index}"].trigger.crontab.timezone for index in (3, 4, 5)] == [
        "Europe/Berlin",
        "Etc/GMT-3",
        "Etc/GMT-1",
    ]


@pytest.mark.parametrize(
    ("entry", "field", "says"),
    [
        ({"cron": "* * * * *", "interval": 5}, "interval", "only one of"),
        ({"interval": 1.5}, "interval", "taskiq refuses it"),
        ({"cron": "0 9 * * *", "cron_offset": timedelta(minutes=90)}, "cron_offset", "whole hours"),
        ({"cron": "0 9 * * *", "cron_offset": "Mars/Olympus"}, "cron_offset", "Mars/Olympus"),
        ({"labels": {}}, "cron", "Give one of"),
        ({"interval": 5, "when": "now"}, "when", "Unknown field"),
    ],
)
def test_a_bad_schedule_label_is_an_error_naming_the_task_entry_and_field(
    app: SchedulerApp, broker: InMemoryBroker, entry: dict[str, Any], field: str, says: str
) -> None:
    broker.task(task_name="labelled.bad", schedule=[{"interval": 60}, entry])(lambda: None)
    result = from_task_labels(broker)
    [error] = result.errors
    assert str(error).startswith("the schedule label of task 'labelled.bad', entry 1: ")
    assert (error.field, error.job_id) == (field, "taskiq:labelled.bad:1") and says in str(error)
    assert [declaration.job_id for declaration in result.declarations] == ["taskiq:labelled.bad:0"]


def test_the_same_job_id_declared_twice_is_an_error_and_the_first_wins(
    app: SchedulerApp, broker: InMemoryBroker
) -> None:
    broker.task(
        task_name="labelled.twice",
        schedule=[{"interval": 60, "schedule_id": "same"}, {"interval": 90, "schedule_id": "same"}],
    )(lambda: None)
    with declared({}):
        report = sync_declared(app)
    assert [(item.job_id, item.change) for item in report.changes] == [("taskiq:same", "created")]
    assert "Also declared by the schedule label of task 'labelled.twice', entry 0" in str(report.errors[0])
    assert SchedulerJob.objects.get(pk="taskiq:same").trigger.interval.total_seconds == 60


def test_jobs_imported_from_taskiq_django_are_finished_once_the_import_is_switched_off(app: SchedulerApp) -> None:
    app.single(task="system.echo").upsert_as(
        JobSource.TASKIQ_DJANGO, NIGHTLY_TRIGGER, "taskiq-django:nightly", declaration={"origin": "a row"}
    )
    with declared({}):
        assert changes(app) == {"taskiq-django:nightly": "finished"}
    assert SchedulerJob.objects.get(pk="taskiq-django:nightly").is_finished


def test_a_declared_job_whose_row_cannot_be_read_costs_that_job_alone(app: SchedulerApp) -> None:
    from django.db import connection

    from tests.conftest import UNREADABLE_TIMES, store_raw

    other = {"task": "system.other", "interval": 60}
    with declared({"nightly": NIGHTLY, "other": other}):
        sync_declared(app)
    store_raw("scheduler_job", "settings:nightly", "created_at", UNREADABLE_TIMES[connection.vendor][0])
    with declared({"nightly": {**NIGHTLY, "args": [2]}, "other": {**other, "args": [3]}}):
        report = sync_declared(app)
    [error] = report.errors
    assert str(error).startswith("TASKIQ_BEAT['SCHEDULE']['nightly']: ") and "cannot be read" in str(error)
    assert [(item.job_id, item.change) for item in report.changes] == [("settings:other", "updated")]
    assert SchedulerJob.objects.get(pk="settings:other").task_args == [3]


def test_a_task_module_that_does_not_import_is_an_error_of_the_entries_that_need_it(
    app: SchedulerApp, make_app: Any
) -> None:
    make_app({"tasks.py": "import no_such_module_anywhere\n"})
    schedule = {"lost": {"task": "lost.task", "interval": 60}, "fine": {"task": "system.echo", "interval": 60}}
    with declared(schedule):
        report = sync_declared(app)
    assert [(item.job_id, item.change) for item in report.changes] == [("settings:fine", "created")]
    messages = [str(error) for error in report.errors]
    lost = "TASKIQ_BEAT['SCHEDULE']['lost']: task='lost.task': Could not import task module"
    assert any(message.startswith(lost) for message in messages)
    assert any(message.startswith("the installed apps' task modules: ") for message in messages)


@pytest.mark.parametrize(
    ("schedule_id", "says"),
    [
        ("  ", "Must not be empty"),
        (7, "Must be a string"),
        ("", "Must not be empty"),
        (nested(6000), "Must be a string"),  # too deep to format: no RecursionError
    ],
    ids=["blank", "number", "empty", "nested-too-deep"],
)
def test_a_schedule_id_must_be_text_that_is_not_blank(
    app: SchedulerApp, broker: InMemoryBroker, schedule_id: Any, says: str
) -> None:
    broker.task(task_name="labelled.ids", schedule=[{"interval": 60, "schedule_id": schedule_id}])(lambda: None)
    [error] = from_task_labels(broker).errors
    assert error.field == "schedule_id" and says in str(error)
