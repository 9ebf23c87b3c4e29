"""Property-based tests (hypothesis) over the whole public API, the admin's job form and its run filter.

Whatever the input, a call either gives a job that reads back whole from the database or
raises ``SchedulerValidationError`` and leaves every row as it was; the form either saves a
readable job or shows form errors, never a 500. The values mix what users type with what
breaks code: lone surrogates, NUL, huge and tiny numbers, the calendar's edges, deep nesting.
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import timezone as fixed_zone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from taskiq import InMemoryBroker

from django_taskiq_beat import (
    ChainStep,
    CrontabTrigger,
    ImmediateDispatch,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulePolicy,
    SchedulerApp,
    SchedulerValidationError,
)
from django_taskiq_beat.conf import BACKFILL_CLAIMANT, WAITING_CLAIMANT
from django_taskiq_beat.middleware import RunOutcomeMiddleware
from django_taskiq_beat.models import SHOWN_STATUSES, RunStatus, SchedulerJob, SchedulerRun
from django_taskiq_beat.payloads import json_identity
from tests.conftest import nested
from tests.test_admin import ADD, JOBS, form_data

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/Adak",
    "Pacific/Kiritimati",
    "Asia/Kolkata",
    "Europe",
    "Mars/Base",
    "x" * 300,
    "",
    "utc",
    "../etc/passwd",
    "Europe/Berlin\x00",
    "\ud800",
]
HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "x" * 300,
    "x" * 5000,
    "1e300",
    "-1",
    "*/0",
    "@daily",
    "0 0 30 2 *",
    "∞",
    "null",
    "__proto__",
    "self",
]

texts = st.one_of(st.text(max_size=40), st.sampled_from(HOSTILE_TEXT))
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.sampled_from([0, -0.0, 1e-9, 1e-300, 1e300, 10**12, 0.001, 36500, 36501, 86400 * 36500]),
)
zones = st.one_of(st.sampled_from(ZONES), st.text(max_size=20))
instants = st.one_of(
    st.datetimes(
        timezones=st.sampled_from(
            [
                UTC,
                ZoneInfo("America/Adak"),
                ZoneInfo("Pacific/Kiritimati"),
                fixed_zone(timedelta(hours=-23, minutes=-59)),
            ]
        )
    ),
    st.datetimes(),  # naive
    st.sampled_from(
        [
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
            datetime(9999, 12, 31, 23, tzinfo=ZoneInfo("America/Adak")),
        ]
    ),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.one_of(texts, st.integers(), st.booleans(), st.none()), children, max_size=4)
    ),
    max_leaves=12,
)


payloads = st.one_of(json_like, st.integers(min_value=1, max_value=6000).map(nested), st.just({1: "x", "1": "y"}))
anything = st.one_of(scalars, instants, payloads, st.builds(object))
cron_fields = st.one_of(
    st.sampled_from(["*", "0", "*/5", "1-5", "mon", "jan", "7", "60", "*/0", "5-1", "L"]), texts, st.integers()
)


def mostly(friendly: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a value a user would give, one time in four a hostile one: both paths get exercised."""
    return st.sampled_from([friendly, friendly, friendly, hostile]).flatmap(lambda chosen: chosen)


friendly_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=10)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
friendly_labels = st.dictionaries(
    st.one_of(st.sampled_from(["queue", "priority", "scheduler_slot", "schedule"]), st.text(max_size=8)),
    st.one_of(st.text(max_size=8), st.integers(-10, 10), st.booleans(), st.floats(allow_nan=False)),
    max_size=3,
)
friendly_instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, ZoneInfo("Asia/Tokyo")]),
)


