"""Cron math: croniter matches wall-clock times, this module turns them into instants.

croniter answers "which local wall-clock time matches next". Around a DST change a
wall-clock time can be missing (spring forward) or happen twice (fall back), so the
match is mapped to real instants under one rule:

* a job at fixed hours runs once per local day: a missing time runs at the first
  valid instant after it, a repeated time runs at its first occurrence only;
* a job whose hour field is ``*`` follows absolute time: a missing time is skipped
  (nothing happened in that hour) and a repeated hour runs twice.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

FIELD_NAMES = ("second", "minute", "hour", "day_of_month", "month_of_year", "day_of_week")
_ALL_HOURS = list(range(24))


def expand(expression: str) -> Sequence[Sequence[int | str]]:
    """Parse a six-field, seconds-first expression; raises croniter's errors."""
    fields, _ = croniter.expand(expression, second_at_beginning=True)
    return fields


@lru_cache(maxsize=4096)
def follows_absolute_time(expression: str) -> bool:
    """True when the hour field matches every hour (the wildcard-hour rule)."""
    hours = expand(expression)[1]  # croniter lists the seconds field last
    return hours == ["*"] or hours == _ALL_HOURS


def next_fire_time(expression: str, zone: ZoneInfo, after: datetime) -> datetime | None:
    """The first instant strictly after ``after`` that the expression fires at (UTC).

    None when there is none before the end of the calendar (year 9999).
    """
    return _remembered_next_fire_time(expression, zone, after.astimezone(UTC))


@lru_cache(maxsize=4096)
def _remembered_next_fire_time(expression: str, zone: ZoneInfo, after: datetime) -> datetime | None:
    """Remembered: the jobs of a claim that share an expression and a slot (every job on ``0 * * * *`` at the
    top of the hour) ask the same question, and croniter takes about 0.2 ms to answer it. ``after`` is in UTC:
    local times one hour apart in a repeated hour (``fold``) compare equal, and would share an answer."""
    try:
        return _next_fire_time(expression, zone, after)
    except (ValueError, OverflowError):  # croniter's CroniterBadDateError, or "year 10000 is out of range"
        return None


def _next_fire_time(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    absolute = follows_absolute_time(expression)
    local = after.astimezone(zone)
    start = local.replace(tzinfo=None, microsecond=0)
    if absolute and local.fold == 0 and _is_repeated(start, zone):
        # The second occurrence of times before ``after`` is still ahead of us.
        start -= abs(_offset(start, zone, 0) - _offset(start, zone, 1))
    matches = croniter(expression, start, second_at_beginning=True)
    best: datetime | None = None
    while True:
        wall_time = matches.get_next(datetime)
        instants = _instants(wall_time, zone, absolute)
        if best is not None and instants and min(instants) >= best:
            return best
        for instant in instants:
            if instant > after and (best is None or instant < best):
                best = instant


def never_matches(expression: str) -> bool:
    """True for expressions such as the 30th of February."""
    try:
        croniter(expression, datetime(2000, 1, 1), second_at_beginning=True).get_next(datetime)
    except CroniterBadDateError:
        return True
    return False


def _offset(wall_time: datetime, zone: ZoneInfo, fold: int) -> timedelta:
    offset = wall_time.replace(tzinfo=zone, fold=fold).utcoffset()
    assert offset is not None
    return offset


def _exists(wall_time: datetime, zone: ZoneInfo) -> bool:
    aware = wall_time.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall_time


def _is_repeated(wall_time: datetime, zone: ZoneInfo) -> bool:
    return _offset(wall_time, zone, 0) != _offset(wall_time, zone, 1) and _exists(wall_time, zone)


def _instants(wall_time: datetime, zone: ZoneInfo, absolute: bool) -> list[datetime]:
    """The instants a matched wall-clock time stands for under the DST rule."""
    first = wall_time.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _offset(wall_time, zone, 0) == _offset(wall_time, zone, 1):
        return [first]
    if _exists(wall_time, zone):
        if absolute:
            return [first, wall_time.replace(tzinfo=zone, fold=1).astimezone(UTC)]
        return [first]
    return [] if absolute else [_end_of_gap(wall_time, zone)]


def _end_of_gap(wall_time: datetime, zone: ZoneInfo) -> datetime:
    """The first valid instant after a wall-clock time that the clocks skipped."""
    new_offset = _offset(wall_time, zone, 1)
    low = wall_time.replace(tzinfo=zone, fold=1).astimezone(UTC)  # still the old offset
    high = wall_time.replace(tzinfo=zone, fold=0).astimezone(UTC)  # already the new one
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == new_offset:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)
