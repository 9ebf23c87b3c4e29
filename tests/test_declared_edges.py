"""Edge cases of schedules declared in code, found by an adversarial review (each failed before its fix).

Values the task would receive differently (true vs 1) are changes; a one-off that ran is not re-run by
being declared again; "run now" does not resurrect an undeclared job; a task module that does not import,
or a malformed schedule label, finishes nothing; a chain's labels reach its steps.
"""

import importlib.util
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from django_taskiq_beat import SchedulerApp
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun
from django_taskiq_beat.sync import sync_declared
from tests.test_discovery import make_app  # noqa: F401  (a fixture)

pytestmark = pytest.mark.django_db


def declared(schedule: Any, **extra: Any) -> override_settings:
    return override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": schedule, **extra})


def changes(app: SchedulerApp, **options: Any) -> dict[str, str]:
    report = sync_declared(app, **options)
    assert not report.errors, report.errors
    return {item.job_id: item.change for item in report.changes}


# -- 1. A change Python's == cannot see (True == 1 == 1.0) is still a change --------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"args": [1]}, {"args": [True]}),
        ({"kwargs": {"dry_run": 0}}, {"kwargs": {"dry_run": False}}),
        ({"labels": {"priority": 1}}, {"labels": {"priority": True}}),
        ({"args": [1]}, {"args": [1.0]}),
    ],
)
def test_a_declaration_changed_from_int_to_bool_or_float_is_applied(
    app: SchedulerApp, before: dict[str, Any], after: dict[str, Any]
) -> None:
    entry = {"task": "system.echo", "interval": 60}
    with declared({"job": {**entry, **before}}):
        assert changes(app) == {"settings:job": "created"}
    with declared({"job": {**entry, **after}}):
        assert changes(app) == {"settings:job": "updated"}
    job = SchedulerJob.objects.get(pk="settings:job")
    field, value = next(iter(after.items()))
    stored = {"args": job.task_args, "kwargs": job.task_kwargs, "labels": job.task_labels}[field]
    assert repr(stored) == repr(value)  # what the task is sent is what is declared now


# -- 2. A one-off that already ran, removed and declared again, does not run a second time ------------------------


def test_a_one_off_that_already_ran_does_not_run_again_when_re_declared(app: SchedulerApp) -> None:
    once = {"task": "system.echo", "run_at": datetime(2020, 1, 1, tzinfo=UTC)}
    with declared({"once": once}):
        assert changes(app) == {"settings:once": "created"}
    # the engine sends it: the run is recorded and the one-off is finished
    job = SchedulerJob.objects.get(pk="settings:once")
    SchedulerRun.objects.create(job=job, scheduled_for=job.next_run_at, status=RunStatus.DISPATCHED)
    SchedulerJob.objects.filter(pk=job.pk).update(
        finished_at=timezone.now(), next_run_at=None, last_run_at=timezone.now(), dispatch_count=1
    )
    with declared({}):  # e.g. a deploy that lacks it
        assert changes(app) == {"settings:once": "finished"}
    with declared({"once": once}):  # rolled back: the same declaration as before
        changes(app)
    job = SchedulerJob.objects.get(pk="settings:once")
    assert job.next_run_at is None and job.is_finished, (job.next_run_at, job.finished_at)


# -- 3. A task module that does not import stops neither the sync (run_taskiq_beat's start) nor manage.py check --


def test_a_broken_task_module_with_a_settings_entry_does_not_stop_the_sync(app: SchedulerApp, make_app: Any) -> None:
    make_app({"tasks.py": "raise RuntimeError('boom')\n"})
    with declared({"mail": {"task": "app.email", "interval": 60}, "ok": {"task": "system.echo", "interval": 60}}):
        report = sync_declared(app)  # docs/settings.md: run_taskiq_beat and taskiq_beat do not stop for E005
    assert [item.job_id for item in report.changes] == ["settings:ok"]
    assert any("mail" in str(error) for error in report.errors)


def test_a_broken_task_module_with_a_settings_entry_is_an_e005_not_a_crash_of_check(make_app: Any) -> None:
    from django.core.checks import run_checks

    make_app({"tasks.py": "raise RuntimeError('boom')\n"})
    with declared({"mail": {"task": "app.email", "interval": 60}}):
        ids = [message.id for message in run_checks()]
    assert "django_taskiq_beat.E005" in ids


HAS_TASKIQ_DJANGO = importlib.util.find_spec("taskiq_django") is not None


@pytest.mark.skipif(not HAS_TASKIQ_DJANGO, reason="needs taskiq-django (py312-django60 tox env)")
def test_a_broken_task_module_with_import_taskiq_django_does_not_stop_the_sync(
    app: SchedulerApp, make_app: Any
) -> None:
    from django_taskiq_beat import SchedulerConfig

    make_app({"tasks.py": "raise RuntimeError('boom')\n"})
    with declared({"ok": {"task": "system.echo", "interval": 60}}, IMPORT_TASKIQ_DJANGO=True):
        report = sync_declared(SchedulerApp(broker=app.broker, config=SchedulerConfig.from_settings()))
    assert [item.job_id for item in report.changes] == ["settings:ok"] and report.errors


# -- 4. "run now" on a job no longer declared sends it once; the next sync finishes it again ----------


