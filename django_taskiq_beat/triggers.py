"""Trigger value objects: what a job's schedule is, how it is stored, when it fires next.

Every trigger is a frozen dataclass validated on construction. ``to_payload`` /
``from_payload`` give the JSON stored in ``scheduler_job.trigger_payload``, in the
formats of taskiq-beat.
"""

import json
import re
import zoneinfo
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, ClassVar

from croniter import CroniterError

from django_taskiq_beat import cron
from django_taskiq_beat.exceptions import SchedulerValidationError
from django_taskiq_beat.payloads import text_problem

_INTERVAL_UNITS = ("seconds", "minutes", "hours", "days")
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME_OF_DAY = re.compile(r"^(?P<hour>\d{1,2}):(?P<minute>\d{2})$")
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
"""Schedule times lie in [EARLIEST, LATEST]: a day inside the calendar, so every zone can show them."""

_MAX_TIMEZONE_LENGTH = 64
_MAX_CRON_FIELD_LENGTH = 200
"""Longer than any useful cron field (every minute listed is 169 characters); croniter's time grows with it."""

_RANDOM_OR_HASHED = re.compile(r"(^|[,/-])[rh](?![a-z])")  # croniter's R and H, not names such as 'thu'
_UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
_MIN_INTERVAL_SECONDS = 0.001
_MAX_INTERVAL_SECONDS = 36500 * 86400  # a hundred years


@cache
def zone_names() -> frozenset[str]:
    """The zone names a schedule takes: IANA's, without the host-dependent ``localtime`` and the placeholders
    ``Factory`` and ``posixrules``."""
    return frozenset(zoneinfo.available_timezones() - {"localtime", "Factory", "posixrules"}) | {"UTC"}


def resolve_timezone(name: Any, field: str = "timezone") -> zoneinfo.ZoneInfo:
    """The IANA zone called ``name``; "utc" in any case is UTC."""
    if not isinstance(name, str) or not name.strip():
        raise SchedulerValidationError(field, name, "Timezone must be a non-empty IANA name.")
    key = str.__str__(name).strip()
    key = "UTC" if key.upper() == "UTC" else key
    if len(key) > _MAX_TIMEZONE_LENGTH or key not in zone_names():
        raise SchedulerValidationError(field, name, "Unknown timezone: not an IANA zone name (such as Europe/Berlin).")
    return zoneinfo.ZoneInfo(key)


def require_aware(value: Any, field: str) -> datetime:
    """Return ``value`` in UTC; every schedule time must carry its timezone and lie in the calendar."""
    if not isinstance(value, datetime):
        raise SchedulerValidationError(field, value, "Expected a datetime.")
    try:
        aware = value.tzinfo is not None and value.utcoffset() is not None
        instant = value.astimezone(UTC) if aware else None
    except (OverflowError, ValueError):  # past the calendar's end in UTC
        aware, instant = True, None
    except Exception:  # a tzinfo of the caller's that raises or answers nonsense
        raise SchedulerValidationError(field, value, "Its timezone gives no valid UTC offset.") from None
    if not aware:
        raise SchedulerValidationError(field, value, f"{field} must be timezone-aware.")
    if instant is None or not EARLIEST <= instant <= LATEST:
        raise SchedulerValidationError(
            field, value, f"Must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)."
        )
    return datetime(*instant.timetuple()[:6], instant.microsecond, tzinfo=UTC)  # a plain datetime, not a subclass


