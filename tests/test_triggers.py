"""Triggers: the reference's 11 scenarios, standard cron, windows, payloads and DST."""

import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from django_taskiq_beat import (
    CrontabTrigger,
    ImmediateDispatch,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulerValidationError,
)
from django_taskiq_beat.triggers import trigger_from_row, trigger_from_text

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def fire_times(
    trigger: PeriodicSchedule, start: datetime, end: datetime, anchor: datetime | None = None
) -> list[datetime]:
    """Every slot in (start, end], found the way the engine walks: from one slot to the next."""
    times, current = [], start
    while True:
        current = trigger.next_after(current, anchor or start)
        if current is None or current > end:
            return times
        times.append(current)


# -- the reference's test_triggers.py -------------------------------------------------


def test_interval_trigger_get_next_run_at() -> None:
    assert IntervalTrigger(seconds=5).next_after(utc(2026, 3, 18, 10, 0, 4), utc(2026, 3, 18, 10)) == utc(
        2026, 3, 18, 10, 0, 5
    )


def test_crontab_trigger_weekday_get_next_run_at() -> None:
    trigger = CrontabTrigger.every(monday="09:30", timezone="UTC")
    assert trigger.next_after(utc(2026, 3, 18, 10)) == utc(2026, 3, 23, 9, 30)


def test_crontab_every_seconds_get_next_run_at() -> None:
    assert CrontabTrigger.every(seconds=5, timezone="UTC").next_after(utc(2026, 3, 18, 10, 0, 4)) == utc(
        2026, 3, 18, 10, 0, 5
    )


def test_periodic_schedule_payload_roundtrip() -> None:
    schedule = PeriodicSchedule(interval=IntervalTrigger(minutes=15))
    restored = PeriodicSchedule.from_payload(schedule.to_payload())
    assert restored == schedule
    assert restored.strategy == "interval"


def test_periodic_schedule_start_at_used_as_first_run() -> None:
    schedule = PeriodicSchedule(interval=IntervalTrigger(minutes=5), start_at=utc(2026, 3, 18, 10, 10))
    assert schedule.next_after(utc(2026, 3, 18, 10), anchor=utc(2026, 3, 18, 9)) == utc(2026, 3, 18, 10, 10)


def test_periodic_schedule_end_at_stops_next_run() -> None:
    schedule = PeriodicSchedule(interval=IntervalTrigger(minutes=5), end_at=utc(2026, 3, 18, 10, 4))
    assert schedule.next_after(utc(2026, 3, 18, 10), anchor=utc(2026, 3, 18, 10)) is None


def test_one_off_requires_timezone() -> None:
    with pytest.raises(SchedulerValidationError, match="timezone-aware") as caught:
        OneOffSchedule(run_at=datetime(2026, 3, 18, 10))
    assert caught.value.field == "run_at"


def test_immediate_dispatch_payload_roundtrip() -> None:
    assert ImmediateDispatch().to_payload() == {}
    assert ImmediateDispatch.from_payload({}) == ImmediateDispatch()


def test_crontab_invalid_step_raises() -> None:
    with pytest.raises(SchedulerValidationError, match="step") as caught:
        CrontabTrigger(second="*/0")
    assert (caught.value.field, caught.value.value) == ("second", "*/0")


def test_crontab_uses_standard_day_of_month_or_day_of_week_semantics() -> None:
    trigger = CrontabTrigger(minute="0", hour="9", day_of_month="20", day_of_week="2", timezone="UTC")
    # Wednesday the 18th -> Friday the 20th (day 20), before Tuesday the 24th.
    assert trigger.next_after(utc(2026, 3, 18, 10)) == utc(2026, 3, 20, 9)


def test_crontab_supports_range_step_syntax() -> None:
    assert CrontabTrigger(minute="10-20/5", timezone="UTC").next_after(utc(2026, 3, 18, 10, 11)) == utc(
        2026, 3, 18, 10, 15
    )