@st.composite
def triggers(draw: st.DrawFn) -> Callable[[], Any]:
    """A trigger to build inside the call: building it may itself be the refusal."""
    kind = draw(st.sampled_from(["interval", "crontab", "expression", "one_off", "window", "immediate", "junk"]))
    if kind == "interval":
        unit = draw(st.sampled_from(["seconds", "minutes", "hours", "days"]))
        value = draw(mostly(st.integers(1, 1000), numbers))
        return lambda: PeriodicSchedule(interval=IntervalTrigger(**{unit: value}))
    if kind == "crontab":
        fields = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    name: mostly(st.sampled_from(["*", "0", "*/5", "1-5", "1,2"]), cron_fields)
                    for name in ("second", "minute", "hour", "day_of_month", "month_of_year", "day_of_week")
                },
            )
        )
        zone = draw(mostly(st.sampled_from([None, "UTC", "Europe/Berlin"]), zones))
        return lambda: PeriodicSchedule(crontab=CrontabTrigger(**fields, timezone=zone))
    if kind == "expression":
        expression = draw(mostly(st.sampled_from(["*/5 * * * *", "0 9 * * mon", "@hourly"]), texts))
        zone = draw(mostly(st.just("UTC"), zones))
        return lambda: PeriodicSchedule(crontab=CrontabTrigger.from_expression(expression, zone))
    if kind == "one_off":
        moment = draw(mostly(friendly_instants, st.one_of(instants, anything)))
        zone = draw(st.one_of(st.none(), mostly(st.just("Asia/Tokyo"), zones)))
        return lambda: OneOffSchedule(run_at=moment, timezone=zone)
    if kind == "window":
        start = draw(st.one_of(st.none(), mostly(friendly_instants, instants)))
        end = draw(st.one_of(st.none(), mostly(friendly_instants, instants)))
        return lambda: PeriodicSchedule(interval=IntervalTrigger(minutes=5), start_at=start, end_at=end)
    if kind == "immediate":
        return ImmediateDispatch
    junk = draw(anything)
    return lambda: junk


@pytest.fixture
def broker(broker: InMemoryBroker) -> InMemoryBroker:
    """The suite's broker, reporting outcomes: the policies that read them are accepted too."""
    return broker.with_middlewares(RunOutcomeMiddleware())


@st.composite
def api_calls(draw: st.DrawFn) -> tuple[str, Callable[[SchedulerApp], Any]]:
    """One public operation with fuzzed arguments."""
    operation = draw(st.sampled_from(["schedule", "upsert", "chain", "manage", "backfill", "purge"]))
    task = draw(mostly(st.sampled_from(["system.echo", "system.other"]), st.one_of(texts, anything)))
    args, kwargs, metadata = (
        draw(mostly(friendly_json.map(wrap), payloads)) for wrap in (_as_list, _as_dict, _as_dict)
    )
    labels = draw(st.one_of(st.none(), mostly(friendly_labels, payloads)))
    policy_values = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "overlap": mostly(st.sampled_from(["allow", "skip", "buffer_one"]), anything),
                    "misfire_grace_seconds": mostly(st.one_of(st.none(), st.floats(0, 3600)), anything),
                    "catch_up": mostly(st.sampled_from(["latest", "all"]), anything),
                    "jitter_seconds": mostly(st.floats(0, 60), numbers),
                    "pause_after_failures": mostly(st.one_of(st.none(), st.integers(1, 10)), numbers),
                    "max_runs": mostly(st.one_of(st.none(), st.integers(1, 10)), numbers),
                },
            ),
        )
    )

    def policy() -> SchedulePolicy | None:
        return None if policy_values is None else SchedulePolicy(**policy_values)

    trigger = draw(triggers())
    identity = {
        "job_id": draw(
            mostly(st.one_of(st.none(), st.just("kept"), st.text(min_size=1, max_size=20)), st.one_of(texts, anything))
        ),
        "name": draw(mostly(st.one_of(st.none(), st.text(max_size=20)), st.one_of(texts, anything))),
        "description": draw(mostly(st.one_of(st.none(), st.text(max_size=50)), st.one_of(texts, anything))),
    }
    enabled = draw(mostly(st.booleans(), anything))
    if operation == "schedule":
        return operation, lambda app: app.single(
            task=task,
            args=args,
            kwargs=kwargs,
            metadata=metadata,
            labels=labels,
        ).schedule(trigger(), is_enabled=enabled, policy=policy(), **identity)
    if operation == "upsert":
        return operation, lambda app: app.single(task=task, args=args, kwargs=kwargs, labels=labels).upsert(
            trigger(), is_enabled=enabled, policy=policy(), **identity
        )
    if operation == "chain":
        attempts, delay = draw(mostly(st.integers(1, 5), numbers)), draw(mostly(st.floats(0, 10), numbers))
        return operation, lambda app: app.chain(
            steps=[
                ChainStep(task=task, args=args, kwargs=kwargs, max_attempts=attempts),
                ChainStep(task="system.echo"),
            ],
            default_step_retry_delay_seconds=delay,
            metadata=metadata,
            labels=labels,
        ).schedule(trigger(), **identity)
    if operation == "manage":
        method = draw(st.sampled_from(["get_job", "pause", "resume", "run_now", "delete"]))
        return method, lambda app: getattr(app, method)(identity["job_id"])
    if operation == "backfill":
        hours_ago = st.integers(-2, 48).map(lambda hours: timedelta(hours=hours))
        start, end = (draw(mostly(hours_ago, st.one_of(instants, anything))) for _ in range(2))
        return operation, lambda app: app.backfill(identity["job_id"], _before_now(start), _before_now(end))
    cutoff = draw(mostly(friendly_instants, st.one_of(instants, anything)))
    return operation, lambda app: app.purge_runs(finished_before=cutoff)