def _parse_instant(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise SchedulerValidationError(field, value, "Expected an ISO-8601 string.")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SchedulerValidationError(field, value, "Not an ISO-8601 datetime.") from None
    return require_aware(parsed, field)


def _require_mapping(payload: Any, field: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise SchedulerValidationError(field, payload, "Expected a JSON object.")
    return payload


@dataclass(frozen=True)
class ImmediateDispatch:
    """Send the task at once and record the job; valid with ``schedule()`` only."""

    strategy: ClassVar[str] = "immediate"

    def to_payload(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_payload(cls, payload: Any) -> "ImmediateDispatch":
        _require_mapping(payload, "trigger_payload")
        return cls()


@dataclass(frozen=True)
class IntervalTrigger:
    """A fixed period given in exactly one unit."""

    seconds: float | None = None
    minutes: float | None = None
    hours: float | None = None
    days: float | None = None

    def __post_init__(self) -> None:
        given = {unit: getattr(self, unit) for unit in _INTERVAL_UNITS if getattr(self, unit) is not None}
        if len(given) != 1:
            raise SchedulerValidationError("interval", given or None, "Interval must contain exactly one unit.")
        ((unit, value),) = given.items()
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise SchedulerValidationError(unit, value, "Interval values must be numbers.")
        if value <= 0:
            raise SchedulerValidationError(unit, value, "Interval values must be positive.")
        size = _UNIT_SECONDS[unit]
        if not _MIN_INTERVAL_SECONDS / size <= value <= _MAX_INTERVAL_SECONDS / size:
            raise SchedulerValidationError(
                unit,
                value,
                f"Interval must be between {_MIN_INTERVAL_SECONDS:g} seconds"
                f" and {_MAX_INTERVAL_SECONDS // 86400} days.",
            )

    @property
    def total_seconds(self) -> float:
        return sum(getattr(self, unit) * size for unit, size in _UNIT_SECONDS.items() if getattr(self, unit))

    def next_after(self, after: datetime, anchor: datetime) -> datetime | None:
        """The first point of the grid ``anchor + k * interval`` strictly after ``after``.

        The anchor is cut to whole seconds, so whole-second intervals land on whole seconds.
        None past the end of the calendar.
        """
        anchor = anchor.replace(microsecond=0)
        if after < anchor:
            return anchor
        step = timedelta(seconds=self.total_seconds)
        try:
            return anchor + ((after - anchor) // step + 1) * step
        except OverflowError:
            return None

    def to_payload(self) -> dict[str, Any]:
        return {unit: getattr(self, unit) for unit in _INTERVAL_UNITS}

    @classmethod
    def from_payload(cls, payload: Any) -> "IntervalTrigger":
        data = _require_mapping(payload, "interval")
        return cls(**{unit: data.get(unit) for unit in _INTERVAL_UNITS})


@dataclass(frozen=True)
class CrontabTrigger:
    """Standard cron plus a leading seconds field, matched in ``timezone``.

    Fields take cron syntax (``*``, lists, ranges, steps, names such as ``mon`` or
    ``jan``); day_of_week 0 and 7 are Sunday. A trigger without a timezone takes
    ``DEFAULT_TIMEZONE`` when it is scheduled.
    """

    second: str = "0"
    minute: str = "*"
    hour: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"
    day_of_week: str = "*"
    timezone: str | None = None

    def __post_init__(self) -> None:
        for name in cron.FIELD_NAMES:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, str | int)
                or (isinstance(value, int) and not 0 <= value < 100)
            ):
                raise SchedulerValidationError(name, value, "Cron fields must be strings.")
            if len(str(value)) > _MAX_CRON_FIELD_LENGTH:
                raise SchedulerValidationError(name, value, f"At most {_MAX_CRON_FIELD_LENGTH} characters.")
            text = (str.__str__(value) if isinstance(value, str) else str(value)).strip().lower()
            if not text or len(text.split()) != 1 or text_problem(text):
                raise SchedulerValidationError(name, value, "Cron field must be one non-empty token.")
            if _RANDOM_OR_HASHED.search(text):
                raise SchedulerValidationError(
                    name, value, "Random (R) and hashed (H) cron values are not standard cron: they fire unpredictably."
                )
            probe = ["*"] * len(cron.FIELD_NAMES)
            probe[cron.FIELD_NAMES.index(name)] = text
            try:
                cron.expand(" ".join(probe))
            except (CroniterError, ValueError) as exc:
                raise SchedulerValidationError(name, value, f"Invalid cron field: {exc}") from None
            object.__setattr__(self, name, text)
        if self.timezone is not None:
            object.__setattr__(self, "timezone", resolve_timezone(self.timezone).key)
        if cron.never_matches(self.expression):
            raise SchedulerValidationError(
                "crontab", self.expression, "Unable to compute next run for crontab: it never matches."
            )

    @property
    def expression(self) -> str:
        """The six fields, seconds first."""
        return " ".join(getattr(self, name) for name in cron.FIELD_NAMES)

    @classmethod
    def from_expression(cls, expression: str, timezone: str | None = None) -> "CrontabTrigger":
        """Five fields (standard cron), six fields (seconds first) or an ``@daily``-style macro."""
        if not isinstance(expression, str):
            raise SchedulerValidationError("crontab", expression, "Expected a cron expression string.")
        if len(expression) > 6 * (_MAX_CRON_FIELD_LENGTH + 1):
            raise SchedulerValidationError("crontab", expression, "Cron expression too long.")
        text = _MACROS.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) == 5:
            parts = ["0", *parts]
        if len(parts) != 6:
            raise SchedulerValidationError(
                "crontab", expression, "A cron expression has 5 fields, or 6 with seconds first."
            )
        return cls(**dict(zip(cron.FIELD_NAMES, parts, strict=True)), timezone=timezone)

    @classmethod
    def every(
        cls,
        *,
        seconds: int | None = None,
        minutes: int | None = None,
        hours: int | None = None,
        days: int | None = None,
        monday: str | None = None,
        tuesday: str | None = None,
        wednesday: str | None = None,
        thursday: str | None = None,
        friday: str | None = None,
        saturday: str | None = None,
        sunday: str | None = None,
        timezone: str | None = None,
    ) -> "CrontabTrigger":
        """Shorthand; the first given argument wins: seconds, minutes, hours, days, weekdays.

        These are cron steps, so ``every(seconds=7)`` fires at :00, :07 ... :56, :00.
        """
        if seconds:
            return cls(second=f"*/{seconds}", timezone=timezone)
        if minutes:
            return cls(minute=f"*/{minutes}", timezone=timezone)
        if hours:
            return cls(minute="0", hour=f"*/{hours}", timezone=timezone)
        if days:
            return cls(minute="0", hour="0", day_of_month=f"*/{days}", timezone=timezone)
        weekday_times = (monday, tuesday, wednesday, thursday, friday, saturday, sunday)
        for weekday, time_of_day in zip(_WEEKDAYS, weekday_times, strict=True):
            if time_of_day:
                match = _TIME_OF_DAY.match(str(time_of_day).strip())
                if not match or int(match["hour"]) > 23 or int(match["minute"]) > 59:
                    raise SchedulerValidationError(weekday, time_of_day, "Invalid time format: use HH:MM.")
                return cls(
                    minute=str(int(match["minute"])),
                    hour=str(int(match["hour"])),
                    day_of_week=weekday[:3],
                    timezone=timezone,
                )
        raise SchedulerValidationError("every", None, "Invalid parameters for crontab generation.")

    def with_timezone(self, default_timezone: str) -> "CrontabTrigger":
        """This trigger with its timezone resolved (its own, else the default)."""
        return self if self.timezone else replace(self, timezone=default_timezone)

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after``, following the DST rule of ``cron``; None past the calendar."""
        zone = resolve_timezone(self.timezone or "UTC")
        return cron.next_fire_time(self.expression, zone, after)

    def to_payload(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @classmethod
    def from_payload(cls, payload: Any) -> "CrontabTrigger":
        data = _require_mapping(payload, "crontab")
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class OneOffSchedule:
    """Run once at ``run_at``; a time already past runs at once.

    ``timezone`` names the zone the time was chosen in. It never moves the instant (``run_at``
    is kept in UTC); it is stored so that whoever reopens the job sees the time as it was entered.
    """

    run_at: datetime
    timezone: str | None = None
    strategy: ClassVar[str] = "one_off"

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_at", require_aware(self.run_at, "run_at"))
        if self.timezone is not None:
            object.__setattr__(self, "timezone", resolve_timezone(self.timezone).key)

    def next_run(self, now: datetime) -> datetime:
        return max(self.run_at, now)

    def to_payload(self) -> dict[str, Any]:
        zone = {"timezone": self.timezone} if self.timezone else {}
        return {"run_at": self.run_at.isoformat(), **zone}

    @classmethod
    def from_payload(cls, payload: Any) -> "OneOffSchedule":
        data = _require_mapping(payload, "trigger_payload")
        return cls(run_at=_parse_instant(data.get("run_at"), "run_at"), timezone=data.get("timezone"))


def timing_of(strategy: str, payload: Any) -> Any:
    """The part of a stored trigger that decides when it fires: a one-off's zone only shows its time."""
    if strategy == OneOffSchedule.strategy and isinstance(payload, dict):
        return {key: value for key, value in payload.items() if key != "timezone"}
    return payload


@dataclass(frozen=True)
class PeriodicSchedule:
    """An interval or a crontab, optionally limited to the window [start_at, end_at]."""

    interval: IntervalTrigger | None = None
    crontab: CrontabTrigger | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None

    def __post_init__(self) -> None:
        if (self.interval is None) == (self.crontab is None):
            raise SchedulerValidationError(
                "trigger",
                {"interval": self.interval, "crontab": self.crontab},
                "PeriodicSchedule needs exactly one of interval or crontab.",
            )
        if self.interval is not None and not isinstance(self.interval, IntervalTrigger):
            raise SchedulerValidationError("interval", self.interval, "Expected an IntervalTrigger.")
        if self.crontab is not None and not isinstance(self.crontab, CrontabTrigger):
            raise SchedulerValidationError("crontab", self.crontab, "Expected a CrontabTrigger.")
        for name in ("start_at", "end_at"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, require_aware(getattr(self, name), name))
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise SchedulerValidationError("end_at", self.end_at, "end_at must be later than start_at.")

    @property
    def strategy(self) -> str:
        return "interval" if self.interval is not None else "crontab"

    def next_after(self, after: datetime, anchor: datetime) -> datetime | None:
        """The next slot strictly after ``after``, or None once the window has ended.

        ``anchor`` (the job's ``created_at``) fixes the interval grid unless
        ``start_at`` is set; a slot exactly at ``end_at`` still fires.
        """
        if self.end_at is not None and after >= self.end_at:
            return None
        if self.interval is not None:
            candidate = self.interval.next_after(after, self.start_at or anchor)
        else:
            assert self.crontab is not None
            if self.start_at is not None:
                after = max(after, self.start_at - timedelta(microseconds=1))
            candidate = self.crontab.next_after(after)
        if candidate is None or candidate > min(self.end_at or LATEST, LATEST):
            return None
        return candidate

    def with_timezone(self, default_timezone: str) -> "PeriodicSchedule":
        if self.crontab is None:
            return self
        return replace(self, crontab=self.crontab.with_timezone(default_timezone))

    def to_payload(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "interval": self.interval.to_payload() if self.interval else None,
            "crontab": self.crontab.to_payload() if self.crontab else None,
            "start_at": self.start_at.isoformat() if self.start_at else None,
            "end_at": self.end_at.isoformat() if self.end_at else None,
        }

    @classmethod
    def from_payload(cls, payload: Any) -> "PeriodicSchedule":
        data = _require_mapping(payload, "trigger_payload")
        interval, crontab = data.get("interval"), data.get("crontab")
        return cls(
            interval=IntervalTrigger.from_payload(interval) if interval is not None else None,
            crontab=CrontabTrigger.from_payload(crontab) if crontab is not None else None,
            start_at=_parse_instant(data["start_at"], "start_at") if data.get("start_at") else None,
            end_at=_parse_instant(data["end_at"], "end_at") if data.get("end_at") else None,
        )


Trigger = ImmediateDispatch | OneOffSchedule | PeriodicSchedule


def trigger_kind(trigger: Trigger) -> str:
    """The ``kind`` column: ``one_off`` or ``periodic``."""
    return "periodic" if isinstance(trigger, PeriodicSchedule) else "one_off"


def trigger_from_row(kind: str, strategy: str, payload: Any) -> Trigger:
    """Rebuild a trigger from the ``kind``, ``strategy`` and ``trigger_payload`` columns.

    Triggers are immutable, so rebuilt ones are cached: the engine rebuilds one per
    dispatched slot, and cron validation is not free.
    """
    try:
        key = json.dumps(payload, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        raise SchedulerValidationError("trigger_payload", payload, "Not JSON.") from None
    return _trigger_from_json(kind, strategy, key)


def trigger_from_text(kind: str, strategy: str, payload_json: str) -> Trigger:
    """``trigger_from_row`` for the ``trigger_payload`` column read as its JSON text, as a claim reads it.

    The text is the cache key as it is: no decoding of every row's payload, then encoding it again.
    """
    return _trigger_from_json(kind, strategy, payload_json)


@lru_cache(maxsize=8192)
def _trigger_from_json(kind: str, strategy: str, payload_json: str) -> Trigger:
    try:
        payload = json.loads(payload_json)
    except (ValueError, RecursionError):
        raise SchedulerValidationError("trigger_payload", payload_json, "Not JSON.") from None
    if strategy == "immediate":
        return ImmediateDispatch.from_payload(payload)
    if kind == "one_off":
        return OneOffSchedule.from_payload(payload)
    if kind == "periodic":
        return PeriodicSchedule.from_payload(payload)
    raise SchedulerValidationError("kind", kind, "Unknown job kind.")


def next_slot(trigger: Trigger, now: datetime, anchor: datetime) -> datetime | None:
    """The slot a job armed at ``now`` waits for; None when it has none left."""
    if isinstance(trigger, OneOffSchedule):
        return trigger.next_run(now)
    if isinstance(trigger, PeriodicSchedule):
        return trigger.next_after(now, anchor)
    return None


def slots_between(trigger: Trigger, anchor: datetime, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """The trigger's slots in [start, end), oldest first; more than ``limit`` raise ``SchedulerValidationError``."""
    if isinstance(trigger, OneOffSchedule):
        return [trigger.run_at] if start <= trigger.run_at < end else []
    if not isinstance(trigger, PeriodicSchedule):
        raise SchedulerValidationError("trigger", trigger, "A job sent at once has no slots.")
    slots: list[datetime] = []
    slot = trigger.next_after(start - timedelta(microseconds=1), anchor)
    while slot is not None and slot < end:
        if len(slots) == limit:
            raise SchedulerValidationError(
                "end", end, f"More than {limit:,} slots between start and end: backfill a shorter range at a time."
            )
        slots.append(slot)
        slot = trigger.next_after(slot, anchor)
    return slots