# -- standard cron (difference 4) ---------------------------------------------------------


@pytest.mark.parametrize("sunday", ["0", "7", "sun", "SUN"])
def test_day_of_week_zero_seven_and_names_are_sunday(sunday: str) -> None:
    trigger = CrontabTrigger(minute="0", hour="9", day_of_week=sunday, timezone="UTC")
    assert trigger.next_after(utc(2026, 3, 18, 10)) == utc(2026, 3, 22, 9)  # Sunday 22 March


def test_month_and_weekday_names() -> None:
    trigger = CrontabTrigger.from_expression("0 6 * jan mon-fri", timezone="UTC")
    assert trigger.next_after(utc(2026, 3, 18)) == utc(2027, 1, 1, 6)  # Friday 1 January 2027


def test_six_fields_put_seconds_first() -> None:
    trigger = CrontabTrigger.from_expression("15 */5 * * * *", timezone="UTC")
    assert (trigger.second, trigger.minute) == ("15", "*/5")
    assert trigger.next_after(utc(2026, 3, 18, 10, 0, 20)) == utc(2026, 3, 18, 10, 5, 15)


def test_five_fields_fire_at_second_zero() -> None:
    trigger = CrontabTrigger.from_expression("*/5 * * * *")
    assert trigger.expression == "0 */5 * * * *"


def test_macro_expression() -> None:
    assert CrontabTrigger.from_expression("@daily").expression == "0 0 0 * * *"


@pytest.mark.parametrize(
    ("arguments", "expression"),
    [
        ({"seconds": 10}, "*/10 * * * * *"),
        ({"minutes": 5}, "0 */5 * * * *"),
        ({"hours": 2}, "0 0 */2 * * *"),
        ({"days": 3}, "0 0 0 */3 * *"),
        ({"friday": "7:05"}, "0 5 7 * * fri"),
        ({"minutes": 5, "hours": 1}, "0 */5 * * * *"),
    ],
)
def test_every_builds_cron_fields(arguments: dict[str, object], expression: str) -> None:
    assert CrontabTrigger.every(**arguments).expression == expression


@pytest.mark.parametrize("arguments", [{}, {"monday": "25:00"}, {"tuesday": "9"}])
def test_every_rejects_bad_arguments(arguments: dict[str, object]) -> None:
    with pytest.raises(SchedulerValidationError):
        CrontabTrigger.every(**arguments)


# -- windows and grids -----------------------------------------------------------------------


def test_interval_grid_is_anchored_to_created_at_truncated_to_seconds() -> None:
    anchor = datetime(2026, 3, 18, 10, 0, 0, 700_000, tzinfo=UTC)
    trigger = IntervalTrigger(seconds=10)
    assert trigger.next_after(anchor, anchor) == utc(2026, 3, 18, 10, 0, 10)
    # After downtime the next slot stays on the grid.
    assert trigger.next_after(utc(2026, 3, 18, 10, 1, 35), anchor) == utc(2026, 3, 18, 10, 1, 40)


def test_interval_units() -> None:
    assert IntervalTrigger(days=1).total_seconds == 86400
    assert IntervalTrigger(seconds=1.5).next_after(utc(2026, 1, 1, 0, 0, 1), utc(2026, 1, 1)) == datetime(
        2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC
    )


def test_cron_start_at_itself_can_fire() -> None:
    schedule = PeriodicSchedule(crontab=CrontabTrigger(minute="*/5", timezone="UTC"), start_at=utc(2026, 3, 18, 12))
    assert schedule.next_after(utc(2026, 3, 18, 10), anchor=utc(2026, 3, 18, 10)) == utc(2026, 3, 18, 12)