def _before_now(value: Any) -> Any:
    """A drawn ``timedelta`` as that long before the call; any other value as it was drawn."""
    return timezone.now() - value if isinstance(value, timedelta) else value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"value": value}


def table_state() -> tuple[Any, ...]:
    return tuple(SchedulerJob.objects.order_by("pk").values_list()), SchedulerRun.objects.count()


@FUZZ
@given(call=api_calls())
def test_any_api_call_gives_a_readable_job_or_a_validation_error_and_writes_nothing(
    app: SchedulerApp, call: tuple[str, Callable[[SchedulerApp], Any]]
) -> None:
    name, operation = call
    with transaction.atomic():
        app.single(task="system.echo", args=[1]).upsert(PeriodicSchedule(interval=IntervalTrigger(hours=1)), "kept")
        before = table_state()
        try:
            with transaction.atomic():
                result = operation(app)
        except SchedulerValidationError as error:
            event(f"{name}: refused {error.field!a}")  # hypothesis's statistics must encode as UTF-8
            assert len(str(error)) < 1000
            assert table_state() == before, f"{name} refused but wrote"
        else:
            event(f"{name}: done")
            if isinstance(result, SchedulerJob):
                stored = SchedulerJob.objects.get(pk=result.pk)  # every column reads back as the same JSON
                assert json_identity(
                    (stored.task_args, stored.task_kwargs, stored.metadata_payload, stored.task_labels)
                ) == json_identity((result.task_args, result.task_kwargs, result.metadata_payload, result.task_labels))
                stored.trigger  # noqa: B018  (the stored trigger can be rebuilt)
                SchedulePolicy.of(stored)  # and so can its policy
        transaction.set_rollback(True)


# -- the admin form ---------------------------------------------------------------------------------

