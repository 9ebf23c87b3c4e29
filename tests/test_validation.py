"""Bad input to the Python API: one exception family, a short message, nothing written.

Each value here once escaped as OverflowError, ZeroDivisionError, RecursionError,
UnicodeEncodeError, IsADirectoryError, OSError, TypeError or a database error, or was
silently rewritten. The suite runs on SQLite and on PostgreSQL (``make test``), where NUL
and lone surrogates are database errors unless refused first.
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as fixed_zone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.utils import timezone
from taskiq import InMemoryBroker

from django_taskiq_beat import (
    ChainStep,
    CrontabTrigger,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulerApp,
    SchedulerConfig,
    SchedulerValidationError,
)
from django_taskiq_beat.models import SchedulerJob, SchedulerRun
from django_taskiq_beat.payloads import MAX_JSON_DEPTH
from django_taskiq_beat.triggers import LATEST

pytestmark = pytest.mark.django_db

HOURLY = PeriodicSchedule(interval=IntervalTrigger(hours=1))
SURROGATE = "bad\ud800text"
NUL = "bad\x00text"


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def rows() -> tuple[int, int]:
    return SchedulerJob.objects.count(), SchedulerRun.objects.count()


@pytest.fixture
def stored(app: SchedulerApp) -> SchedulerJob:
    """A job already there: bad calls must leave it, and the row counts, as they were."""
    return app.single(task="system.echo", args=[1]).schedule(HOURLY, job_id="kept", name="kept")


def refused(action: Callable[[], Any], field: str | None = None) -> SchedulerValidationError:
    """Run ``action``; it must raise SchedulerValidationError (on ``field``) and write nothing."""
    before = rows()
    with pytest.raises(SchedulerValidationError) as caught:
        action()
    assert rows() == before, "a refused call wrote rows"
    assert len(str(caught.value)) < 600, "the message quotes the whole value"
    if field is not None:
        assert caught.value.field == field, str(caught.value)
    return caught.value


# -- intervals and times at the edges -------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "value"),
    [
        ("seconds", 1e300),
        ("seconds", 10**12),
        ("seconds", 1e-9),
        ("seconds", 10**400),
        ("days", 1e300),
        ("minutes", -(10**400)),
        ("hours", 10**399),
    ],
)
def test_interval_extremes_are_refused(unit: str, value: float) -> None:
    refused(lambda: IntervalTrigger(**{unit: value}), unit)


def test_intervals_at_the_bounds_are_kept_and_computable() -> None:
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    assert IntervalTrigger(seconds=0.001).next_after(anchor, anchor) == anchor + timedelta(milliseconds=1)
    assert IntervalTrigger(days=36500).next_after(anchor, anchor) == anchor + timedelta(days=36500)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(9999, 12, 31, 23, 0, tzinfo=ZoneInfo("America/Adak")),  # past year 9999 in UTC
        datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
        datetime.max.replace(tzinfo=fixed_zone(timedelta(hours=-23))),
        datetime.min.replace(tzinfo=ZoneInfo("Pacific/Kiritimati")),  # before year 1 in UTC
        datetime(1, 1, 1, tzinfo=UTC),
    ],
)
@pytest.mark.parametrize("field", ["run_at", "start_at", "end_at"])
def test_datetimes_at_the_calendars_edges_are_refused(moment: datetime, field: str) -> None:
    if field == "run_at":
        refused(lambda: OneOffSchedule(run_at=moment), field)
    else:
        refused(lambda: PeriodicSchedule(interval=IntervalTrigger(hours=1), **{field: moment}), field)


def test_a_start_late_in_year_9999_schedules_and_runs_out_cleanly(app: SchedulerApp) -> None:
    start = datetime(9999, 12, 29, tzinfo=ZoneInfo("Pacific/Kiritimati"))
    job = app.single(task="system.echo").schedule(PeriodicSchedule(interval=IntervalTrigger(days=1), start_at=start))
    slots = [job.next_run_at]
    while slots[-1] is not None:
        slots.append(job.trigger.next_after(slots[-1], job.created_at))
    assert slots == [start, start + timedelta(days=1), None]  # the day after is past LATEST
    yearly = PeriodicSchedule(crontab=CrontabTrigger.from_expression("0 0 1 1 *", "UTC"), start_at=LATEST)
    assert app.single(task="system.echo").schedule(yearly).is_finished


def test_purge_runs_refuses_a_cutoff_past_the_calendar(app: SchedulerApp) -> None:
    refused(lambda: app.purge_runs(finished_before=datetime.max.replace(tzinfo=UTC)), "finished_before")


# -- JSON: depth, key collisions, text, size --------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"args": nested(5000)}, "args"),
        ({"kwargs": {"deep": nested(5000)}}, "kwargs"),
        ({"metadata": {"deep": nested(101)}}, "metadata"),
        ({"kwargs": {"a": {1: "x", "1": "y"}}}, "kwargs"),  # would collide after conversion
        ({"args": [{True: "yes"}]}, "args"),  # would silently become "true"
        ({"args": [NUL]}, "args"),
        ({"args": [SURROGATE]}, "args"),
        ({"kwargs": {"key": {NUL: 1}}}, "kwargs"),
        ({"kwargs": {SURROGATE: 1}}, "kwargs"),
        ({"metadata": {"note": SURROGATE}}, "metadata"),
        ({"args": [10**5000]}, "args"),
    ],
)
def test_bad_json_is_refused(app: SchedulerApp, stored: SchedulerJob, arguments: dict[str, Any], field: str) -> None:
    refused(lambda: app.single(task="system.echo", **arguments).schedule(HOURLY), field)


def test_json_at_the_depth_limit_is_kept(app: SchedulerApp) -> None:
    job = app.single(task="system.echo", args=nested(MAX_JSON_DEPTH)).schedule(HOURLY)
    assert SchedulerJob.objects.get(pk=job.pk).task_args == nested(MAX_JSON_DEPTH)
    refused(lambda: app.single(task="system.echo", args=nested(MAX_JSON_DEPTH + 1)).schedule(HOURLY), "args")


def test_a_chain_step_at_the_depth_limit_is_stored_on_every_database(app: SchedulerApp) -> None:
    step = ChainStep(task="system.echo", args=nested(MAX_JSON_DEPTH), kwargs={"deep": nested(MAX_JSON_DEPTH - 1)})
    job = app.chain(steps=[step]).schedule(HOURLY)
    (stored,) = SchedulerJob.objects.get(pk=job.pk).task_kwargs["steps"]
    assert (stored["args"], stored["kwargs"]["deep"]) == (nested(MAX_JSON_DEPTH), nested(MAX_JSON_DEPTH - 1))


def test_chain_steps_get_the_same_checks(app: SchedulerApp, stored: SchedulerJob) -> None:
    refused(lambda: ChainStep(task="system.echo", kwargs={"x": nested(5000)}), "kwargs")
    refused(lambda: ChainStep(task="system.echo", max_attempts=10**400), "max_attempts")
    refused(lambda: ChainStep(task="system.echo", timeout_seconds=1e300), "timeout_seconds")


def test_a_ten_megabyte_value_makes_a_short_message(app: SchedulerApp) -> None:
    huge = "x" * 10_000_000
    error = refused(lambda: app.single(task="system.echo", args=[huge, {1, 2}]), "args")
    assert "xxx" in str(error)


def test_a_value_whose_repr_fails_still_makes_a_message(app: SchedulerApp) -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert "Unprintable" in str(refused(lambda: app.single(task="system.echo", args=[Unprintable()]), "args"))


# -- text: ids, names, descriptions, task names, timezones ------------------------------------------


@pytest.mark.parametrize("text", [NUL, SURROGATE])
@pytest.mark.parametrize("field", ["job_id", "name", "description"])
def test_nul_and_lone_surrogates_are_refused(
    app: SchedulerApp, stored: SchedulerJob, call: Any, field: str, text: str
) -> None:
    refused(lambda: call(app.single(task="system.echo"), "schedule", HOURLY, **{field: text}), field)
    if field == "job_id":
        refused(lambda: call(app.single(task="system.echo"), "upsert", HOURLY, job_id=text), field)
    else:
        refused(lambda: call(app.single(task="system.echo"), "upsert", HOURLY, job_id="kept", **{field: text}), field)
    assert SchedulerJob.objects.get(pk="kept").name == "kept"


@pytest.mark.parametrize("text", [NUL, SURROGATE, 42, None])
@pytest.mark.parametrize("method", ["get_job", "pause", "resume", "run_now", "delete"])
def test_bad_ids_given_to_the_job_operations_are_refused(
    app: SchedulerApp, stored: SchedulerJob, call: Any, method: str, text: Any
) -> None:
    refused(lambda: call(app, method, text), "job_id")


def test_task_names_longer_than_the_column_are_refused(app: SchedulerApp, broker: InMemoryBroker) -> None:
    long_name = "long." + "x" * 300
    broker.register_task(lambda: None, task_name=long_name)
    refused(lambda: app.single(task=long_name), "task")
    refused(lambda: ChainStep(task=long_name), "task")


@pytest.mark.parametrize("zone", ["Europe", "x" * 300, "Europe/" + "x" * 300, NUL, SURROGATE, "../../etc"])
def test_bad_timezone_names_are_refused(zone: str) -> None:
    refused(lambda: CrontabTrigger(timezone=zone), "timezone")
    refused(lambda: SchedulerConfig(default_timezone=zone), "default_timezone")


@pytest.mark.parametrize("zone", ["Europe", "x" * 300])
def test_manage_py_check_reports_a_bad_timezone_as_e002(settings: Any, zone: str) -> None:
    from django.core.management.base import SystemCheckError

    settings.TASKIQ_BEAT = {"BROKER": "testproject.tasks:broker", "DEFAULT_TIMEZONE": zone}
    with pytest.raises(SystemCheckError, match=r"django_taskiq_beat.E002"):
        call_command("check")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("claim_ttl_seconds", 10**15),
        ("sync_interval_seconds", 1e300),
        ("dispatch_batch_size", 10**400),
        ("run_history_retention_days", 10**9),
        ("scheduler_id", NUL),
    ],
)
def test_config_extremes_are_refused(field: str, value: Any) -> None:
    refused(lambda: SchedulerConfig(**{field: value}), field)


# -- arguments the task cannot take -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "field"),
    [
        ("demo.heartbeat", [], {"self": 1}, "kwargs"),  # kiq(self, ...) cannot pass it
        ("demo.greet", [], {"nobody": "x"}, "kwargs"),
        ("demo.greet", [], {"name-with-dash": "x"}, "kwargs"),
        ("demo.greet", [1, 2, 3], {}, "args"),
        ("demo.greet", [], {}, "args"),  # the name is missing
        ("demo.add", [1], {"left": 2}, "kwargs"),
    ],
)
def test_arguments_the_task_cannot_take_are_refused_when_scheduling(
    task: str, args: list[Any], kwargs: dict[str, Any], field: str
) -> None:
    from django_taskiq_beat import get_scheduler_app

    app = get_scheduler_app()  # the demo project's tasks
    refused(lambda: app.single(task=task, args=args, kwargs=kwargs).schedule(HOURLY), field)
    refused(
        lambda: app.chain(steps=[ChainStep(task=task, args=args, kwargs=kwargs)]).schedule(HOURLY), f"steps[0].{field}"
    )


def test_arguments_the_task_can_take_are_kept(app: SchedulerApp) -> None:
    from django_taskiq_beat import get_scheduler_app

    job = get_scheduler_app().single(task="demo.greet", args=["Ada"], kwargs={"punctuation": "?"}).schedule(HOURLY)
    assert (job.task_args, job.task_kwargs) == (["Ada"], {"punctuation": "?"})
    assert app.single(task="system.echo", kwargs={"any-key": 1}).schedule(HOURLY).task_kwargs == {"any-key": 1}


# -- cron length ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: CrontabTrigger(minute=",".join(["1"] * 200_000)),
        lambda: CrontabTrigger(second=10**400),
        lambda: CrontabTrigger.from_expression("0 " + ",".join(["1"] * 200_000) + " * * *"),
        lambda: CrontabTrigger.every(seconds=10**400),
    ],
)
def test_huge_cron_fields_are_refused(build: Callable[[], Any]) -> None:
    refused(build)  # croniter would accept them, at seconds of CPU per evaluation


def test_every_minute_listed_is_still_a_valid_cron_field() -> None:
    every_minute = ",".join(str(minute) for minute in range(60))
    assert CrontabTrigger(minute=every_minute).minute == every_minute


# -- taken ids ---------------------------------------------------------------------------------------


def test_upsert_still_changes_an_existing_job(app: SchedulerApp, stored: SchedulerJob) -> None:
    changed = app.single(task="system.other").upsert(HOURLY, job_id="kept", name="changed")
    assert (changed.name, changed.task_name) == ("changed", "system.other")
    assert timezone.now() < changed.next_run_at


# -- found by review: objects that answer otherwise than the value they hold ------------------------


class RaisingZone(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("tz database unavailable")

    def dst(self, dt: datetime | None) -> None:
        return None


class HugeZone(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=30)

    def dst(self, dt: datetime | None) -> None:
        return None


class LyingLength(str):
    def __len__(self) -> int:
        return 1


class HidingNul(str):
    def __contains__(self, item: object) -> bool:
        return False


class IdentityKey(str):
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


@pytest.mark.parametrize("zone", [RaisingZone(), HugeZone()])
def test_a_tzinfo_that_raises_or_lies_is_refused(app: SchedulerApp, zone: tzinfo) -> None:
    refused(lambda: OneOffSchedule(run_at=datetime(2030, 1, 1, tzinfo=zone)), "run_at")
    refused(lambda: app.purge_runs(finished_before=datetime(2030, 1, 1, tzinfo=zone)), "finished_before")


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda app: app.single(task="system.echo").schedule(HOURLY, job_id=LyingLength("x" * 300)), "job_id"),
        (lambda app: app.single(task="system.echo").schedule(HOURLY, job_id=HidingNul("a\x00b")), "job_id"),
        (lambda app: app.single(task="system.echo", args=[HidingNul("a\x00b")]), "args"),
        (lambda app: app.single(task="system.echo", kwargs={IdentityKey("a"): 1, IdentityKey("a"): 2}), "kwargs"),
        (lambda app: app.single(task="system.echo", args=[{"x": {IdentityKey("a"): 1, IdentityKey("a"): 2}}]), "args"),
        (lambda app: ChainStep(task=type("Task", (), {"task_name": property(lambda self: 1 / 0)})()), "task"),
    ],
)
def test_str_subclasses_and_odd_objects_are_judged_by_the_text_they_hold(
    app: SchedulerApp, build: Callable[[SchedulerApp], Any], field: str | None
) -> None:
    refused(lambda: build(app), field)


def test_a_plain_str_subclass_is_stored_as_plain_text(app: SchedulerApp) -> None:
    class Name(str):
        pass

    job = app.single(task=Name("system.echo"), args=[Name("x")]).schedule(HOURLY, job_id=Name("plain"), name=Name("n"))
    stored = SchedulerJob.objects.get(pk="plain")
    assert type(job.id) is str and (stored.name, stored.task_name, stored.task_args) == ("n", "system.echo", ["x"])


@pytest.mark.parametrize("zone", ["localtime", "Factory", "posixrules", "zone.tab"])
def test_host_dependent_and_placeholder_zones_are_refused(zone: str) -> None:
    refused(lambda: CrontabTrigger(timezone=zone), "timezone")


@pytest.mark.parametrize(
    ("field", "value"), [("minute", "R"), ("hour", "H"), ("minute", "1,r"), ("minute", "H(0-29)/5")]
)
def test_random_and_hashed_cron_values_are_refused(field: str, value: str) -> None:
    refused(lambda: CrontabTrigger(**{field: value}), field)


def test_the_chain_orchestrator_is_not_a_single_task(app: SchedulerApp) -> None:
    from django_taskiq_beat import CHAIN_ORCHESTRATOR_TASK_NAME

    refused(lambda: app.single(task=CHAIN_ORCHESTRATOR_TASK_NAME, kwargs={"steps": 5}), "task")


@pytest.mark.django_db(transaction=True)
def test_an_immediate_dispatch_is_recorded_through_a_database_blip(
    app: SchedulerApp, recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    from django_taskiq_beat.builders import ScheduleBuilder

    real_record, failures = ScheduleBuilder._record, [1]

    def flaky_record(self: ScheduleBuilder, *args: Any) -> None:
        if failures:
            failures.pop()
            raise OperationalError("database is locked")
        real_record(self, *args)

    monkeypatch.setattr(ScheduleBuilder, "_record", flaky_record)
    job = app.single(task="system.echo", args=["once"]).schedule()
    run = SchedulerRun.objects.get(job=job)
    assert run.status == "dispatched" and run.lease_expires_at is None  # no engine will send it again
    assert recorder.calls == [("system.echo", ("once",), {})]


def test_a_huge_unexpected_keyword_makes_a_short_message() -> None:
    from django_taskiq_beat import get_scheduler_app

    refused(
        lambda: get_scheduler_app().single(task="demo.greet", kwargs={"x" * 10_000_000: 1}).schedule(HOURLY), "kwargs"
    )


@pytest.mark.parametrize("key", [None, 1, 1.5, True])
def test_a_key_that_is_not_a_string_is_named_as_such(app: SchedulerApp, key: Any) -> None:
    error = refused(lambda: app.single(task="system.echo", kwargs={"outer": {key: 1}}), "kwargs")
    assert "keys must be strings" in str(error) and "kwargs['outer']" in str(error)