def test_slot_exactly_at_end_at_fires_and_nothing_after() -> None:
    schedule = PeriodicSchedule(interval=IntervalTrigger(minutes=5), end_at=utc(2026, 3, 18, 10, 10))
    start = utc(2026, 3, 18, 10)
    assert fire_times(schedule, start, utc(2026, 3, 19)) == [utc(2026, 3, 18, 10, 5), utc(2026, 3, 18, 10, 10)]


# -- payloads ---------------------------------------------------------------------------------


def test_payload_formats_match_the_reference() -> None:
    one_off = OneOffSchedule(run_at=datetime(2026, 3, 18, 12, tzinfo=BERLIN))
    assert one_off.to_payload() == {"run_at": "2026-03-18T11:00:00+00:00"}
    periodic = PeriodicSchedule(
        crontab=CrontabTrigger(minute="*/5", timezone="Europe/Berlin"),
        start_at=datetime(2026, 3, 18, 12, tzinfo=BERLIN),
    )
    assert periodic.to_payload() == {
        "strategy": "crontab",
        "interval": None,
        "crontab": {
            "second": "0",
            "minute": "*/5",
            "hour": "*",
            "day_of_month": "*",
            "month_of_year": "*",
            "day_of_week": "*",
            "timezone": "Europe/Berlin",
        },
        "start_at": "2026-03-18T11:00:00+00:00",
        "end_at": None,
    }
    assert PeriodicSchedule(interval=IntervalTrigger(hours=2)).to_payload()["interval"] == {
        "seconds": None,
        "minutes": None,
        "hours": 2,
        "days": None,
    }


@pytest.mark.parametrize(
    ("kind", "strategy", "trigger"),
    [
        ("one_off", "immediate", ImmediateDispatch()),
        ("one_off", "one_off", OneOffSchedule(run_at=utc(2026, 3, 18))),
        ("one_off", "one_off", OneOffSchedule(run_at=utc(2026, 3, 18), timezone="Asia/Tokyo")),
        ("periodic", "interval", PeriodicSchedule(interval=IntervalTrigger(days=2), end_at=utc(2027, 1, 1))),
        ("periodic", "crontab", PeriodicSchedule(crontab=CrontabTrigger.from_expression("0 9 * * 1", "Asia/Tokyo"))),
    ],
)
def test_trigger_round_trips_through_row_columns(kind: str, strategy: str, trigger: object) -> None:
    payload = trigger.to_payload()  # type: ignore[attr-defined]
    assert trigger_from_row(kind, strategy, payload) == trigger
    assert trigger_from_text(kind, strategy, json.dumps(payload, indent=1)) == trigger  # the column read as text


@pytest.mark.parametrize("text", ["{", '{"interval": ', "NaN-ish", ""])
def test_payload_text_that_is_not_json_raises_a_named_error(text: str) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        trigger_from_text("periodic", "interval", text)
    assert (caught.value.field, caught.value.problem) == ("trigger_payload", "Not JSON.")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"strategy": "interval", "interval": {"seconds": -1}, "crontab": None}, "seconds"),
        ({"strategy": "crontab", "interval": None, "crontab": {"minute": "99"}}, "minute"),
        ({"interval": None, "crontab": None}, "trigger"),
        ("not a dict", "trigger_payload"),
    ],
)
def test_corrupt_payload_raises_a_named_error(payload: object, field: str) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        trigger_from_row("periodic", "interval", payload)
    assert caught.value.field == field


def test_a_one_off_keeps_the_zone_it_was_chosen_in_without_moving_the_instant() -> None:
    berlin = OneOffSchedule(run_at=datetime(2026, 3, 18, 12, tzinfo=BERLIN), timezone="Europe/Berlin")
    assert berlin.run_at == utc(2026, 3, 18, 11) and berlin.run_at.tzinfo is UTC
    assert berlin.to_payload() == {"run_at": "2026-03-18T11:00:00+00:00", "timezone": "Europe/Berlin"}
    assert OneOffSchedule(run_at=berlin.run_at, timezone="utc").timezone == "UTC"