FORM_TEXT = [
    "1e300",
    "1e-9",
    "nan",
    "inf",
    "-0",
    "0.0005",
    "99999999",
    "9999-12-31T23:59:59",
    "0001-01-01T00:00:00",
    "9999-06-01T00:00:00",
    "2030-02-30T00:00:00",
    "[" * 3000 + "]" * 3000,
    '["\\ud800"]',
    '["\\u0000"]',
    '{"self": 1}',
    '{"a": {"1": 2}}',
    "[1, 2]",
    "{}",
    "[]",
    "*/5 * * * *",
    "0 0 30 2 *",
    "mon",
    "61",
    ",".join(["1"] * 400),
    "taken",
    "x" * 300,
    '{"queue": [1]}',
    '{"scheduler_job_id": 1}',
    '{"priority": 3}',
    "settings:x",
    "taskiq:y",
    "a\x00b",
    "Mars/Base",
    "Europe",
    "one_off",
    "crontab",
    "skip",
    "buffer_one",
]
form_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30), st.sampled_from(FORM_TEXT)
)
FIELDS = [
    "name",
    "description",
    "job_id",
    "task",
    "task_name",
    "args",
    "kwargs",
    "schedule_type",
    "interval_every",
    "interval_unit",
    "cron_expression",
    "second",
    "minute",
    "hour",
    "day_of_month",
    "month_of_year",
    "day_of_week",
    "timezone",
    "run_at",
    "start_at",
    "end_at",
    "is_enabled",
    "labels",
    "misfire_grace_seconds",
    "overlap",
    "catch_up",
    "jitter_seconds",
    "pause_after_failures",
    "max_runs",
]


@FUZZ
@given(overrides=st.dictionaries(st.sampled_from(FIELDS), form_text, max_size=6))
def test_any_form_input_saves_a_readable_job_or_shows_errors(
    admin_client: Client, app: SchedulerApp, overrides: dict[str, str]
) -> None:
    with transaction.atomic():
        app.single(task="system.echo").upsert(PeriodicSchedule(interval=IntervalTrigger(hours=1)), "taken")
        before = table_state()
        response = admin_client.post(ADD, form_data(**overrides))
        assert response.status_code in (200, 302), response.status_code
        event(f"form: {response.status_code}")
        if response.status_code == 200:
            assert response.context["adminform"].form.errors, "a 200 without errors"
            assert table_state() == before, "the form showed errors but wrote"
        else:
            created = SchedulerJob.objects.exclude(pk="taken").get()
            created.trigger  # noqa: B018
            assert SchedulerJob.objects.get(pk="taken").task_name == "system.echo"
            assert admin_client.get(response["Location"]).status_code == 200
        transaction.set_rollback(True)


BACKFILL_TEXT = [
    "2026-12-03T10:00:00",
    "2026-12-03T09:00",
    "2026-12-03 08:00:00",
    "2026-03-29T02:30:00",
    "2026-10-25T02:30:00",
    "9999-12-31T23:59:59",
    "0001-01-01T00:00:00",
    "2030-02-30T00:00:00",
    "1970-01-01T00:00:00",
    "now",
    "",
    "a\x00b",
    "UTC",
    "Europe/Berlin",
    "America/Adak",
    "Pacific/Kiritimati",
    "Etc/GMT-14",
    "Mars/Base",
    "Europe",
]
backfill_text = st.one_of(
    st.sampled_from(BACKFILL_TEXT), st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20)
)
backfill_time = mostly(st.integers(-2, 2000).map(lambda hours: timedelta(hours=hours)), backfill_text)
backfill_zone = mostly(st.sampled_from(["UTC", "Europe/Berlin", "America/Adak", "Pacific/Kiritimati"]), backfill_text)


@st.composite
def backfill_fields(draw: st.DrawFn) -> dict[str, timedelta | str]:
    """The form's fields; two drawn times ago are put in order one time in two, so that most ranges are ranges."""
    start, end = draw(backfill_time), draw(backfill_time)
    if isinstance(start, timedelta) and isinstance(end, timedelta) and draw(st.booleans()):
        start, end = max(start, end), min(start, end)
    return {"start": start, "end": end, "timezone": draw(backfill_zone)}


