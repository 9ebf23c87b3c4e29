"""``manage.py taskiq_beat``: every subcommand on real rows, tables and ``--json``, exit statuses.

Most tests call the command in-process (``call_command``); those about what a shell or a
probe sees (exit status, stderr) run ``manage.py`` as a process on the test database.
"""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from django_taskiq_beat import IntervalTrigger, OneOffSchedule, PeriodicSchedule, SchedulerApp, get_scheduler_app
from django_taskiq_beat.models import RunStatus, SchedulerEngine, SchedulerJob, SchedulerRun
from tests.processes import manage

EVERY_FIVE = PeriodicSchedule(interval=IntervalTrigger(minutes=5))


@pytest.fixture
def app() -> SchedulerApp:
    return get_scheduler_app()


def run(*arguments: str) -> tuple[int, str, str]:
    """The command in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("taskiq_beat", *arguments, stdout=out, stderr=err)
        status = 0
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    return status, out.getvalue(), err.getvalue()


def engine_row(name: str, heartbeat_age: float, stopped: bool = False, **counters: int) -> SchedulerEngine:
    now = timezone.now()
    return SchedulerEngine.objects.create(
        id=name,
        hostname="host-a",
        pid=4242,
        version="0.1.0",
        started_at=now - timedelta(hours=1),
        heartbeat_at=now - timedelta(seconds=heartbeat_age),
        stopped_at=now if stopped else None,
        **counters,
    )


@pytest.fixture
def jobs(app: SchedulerApp) -> dict[str, SchedulerJob]:
    active = app.single(task="demo.greet", args=["Ada"]).schedule(EVERY_FIVE, job_id="greet", name="Greeting")
    paused = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, job_id="beat")
    app.pause("beat", note="quiet hours")
    once = app.single(task="demo.add", args=[1, 2]).schedule(
        OneOffSchedule(run_at=timezone.now() + timedelta(hours=1)), job_id="once"
    )
    SchedulerRun.objects.create(
        job=active,
        scheduled_for=timezone.now() - timedelta(minutes=5),
        status=RunStatus.DISPATCHED,
        dispatched_at=timezone.now(),
        outcome="failed",
        error="ValueError: boom",
    )
    return {"greet": active, "beat": SchedulerJob.objects.get(pk=paused.pk), "once": once}


# -- reading ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_status_shows_engines_and_jobs(jobs: dict[str, SchedulerJob]) -> None:
    engine_row("engine-live", 1, dispatched_count=12)
    engine_row("engine-dead", 120)
    engine_row("engine-stopped", 300, stopped=True)
    status, out, _ = run("status")
    assert status == 0
    assert "Engines: 1 alive, 1 dead, 1 stopped" in out
    assert "engine-live" in out and "host-a" in out and "12" in out
    assert "Jobs: 3 (2 active, 0 failing, 1 paused, 0 finished)" in out
    data = json.loads(run("status", "--json")[1])
    assert {engine["id"]: engine["state"] for engine in data["engines"]} == {
        "engine-live": "alive",
        "engine-dead": "dead",
        "engine-stopped": "stopped",
    }
    assert data["jobs"]["by_state"]["paused"] == 1 and data["jobs"]["total"] == 3
    assert (data["jobs"]["overdue"], data["jobs"]["oldest_overdue"]) == (0, None)


@pytest.mark.django_db
def test_status_names_the_oldest_overdue_job(jobs: dict[str, SchedulerJob]) -> None:
    SchedulerJob.objects.filter(pk="greet").update(next_run_at=timezone.now() - timedelta(minutes=10))
    out = run("status")[1]
    assert "1 overdue by more than 60 s (the oldest, greet, due 10 min ago)" in out
    data = json.loads(run("status", "--json")[1])
    assert (data["jobs"]["overdue"], data["jobs"]["oldest_overdue"]) == (1, "greet")


@pytest.mark.django_db
def test_list_filters_by_state_and_task(jobs: dict[str, SchedulerJob]) -> None:
    status, out, _ = run("list")
    assert status == 0 and out.splitlines()[0].split()[:4] == ["ID", "NAME", "TASK", "SCHEDULE"]
    assert all(job_id in out for job_id in ("greet", "beat", "once")) and "every 5 minutes" in out
    assert [job["id"] for job in json.loads(run("list", "--json", "--state", "paused")[1])] == ["beat"]
    assert [job["id"] for job in json.loads(run("list", "--json", "--task", "demo.add")[1])] == ["once"]
    assert len(json.loads(run("list", "--json", "--limit", "2")[1])) == 2


@pytest.mark.django_db
def test_show_gives_the_job_its_fire_times_and_runs(jobs: dict[str, SchedulerJob]) -> None:
    status, out, _ = run("show", "greet")
    assert status == 0
    assert "Greeting" in out and "every 5 minutes" in out and "ValueError: boom" in out
    data = json.loads(run("show", "greet", "--json")[1])
    assert data["id"] == "greet" and data["args"] == ["Ada"] and len(data["next_fire_times"]) == 5
    assert data["recent_runs"][0]["outcome"] == "failed"
    paused = json.loads(run("show", "beat", "--json")[1])
    assert paused["pause_note"] == "quiet hours" and paused["next_fire_times"] == []


# -- changing ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pause_resume_run_now_and_delete_go_through_the_app(jobs: dict[str, SchedulerJob]) -> None:
    assert run("pause", "greet", "once", "--note", "deploy") == (0, "paused greet\npaused once\n", "")
    assert SchedulerJob.objects.get(pk="greet").pause_note == "deploy"
    assert run("resume", "greet")[0] == 0 and SchedulerJob.objects.get(pk="greet").is_enabled
    assert run("run-now", "beat")[0] == 0
    beat = SchedulerJob.objects.get(pk="beat")
    assert beat.is_enabled and beat.next_run_at <= timezone.now() and beat.pause_note is None
    status, _, err = run("delete", "once")
    assert status == 1 and "--yes" in err and SchedulerJob.objects.filter(pk="once").exists()
    assert run("delete", "once", "--yes")[0] == 0 and not SchedulerJob.objects.filter(pk="once").exists()


@pytest.mark.django_db
def test_a_missing_id_is_one_line_and_exit_1_and_the_others_are_done(jobs: dict[str, SchedulerJob]) -> None:
    status, out, err = run("pause", "nope", "greet")
    assert status == 1 and out == "paused greet\n"
    assert err.splitlines() == ["job_id='nope': Scheduler job 'nope' was not found."]
    for arguments in (("show", "nope"), ("resume", "nope"), ("run-now", "nope"), ("delete", "nope", "--yes")):
        status, _, err = run(*arguments)
        assert status == 1 and len(err.splitlines()) == 1 and "'nope'" in err, arguments


@pytest.mark.django_db
def test_purge_runs_deletes_old_history(jobs: dict[str, SchedulerJob]) -> None:
    SchedulerRun.objects.filter(job_id="greet").update(finished_at=timezone.now() - timedelta(days=40))
    assert json.loads(run("purge-runs", "--older-than", "30", "--json")[1])["deleted"] == 1
    assert not SchedulerRun.objects.exists()
    assert run("purge-runs", "--older-than", "30")[1].startswith("deleted 0 runs")


@pytest.mark.django_db
def test_sync_prints_one_line_per_job_and_a_dry_run_writes_nothing() -> None:
    entry = {"task": "demo.heartbeat", "interval": 60}
    with override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": {"beat": entry}}):
        status, out, err = run("sync", "--dry-run")
        assert (status, err) == (0, "")
        assert "settings:beat  would be created  TASKIQ_BEAT['SCHEDULE']['beat']" in out
        assert out.endswith("Dry run, nothing written: 1 created, 0 updated, 0 unchanged, 0 finished.\n")
        assert not SchedulerJob.objects.exists()
        assert run("sync")[1].splitlines()[1].split() == ["settings:beat", "created", "TASKIQ_BEAT['SCHEDULE']['beat']"]
        status, out, _ = run("sync", "--json")
        assert json.loads(out)["jobs"] == [
            {"job_id": "settings:beat", "change": "unchanged", "declared_in": "TASKIQ_BEAT['SCHEDULE']['beat']"}
        ]
    with override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker"}):
        assert "settings:beat  finished" in run("sync")[1]


@pytest.mark.django_db
def test_sync_names_each_entry_it_could_not_sync_and_exits_1() -> None:
    bad = {"task": "demo.heartbeat", "cron": "0 25 * * *"}
    with override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": {"bad": bad}}):
        status, _, err = run("sync")
    assert status == 1
    assert err.startswith("not synced: TASKIQ_BEAT['SCHEDULE']['bad']: cron: hour='25'")


# -- health --------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_health_fails_without_a_live_engine_and_names_the_last_one() -> None:
    status, out, _ = run("health")
    lines = out.splitlines()
    assert status == 1 and len(lines) == 3, out  # it stops at the first failure
    assert lines[0].startswith("database: OK (") and lines[1] == "migrations: OK (applied)"
    assert lines[2].startswith("engines: FAILED (no engine alive")
    engine_row("engine-old", 120)
    assert "from engine-old (host-a:4242)" in run("health")[1]


@pytest.mark.django_db
def test_health_passes_with_a_live_engine_and_no_overdue_job(app: SchedulerApp) -> None:
    engine_row("engine-live", 2)
    app.single(task="demo.heartbeat").schedule(EVERY_FIVE)
    status, out, _ = run("health")
    assert status == 0 and out.splitlines()[-1].startswith("schedule: OK")
    data = json.loads(run("health", "--json")[1])
    assert data["healthy"] is True and [check["name"] for check in data["checks"]] == [
        "database",
        "migrations",
        "engines",
        "schedule",
    ]


@pytest.mark.django_db
def test_health_fails_on_a_job_overdue_by_more_than_max_lag(app: SchedulerApp) -> None:
    engine_row("engine-live", 2)
    job = app.single(task="demo.heartbeat").schedule(EVERY_FIVE, job_id="late")
    SchedulerJob.objects.filter(pk=job.pk).update(next_run_at=timezone.now() - timedelta(seconds=90))
    status, out, _ = run("health")
    assert status == 1 and "schedule: FAILED" in out and "'late'" in out
    assert run("health", "--max-lag", "120")[0] == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("arguments", "status", "stderr"),
    [
        (("health",), 1, ""),
        (("show", "missing"), 1, "job_id='missing': Scheduler job 'missing' was not found.\n"),
        (("list", "--json"), 0, ""),
    ],
)
def test_as_a_process_the_exit_status_and_stderr_are_what_a_probe_sees(
    arguments: tuple[str, ...], status: int, stderr: str
) -> None:
    result = manage("taskiq_beat", *arguments)
    assert (result.returncode, result.stderr) == (status, stderr), result.stderr
    if "--json" in arguments:
        assert json.loads(result.stdout) == []
    if arguments == ("health",):
        assert "engines: FAILED" in result.stdout and "Traceback" not in result.stdout


@pytest.mark.parametrize(
    "arguments",
    [
        ("purge-runs",),
        ("purge-runs", "--older-than", "-1"),
        ("health", "--max-lag", "0"),
        ("list", "--state", "sleeping"),
        (),
    ],
)
def test_bad_arguments_are_usage_errors(arguments: tuple[str, ...]) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("taskiq_beat", *arguments)


@pytest.mark.django_db
def test_a_bad_declaration_stops_neither_taskiq_beat_nor_its_sync_but_manage_py_check_reports_it() -> None:
    from django.core.management.base import SystemCheckError

    bad = {"task": "demo.heartbeat", "cron": "0 25 * * *"}
    with override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": {"bad": bad}}):
        out, err = io.StringIO(), io.StringIO()
        call_command("taskiq_beat", "status", skip_checks=False, stdout=out, stderr=err)
        assert "JOBS" in out.getvalue().upper()
        with pytest.raises(SystemCheckError, match=r"E005.*TASKIQ_BEAT\['SCHEDULE'\]\['bad'\]"):
            call_command("check")