@pytest.mark.parametrize("zone", ["Mars/Base", "", 3])
def test_a_one_off_with_an_unknown_zone_names_the_field_stored_or_given(zone: object) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        OneOffSchedule(run_at=utc(2026, 3, 18), timezone=zone)  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == ("timezone", zone)
    with pytest.raises(SchedulerValidationError) as caught:
        trigger_from_row("one_off", "one_off", {"run_at": "2026-03-18T11:00:00+00:00", "timezone": zone})
    assert (caught.value.field, caught.value.value) == ("timezone", zone)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({}, "interval"),
        ({"seconds": 1, "minutes": 1}, "interval"),
        ({"seconds": 0}, "seconds"),
        ({"minutes": -5}, "minutes"),
        ({"hours": "1"}, "hours"),
        ({"days": True}, "days"),
        ({"seconds": float("nan")}, "seconds"),
    ],
)
def test_invalid_interval_names_the_field(arguments: dict[str, object], field: str) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        IntervalTrigger(**arguments)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("second", "60"),
        ("minute", "61"),
        ("hour", "24"),
        ("day_of_month", "0"),
        ("month_of_year", "13"),
        ("day_of_week", "8"),
        ("minute", "abc"),
        ("hour", "5-30"),
        ("minute", ""),
        ("minute", "1 2"),
        ("hour", None),
    ],
)
def test_invalid_cron_field_names_the_field_and_value(field: str, value: object) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        CrontabTrigger(**{field: value})  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == (field, value)
    assert field in str(caught.value)


def test_cron_that_never_matches_is_rejected() -> None:
    with pytest.raises(SchedulerValidationError, match="never matches"):
        CrontabTrigger(minute="0", hour="0", day_of_month="30", month_of_year="2")


@pytest.mark.parametrize("expression", ["* * * *", "1 2 3 4 5 6 7", ""])
def test_expression_with_wrong_field_count(expression: str) -> None:
    with pytest.raises(SchedulerValidationError, match="5 fields"):
        CrontabTrigger.from_expression(expression)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd"])
def test_unknown_timezone(zone: str) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        CrontabTrigger(timezone=zone)
    assert caught.value.field == "timezone"


def test_utc_in_any_case() -> None:
    assert CrontabTrigger(timezone="utc").timezone == "UTC"


@pytest.mark.parametrize("field", ["start_at", "end_at"])
def test_naive_window_bounds_are_rejected(field: str) -> None:
    with pytest.raises(SchedulerValidationError, match="timezone-aware") as caught:
        PeriodicSchedule(interval=IntervalTrigger(hours=1), **{field: datetime(2026, 1, 1)})
    assert caught.value.field == field


def test_window_must_be_ordered_and_trigger_unique() -> None:
    with pytest.raises(SchedulerValidationError, match="later than start_at"):
        PeriodicSchedule(interval=IntervalTrigger(hours=1), start_at=utc(2026, 2, 1), end_at=utc(2026, 1, 1))
    with pytest.raises(SchedulerValidationError, match="exactly one"):
        PeriodicSchedule(interval=IntervalTrigger(hours=1), crontab=CrontabTrigger())


# -- DST (difference 4) -------------------------------------------------------------------------


def _daily_0230_berlin() -> PeriodicSchedule:
    return PeriodicSchedule(crontab=CrontabTrigger(minute="30", hour="2", timezone="Europe/Berlin"))