@FUZZ
@given(fields=backfill_fields())
def test_any_backfill_range_in_the_admin_backfills_or_says_why_not(
    admin_client: Client, app: SchedulerApp, fields: dict[str, timedelta | str]
) -> None:
    """The backfill action's range and zone: the form's errors, a job's refusal as a message, or runs; never a 500.

    A drawn ``timedelta`` is typed as the UTC time that long ago, to the minute, as the form's widget sends it.
    Where the whole range is so typed and the zone is a real one, the outcome is known beforehand: the job's
    whole UTC hours in the range (up to now) as runs, more than 1,000 of them refused, and a time the zone skips
    or repeats a form error.
    """
    with transaction.atomic():
        app.single(task="system.echo").upsert(PeriodicSchedule(interval=IntervalTrigger(hours=1)), "kept")
        SchedulerJob.objects.filter(pk="kept").update(created_at=datetime(2000, 1, 1, tzinfo=UTC))
        before = timezone.now()
        typed = {
            name: f"{before - value:%Y-%m-%dT%H:%M}" if isinstance(value, timedelta) else value
            for name, value in fields.items()
        }
        data = {"action": "backfill_jobs", "_selected_action": ["kept"], "apply": "Backfill", **typed}
        response = admin_client.post(JOBS, data, follow=True)  # the list shows this action's messages, and no more
        assert response.status_code == 200, response.status_code
        event(f"backfill: {'done' if response.redirect_chain else 'form errors'}")
        expected = _expected_backfill(fields, typed, before, timezone.now())
        event(f"backfill expected: {expected if expected is None or isinstance(expected, str) else 'these runs'}")
        if not response.redirect_chain:
            assert response.context["form"].errors, "the form again, without errors"
            assert not SchedulerRun.objects.exists(), "the form showed errors but wrote"
            assert expected in (None, "form error"), expected
        else:
            said = [str(message) for message in response.context["messages"]]
            refusal = any(text.startswith("1 job could not be changed: kept: ") for text in said)
            runs = set(SchedulerRun.objects.values_list("scheduled_for", flat=True))
            assert refusal or "Backfilled 1 job." in said, said
            assert len(runs) <= 1000 and not (refusal and runs)
            assert expected != "form error" and (expected != "refused" or refusal), (expected, said)
            if isinstance(expected, tuple):
                surely, perhaps = expected  # the hours before the POST began, and those it may have seen pass
                assert not refusal and surely <= runs <= perhaps, (said, sorted(surely ^ runs))
        transaction.set_rollback(True)