@pytest.mark.django_db(transaction=True)
def test_run_now_on_an_undeclared_job_sends_once_and_the_job_stays_finished(app: SchedulerApp) -> None:
    from asgiref.sync import async_to_sync

    with declared({"often": {"task": "system.echo", "interval": 60}}):
        assert changes(app) == {"settings:often": "created"}
    with declared({}):
        assert changes(app) == {"settings:often": "finished"}
    app.run_now("settings:often")  # an operator in the admin: "run now" still works on declared jobs
    async_to_sync(app.engine.run_once)()
    assert SchedulerRun.objects.filter(job_id="settings:often").count() == 1
    with declared({}):
        sync_declared(app)  # the next engine start
    job = SchedulerJob.objects.get(pk="settings:often")
    # no longer declared: it must not go on sending every minute (nor can the admin edit it: it is read-only)
    assert job.is_finished and job.next_run_at is None, (job.is_enabled, job.next_run_at, job.finished_at)


# -- 5. PostgreSQL: a float that jsonb reads back as an integer still settles to "unchanged" -----------


@pytest.mark.parametrize("value", [1e23, 1.5e300, 12345678901234567890.0])
def test_a_declaration_with_a_large_float_settles_to_unchanged(app: SchedulerApp, value: float) -> None:
    entry = {"task": "system.echo", "interval": 60, "kwargs": {"limit": value}}
    with declared({"job": entry}):
        assert changes(app) == {"settings:job": "created"}
        assert changes(app) == {"settings:job": "unchanged"}


# -- 6. A task's schedule label that is not a list is an error, and finishes none of the label jobs ----


def test_a_schedule_label_that_is_not_a_list_leaves_the_tasks_jobs_alone(app: SchedulerApp) -> None:
    task = app.broker.find_task("system.echo")
    task.labels["schedule"] = [{"interval": 60, "schedule_id": "beat"}]
    with declared({}):
        assert changes(app) == {"taskiq:beat": "created"}
    task.labels["schedule"] = {"interval": 60, "schedule_id": "beat"}  # a typo: the list's brackets forgotten
    with declared({}):
        report = sync_declared(app)
    assert "schedule label is a list" in str(report.errors[0])
    # docs/declared.md: "The sync logs it as an ERROR, skips it and leaves its existing job as it was, rather than
    # finish a job for a typo"
    assert [(item.job_id, item.change) for item in report.changes] == []
    assert not SchedulerJob.objects.get(pk="taskiq:beat").is_finished


# -- 7. A cron_offset taskiq refuses is reported as an error of cron_offset ----------------------------------------


def test_a_bad_cron_offset_is_an_error_naming_cron_offset(app: SchedulerApp) -> None:
    from django_taskiq_beat.declarations import from_task_labels

    app.broker.find_task("system.echo").labels["schedule"] = [{"cron": "0 9 * * *", "cron_offset": 3}]
    [error] = from_task_labels(app.broker).errors
    assert error.field == "cron_offset", str(error)


# -- 8. A chain's labels (e.g. queue routing) reach its steps' messages too ------


@pytest.mark.django_db(transaction=True)
def test_a_chains_labels_go_with_its_step_messages_too() -> None:
    from taskiq import InMemoryBroker, TaskiqMiddleware

    from django_taskiq_beat import ChainStep, SchedulerConfig
    from django_taskiq_beat.sending import run_from_sync

    sent: list[tuple[str, dict[str, Any]]] = []

    class Capture(TaskiqMiddleware):
        def pre_send(self, message: Any) -> Any:
            sent.append((message.task_name, dict(message.labels)))
            return message

    broker = InMemoryBroker().with_middlewares(Capture())

    async def step() -> str:
        return "done"

    broker.register_task(step, task_name="chain.a")
    app = SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="UTC"))
    app.chain(steps=[ChainStep(task="chain.a")], labels={"queue": "low"}, wait_poll_interval_seconds=0.01).schedule()
    run_from_sync(broker.wait_all)
    by_task = dict(sent)
    assert by_task["taskiq_beat.chain_orchestrator"]["queue"] == "low"
    assert by_task["chain.a"].get("queue") == "low", by_task["chain.a"]  # "sent with every message of the job"


@pytest.mark.skipif(not HAS_TASKIQ_DJANGO, reason="needs taskiq-django (py312-django60 tox env)")
def test_taskiq_django_time_rows_that_ran_do_not_fire_again_when_the_import_is_switched_off_and_on(
    app: SchedulerApp,
) -> None:
    from taskiq_django.models import TaskiqTaskSchedule

    from django_taskiq_beat import SchedulerConfig

    TaskiqTaskSchedule.objects.create(
        schedule_id="launch", task_name="system.echo", time=datetime(2020, 1, 1, tzinfo=UTC)
    )

    def sync(enabled: bool) -> dict[str, str]:
        with declared({}, IMPORT_TASKIQ_DJANGO=enabled):
            return changes(SchedulerApp(broker=app.broker, config=SchedulerConfig.from_settings()))

    assert sync(True) == {"taskiq-django:launch": "created"}
    SchedulerJob.objects.filter(pk="taskiq-django:launch").update(  # the engine sent it: finished
        finished_at=timezone.now(), next_run_at=None, last_run_at=timezone.now(), dispatch_count=1
    )
    assert sync(False) == {"taskiq-django:launch": "finished"}  # one deploy without the setting
    sync(True)
    job = SchedulerJob.objects.get(pk="taskiq-django:launch")
    assert job.next_run_at is None and job.is_finished, "a one-off of 2020 that already ran is due again"