def test_fixed_time_runs_once_on_spring_forward_day_at_first_valid_instant() -> None:
    # 2026-03-29: at 02:00 CET the clocks jump to 03:00 CEST; 02:30 does not exist.
    times = fire_times(_daily_0230_berlin(), utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    assert [t.astimezone(BERLIN).replace(tzinfo=None) for t in times] == [
        datetime(2026, 3, 28, 2, 30),
        datetime(2026, 3, 29, 3, 0),
        datetime(2026, 3, 30, 2, 30),
        datetime(2026, 3, 31, 2, 30),
    ]
    assert times[1] == utc(2026, 3, 29, 1, 0)


def test_fixed_time_runs_once_on_fall_back_day() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    times = fire_times(_daily_0230_berlin(), utc(2026, 10, 24, 12), utc(2026, 10, 26, 12))
    assert times == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_fixed_time_asked_during_the_repeated_hour_does_not_fire_again() -> None:
    # 01:10 UTC is 02:10 CET, the second pass through 02:xx: today's 02:30 already ran.
    assert _daily_0230_berlin().next_after(utc(2026, 10, 25, 1, 10), utc(2026, 1, 1)) == utc(2026, 10, 26, 1, 30)


def test_the_two_passes_through_a_repeated_hour_get_their_own_next_fire_time() -> None:
    """Next fire times are remembered; 02:10 CEST and 02:10 CET, an hour apart, compare equal in Python."""
    berlin = ZoneInfo("Europe/Berlin")
    first_pass, second_pass = (datetime(2026, 10, 25, 2, 10, tzinfo=berlin, fold=fold) for fold in (0, 1))
    trigger = CrontabTrigger.from_expression("*/15 * * * *", "Europe/Berlin")
    assert trigger.next_after(first_pass) == utc(2026, 10, 25, 0, 15)
    assert trigger.next_after(second_pass) == utc(2026, 10, 25, 1, 15)


@pytest.mark.parametrize(
    "schedule",
    [
        PeriodicSchedule(crontab=CrontabTrigger.from_expression("*/15 * * * *", "Europe/Berlin")),
        PeriodicSchedule(interval=IntervalTrigger(minutes=15)),
    ],
    ids=["cron", "interval"],
)
@pytest.mark.parametrize("day", [utc(2026, 3, 28, 22), utc(2026, 10, 24, 22)], ids=["spring-forward", "fall-back"])
def test_every_fifteen_minutes_neither_bursts_nor_skips(schedule: PeriodicSchedule, day: datetime) -> None:
    times = fire_times(schedule, day, day + timedelta(hours=6), anchor=day)
    gaps = {later - earlier for earlier, later in pairwise(times)}
    assert gaps == {timedelta(minutes=15)}
    assert len(times) == 6 * 4


def test_wildcard_hour_follows_absolute_time_through_both_changes() -> None:
    hourly = PeriodicSchedule(crontab=CrontabTrigger(minute="30", timezone="Europe/Berlin"))
    spring = fire_times(hourly, utc(2026, 3, 28, 23), utc(2026, 3, 29, 3))
    assert spring == [
        utc(2026, 3, 28, 23, 30),
        utc(2026, 3, 29, 0, 30),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 29, 2, 30),
    ]
    autumn = fire_times(hourly, utc(2026, 10, 24, 23), utc(2026, 10, 25, 3))
    assert autumn == [
        utc(2026, 10, 24, 23, 30),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 25, 2, 30),
    ]


def test_every_minute_within_skipped_hour_runs_once_at_its_end() -> None:
    during_two = PeriodicSchedule(crontab=CrontabTrigger(minute="*", hour="2", timezone="Europe/Berlin"))
    times = fire_times(during_two, utc(2026, 3, 28), utc(2026, 3, 29, 12))
    assert times[-1] == utc(2026, 3, 29, 1, 0)
    assert len(times) == 61  # the 60 minutes of 28 March, then once at 03:00 CEST on the 29th


def test_sub_second_interval_moves_past_a_fractional_slot() -> None:
    half = IntervalTrigger(seconds=0.5)
    anchor = utc(2026, 3, 18, 10)
    slot = half.next_after(anchor, anchor)
    assert slot == datetime(2026, 3, 18, 10, 0, 0, 500_000, tzinfo=UTC)
    assert half.next_after(slot, anchor) == utc(2026, 3, 18, 10, 0, 1)