def _whole_hours(start: datetime, end: datetime) -> set[datetime]:
    """The whole UTC hours in [start, end), stopping past 1,001: the hourly job's slots, anchored at midnight."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hour += timedelta(hours=1) if hour < start else timedelta(0)
    hours: set[datetime] = set()
    while hour < end and len(hours) <= 1000:
        hours.add(hour)
        hour += timedelta(hours=1)
    return hours


def _expected_backfill(
    fields: dict[str, timedelta | str], typed: dict[str, str], before: datetime, after: datetime
) -> str | tuple[set[datetime], set[datetime]] | None:
    """What backfilling the typed range must do, where it is known beforehand (see the test); None elsewhere."""
    if not isinstance(fields["start"], timedelta) or not isinstance(fields["end"], timedelta):
        return None
    if fields["timezone"] not in ("UTC", "Europe/Berlin", "America/Adak", "Pacific/Kiritimati"):
        return None
    zone = ZoneInfo(str(fields["timezone"]))
    start, end = (datetime.fromisoformat(typed[name]).replace(tzinfo=zone) for name in ("start", "end"))
    if any(moment.utcoffset() != moment.replace(fold=1).utcoffset() for moment in (start, end)) or end <= start:
        return "form error"
    surely, perhaps = _whole_hours(start, min(end, before)), _whole_hours(start, min(end, after))
    if len(surely) > 1000:
        return "refused"
    return None if len(perhaps) > 1000 else (surely, perhaps)


# -- schedules declared in code ---------------------------------------------------------------------------

ENTRY_FIELDS = [
    "task",
    "cron",
    "interval",
    "run_at",
    "timezone",
    "args",
    "kwargs",
    "labels",
    "name",
    "description",
    "enabled",
    "time",
    "cron_offset",
    "schedule_id",
    "policy",
]
entry_values = st.one_of(
    st.sampled_from(["system.echo", "*/5 * * * *", "0 25 * * *", "Europe/Paris", "3600", "PT1H", "", "\x00"]),
    st.integers(-5, 100_000),
    st.floats(),
    st.booleans(),
    st.just(timedelta(hours=3)),
    st.just(timedelta(minutes=7)),
    friendly_instants,
    instants,
    friendly_json,
    friendly_labels,
    anything,
)
entries = st.one_of(
    st.dictionaries(st.sampled_from(ENTRY_FIELDS), entry_values, max_size=6),
    st.fixed_dictionaries(
        {"task": st.just("system.echo")},
        optional={
            "interval": mostly(st.integers(1, 3600), entry_values),
            "cron": mostly(st.just("0 3 * * *"), entry_values),
            "args": mostly(st.just([1]), entry_values),
            "labels": mostly(friendly_labels, entry_values),
            "enabled": mostly(st.booleans(), entry_values),
            "timezone": mostly(st.just("UTC"), zones),
        },
    ),
    anything,
)


@FUZZ
@given(
    schedule=st.dictionaries(st.one_of(st.text(max_size=12), scalars, instants), entries, max_size=4),
    labelled=st.lists(entries, max_size=3),
)
def test_any_declaration_becomes_a_readable_job_or_an_error_naming_it_and_a_second_sync_changes_nothing(
    app: SchedulerApp, schedule: dict[Any, Any], labelled: list[Any]
) -> None:
    from django.test import override_settings

    from django_taskiq_beat.sync import sync_declared

    app.broker.task(task_name="fuzz.labelled", schedule=labelled)(lambda *args, **kwargs: None)
    try:
        with (
            transaction.atomic(),
            override_settings(TASKIQ_BEAT={"BROKER": "testproject.tasks:broker", "SCHEDULE": schedule}),
        ):
            report = sync_declared(app)
            for error in report.errors:
                event(f"declaration refused: {error.field!a}")
                assert str(error).startswith(error.origin) and len(str(error)) < 2000
            for change in report.changes:
                job = SchedulerJob.objects.get(pk=change.job_id)
                job.trigger  # noqa: B018  (the stored trigger can be rebuilt)
                assert job.source in ("settings", "taskiq")
            again = sync_declared(app)
            assert {change.change for change in again.changes} <= {"unchanged"}
            transaction.set_rollback(True)
    finally:
        app.broker.local_task_registry.pop("fuzz.labelled", None)


run_states = st.tuples(
    st.sampled_from(RunStatus.values),
    st.sampled_from([None, WAITING_CLAIMANT, BACKFILL_CLAIMANT, "engine-a"]),
    st.sampled_from([None, "ConnectionError: boom"]),
)


@settings(max_examples=40, deadline=None)
@given(states=st.lists(run_states, min_size=1, max_size=8))
def test_each_run_is_listed_under_the_status_it_shows_and_under_no_other(
    states: list[tuple[str, str | None, str | None]],
) -> None:
    """The history's status filter (``shown_as``, in SQL) and the status each row shows (``shown_status``, in Python)
    are two definitions of one thing: whatever the stored columns, they must agree."""
    with transaction.atomic():
        job = SchedulerJob.objects.create(task_name="system.echo", kind="one_off", strategy="one_off")
        start = datetime(2026, 12, 3, tzinfo=UTC)
        runs = [
            SchedulerRun.objects.create(
                job=job, scheduled_for=start + timedelta(seconds=n), status=status, claimed_by=claimant, error=error
            )
            for n, (status, claimant, error) in enumerate(states)
        ]
        for shown in SHOWN_STATUSES:
            listed = set(SchedulerRun.objects.shown_as(shown).values_list("pk", flat=True))
            assert listed == {run.pk for run in runs if run.shown_status == shown}, shown
        assert {run.shown_status for run in runs} <= set(SHOWN_STATUSES)
        transaction.set_rollback(True)
