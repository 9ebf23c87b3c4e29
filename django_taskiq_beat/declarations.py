"""Schedules declared in code, read into ``Declaration``s for the sync.

Three places declare jobs: ``TASKIQ_BEAT["SCHEDULE"]`` (celery beat's ``beat_schedule``
habit), taskiq's own ``schedule=[...]`` task label (what ``LabelScheduleSource`` reads),
and, with ``IMPORT_TASKIQ_DJANGO``, the rows of taskiq-django's ``taskiq_schedules``
table. Each reader returns what it could read and one ``DeclarationError`` per entry it
could not, so ``manage.py check`` reports every bad entry at once.
"""

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, timedelta
from functools import partial
from typing import Any

from django.apps import apps
from pydantic import ValidationError
from taskiq import AsyncBroker
from taskiq.scheduler.scheduled_task import ScheduledTask

from django_taskiq_beat.conf import SCHEDULE_KEY, SETTINGS_NAME, schedule_setting
from django_taskiq_beat.discovery import discover_tasks
from django_taskiq_beat.exceptions import SchedulerValidationError, short_repr
from django_taskiq_beat.models import JobSource
from django_taskiq_beat.payloads import require_json, require_labels, require_text, task_name_of
from django_taskiq_beat.policies import SchedulePolicy
from django_taskiq_beat.triggers import (
    CrontabTrigger,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    Trigger,
    require_aware,
    resolve_timezone,
    trigger_kind,
)

logger = logging.getLogger("django_taskiq_beat.sync")

TASKIQ_DJANGO_APP = "taskiq_django"
TASKIQ_DJANGO_MISSING = (
    "taskiq-django is not installed: pip install 'django-taskiq-beat[taskiq-django]' (Python 3.12+, Django 6.0.5+)"
    " and add 'taskiq_django' to INSTALLED_APPS."
)
_SETTINGS_FIELDS = frozenset(
    {
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
        "policy",
    }
)
_TRIGGER_FIELDS = ("cron", "interval", "run_at")
_TASKIQ_TRIGGER_FIELDS = ("cron", "interval", "time")
_TASKIQ_FIELDS = frozenset({"cron", "cron_offset", "time", "interval", "args", "kwargs", "labels", "schedule_id"})
_MAX_KEY_LENGTH = 200
_SECONDS_TEXT = re.compile(r"[+-]?\d{1,9}")


@dataclass(frozen=True)
class Declaration:
    """One job declared in code: what the sync makes the job ``job_id`` say."""

    source: JobSource
    job_id: str
    origin: str  # where the declaration is written, for messages and the admin
    task_name: str
    trigger: Trigger
    args: list[Any]
    kwargs: dict[str, Any]
    labels: dict[str, Any]
    name: str | None = None
    description: str | None = None
    enabled: bool = True
    policy: SchedulePolicy | None = None

    def as_stored(self) -> dict[str, Any]:
        """The declaration as the job keeps it (JSON): the next sync compares against it."""
        return {
            "origin": self.origin,
            "task": self.task_name,
            "kind": trigger_kind(self.trigger),
            "strategy": self.trigger.strategy,
            "trigger": self.trigger.to_payload(),
            "args": self.args,
            "kwargs": self.kwargs,
            "labels": self.labels,
            "name": self.name,
            "description": self.description,
            "enabled": self.enabled,
            "policy": (self.policy or SchedulePolicy()).columns(),
        }


class DeclarationError(ValueError):
    """An entry that cannot become a job: ``origin`` says where it is written, ``error`` what is wrong.

    ``job_id`` is the job the entry declares, when known: the sync leaves that job as it
    was rather than finish it for a mistake in its declaration.
    """

    job_id: str | None = None

    def __init__(self, origin: str, field: str, error: SchedulerValidationError) -> None:
        self.origin, self.field, self.error = origin, field, error
        said = str(error) if error.field == field else f"{field}: {error}"
        super().__init__(f"{origin}: {said}")


@dataclass
class Declared:
    """What one source declares; ``complete`` is False when the source could not be read whole,
    so that the sync finishes none of its jobs on a partial read."""

    source: JobSource
    declarations: list[Declaration]
    errors: list[DeclarationError]
    complete: bool = True


# -- TASKIQ_BEAT["SCHEDULE"] ----------------------------------------------------------


def settings_origin(key: Any) -> str:
    """``TASKIQ_BEAT['SCHEDULE']['nightly']``; a long or odd key is shortened, so messages stay short."""
    return f"{SETTINGS_NAME}[{SCHEDULE_KEY!r}][{short_repr(key)}]"


def from_settings(schedule: Any = None) -> Declared:
    """``TASKIQ_BEAT["SCHEDULE"]``: ``{"key": {"task": ..., "cron" | "interval" | "run_at": ..., ...}}``."""
    schedule = schedule_setting() if schedule is None else schedule
    declared = Declared(JobSource.SETTINGS, [], [])
    if not isinstance(schedule, Mapping):
        declared.errors.append(
            DeclarationError(
                f"{SETTINGS_NAME}[{SCHEDULE_KEY!r}]",
                SCHEDULE_KEY,
                SchedulerValidationError(SCHEDULE_KEY, schedule, "Must be a dict of job keys to entries."),
            )
        )
        declared.complete = False
        return declared
    for key, entry in schedule.items():
        origin = settings_origin(key)
        try:
            declared.declarations.append(_settings_entry(key, entry, origin))
        except DeclarationError as exc:
            exc.job_id = f"{JobSource.SETTINGS}:{key}" if isinstance(key, str) else None
            declared.errors.append(exc)
    return declared


def _settings_entry(key: Any, entry: Any, origin: str) -> Declaration:
    with _field(origin, "key"):
        key = require_text("key", key, max_length=_MAX_KEY_LENGTH, allow_blank=False)
    _require_entry(origin, entry, _SETTINGS_FIELDS, "'task' and one of 'cron', 'interval', 'run_at'")
    with _field(origin, "task"):
        task_name = task_name_of(entry.get("task"))
    trigger_field = _one_trigger(origin, entry, _TRIGGER_FIELDS)
    if "timezone" in entry and trigger_field != "cron":
        raise DeclarationError(
            origin,
            "timezone",
            SchedulerValidationError(
                "timezone",
                entry["timezone"],
                "A timezone applies to 'cron' only: 'interval' and 'run_at' are instants.",
            ),
        )
    value = entry[trigger_field]
    with _field(origin, trigger_field):
        if trigger_field == "cron":
            trigger: Trigger = PeriodicSchedule(crontab=CrontabTrigger.from_expression(value, entry.get("timezone")))
        elif trigger_field == "interval":
            trigger = PeriodicSchedule(interval=IntervalTrigger(seconds=_seconds("interval", value)))
        else:
            trigger = OneOffSchedule(run_at=value)
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise DeclarationError(
            origin, "enabled", SchedulerValidationError("enabled", enabled, "Must be True or False.")
        )
    with _field(origin, "policy"):
        policy = None if entry.get("policy") is None else SchedulePolicy.from_mapping(entry["policy"])
    with _field(origin, "entry"):
        return Declaration(
            source=JobSource.SETTINGS,
            job_id=f"{JobSource.SETTINGS}:{key}",
            origin=origin,
            task_name=task_name,
            trigger=trigger,
            args=_json(origin, entry, "args", list),
            kwargs=_json(origin, entry, "kwargs", dict),
            labels=_labels(origin, entry.get("labels")),
            name=_text(origin, entry, "name"),
            description=_text(origin, entry, "description"),
            enabled=enabled,
            policy=policy,
        )


# -- taskiq's schedule=[...] labels ---------------------------------------------------


def from_task_labels(broker: AsyncBroker) -> Declared:
    """Every ``schedule`` label of the broker's tasks, as taskiq's ``LabelScheduleSource`` reads them."""
    declared = Declared(JobSource.TASKIQ, [], [])
    try:
        discover_tasks()
    except ImportError as exc:  # the tasks that did register are read; none of this source's jobs is finished
        declared.complete = False
        declared.errors.append(
            DeclarationError(
                "the installed apps' task modules",
                "tasks",
                SchedulerValidationError(
                    "tasks", getattr(exc, "name", None), f"{exc}; the schedule labels of its tasks cannot be read."
                ),
            )
        )
    for task_name, task in sorted(broker.get_all_tasks().items()):
        if task.broker is not broker:
            logger.warning(
                "Task %s is registered on another broker (%r): its schedule label is not read.", task_name, task.broker
            )
            continue
        entries = task.labels.get("schedule")
        if entries is None:
            continue
        if not isinstance(entries, list | tuple):
            declared.complete = False  # which jobs it meant is unknown: none of this source's is finished
            declared.errors.append(
                DeclarationError(
                    f"task {task_name!r}",
                    "schedule",
                    SchedulerValidationError("schedule", entries, "taskiq's schedule label is a list of dicts."),
                )
            )
            continue
        for index, entry in enumerate(entries):
            origin = f"the schedule label of task {task_name!r}, entry {index}"
            schedule_id = entry.get("schedule_id") if isinstance(entry, Mapping) else None
            # Only text names a job: any other value is refused by _label_entry (and may be too deep to format).
            named = isinstance(schedule_id, str) and schedule_id
            job_id = f"{JobSource.TASKIQ}:{schedule_id}" if named else f"{JobSource.TASKIQ}:{task_name}:{index}"
            _read_into(declared, job_id, partial(_label_entry, task, job_id, origin, entry))
    return declared


def _label_entry(task: Any, job_id: str, origin: str, entry: Any) -> Declaration:
    """A ``schedule`` label entry; as in taskiq, the task's own labels win over the entry's."""
    schedule_id = entry.get("schedule_id") if isinstance(entry, Mapping) else None
    if schedule_id is not None:
        with _field(origin, "schedule_id"):
            require_text("schedule_id", schedule_id, max_length=200, allow_blank=False)
    declaration = taskiq_entry(JobSource.TASKIQ, job_id, origin, task.task_name, entry)
    own = set(task.labels)
    return replace(declaration, labels={key: value for key, value in declaration.labels.items() if key not in own})


def taskiq_entry(source: JobSource, job_id: str, origin: str, task_name: str, entry: Any) -> Declaration:
    """One entry in taskiq's schedule format, parsed by taskiq's own ``ScheduledTask`` first.

    taskiq evaluates every trigger an entry names; a job has one, so an entry names one.
    ``cron_offset`` is an IANA zone, or a whole number of hours from UTC (a fixed-offset zone);
    without one a cron is matched in UTC, and a naive ``time`` is UTC, as in taskiq.
    """
    _require_entry(origin, entry, _TASKIQ_FIELDS, "one of 'cron', 'interval', 'time'")
    trigger_field = _one_trigger(origin, entry, _TASKIQ_TRIGGER_FIELDS)
    fields = {name: entry[name] for name in ("cron", "cron_offset", "time", "interval") if entry.get(name) is not None}
    try:
        parsed = ScheduledTask(task_name=task_name, labels={}, args=[], kwargs={}, **fields)
    except (ValidationError, ValueError, TypeError) as exc:
        field = _pydantic_field(exc, fields) or trigger_field
        raise DeclarationError(
            origin,
            field,
            SchedulerValidationError(field, entry.get(field), f"taskiq refuses it: {_pydantic_text(exc)}"),
        ) from None
    with _field(origin, trigger_field):
        if parsed.cron is not None:
            with _field(origin, "cron_offset"):
                zone = _cron_zone(parsed.cron_offset) or "UTC"  # taskiq matches a cron without offset in UTC
            trigger: Trigger = PeriodicSchedule(crontab=CrontabTrigger.from_expression(parsed.cron, zone))
        elif parsed.interval is not None:
            trigger = PeriodicSchedule(interval=IntervalTrigger(seconds=_seconds("interval", parsed.interval)))
        else:
            assert parsed.time is not None
            moment = parsed.time if parsed.time.tzinfo else parsed.time.replace(tzinfo=UTC)
            trigger = OneOffSchedule(run_at=require_aware(moment, "time"))
    with _field(origin, "job_id"):
        require_text("job_id", job_id, max_length=255, allow_blank=False)
    return Declaration(
        source=source,
        job_id=job_id,
        origin=origin,
        task_name=task_name,
        trigger=trigger,
        args=_json(origin, entry, "args", list),
        kwargs=_json(origin, entry, "kwargs", dict),
        labels=_labels(origin, entry.get("labels")),
    )


def _cron_zone(offset: Any) -> str | None:
    """taskiq's ``cron_offset`` as an IANA zone: a name as it is, whole hours as ``Etc/GMT-3``.

    taskiq-django stores a timedelta offset as its seconds in text ("3600"): read as such.
    """
    if offset is None:
        return None
    if isinstance(offset, str) and _SECONDS_TEXT.fullmatch(offset.strip()):
        offset = timedelta(seconds=int(offset))
    if isinstance(offset, str):
        return resolve_timezone(offset, "cron_offset").key
    hours, rest = divmod(offset, timedelta(hours=1))
    if rest or not -12 <= hours <= 14:
        raise SchedulerValidationError(
            "cron_offset",
            offset,
            "Only whole hours from -12 to +14 have a fixed-offset zone; name an IANA zone instead.",
        )
    # POSIX-style Etc zones count west as positive: UTC+3 is Etc/GMT-3.
    return "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"


def _pydantic_field(error: Exception, fields: Mapping[str, Any]) -> str | None:
    """The entry field pydantic names first, if it names one."""
    if isinstance(error, ValidationError):
        for problem in error.errors():
            if problem["loc"] and problem["loc"][0] in fields:
                return str(problem["loc"][0])
    return None


def _pydantic_text(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(problem["msg"] for problem in error.errors())[:300]
    return str(error)[:300]


# -- taskiq-django's table ------------------------------------------------------------


def from_taskiq_django(broker: AsyncBroker) -> Declared:
    """The rows of taskiq-django's ``taskiq_schedules`` table (``IMPORT_TASKIQ_DJANGO``).

    A row is data, not code: a bad one is an error of its own, logged by the sync, and
    the other rows are still synced.
    """
    discover_tasks()
    declared = Declared(JobSource.TASKIQ_DJANGO, [], [])
    model = taskiq_django_model()
    for row in model.objects.order_by("pk").values(
        "schedule_id", "task_name", "cron", "cron_offset", "time", "interval", "args", "kwargs", "labels"
    ):
        schedule_id = row.pop("schedule_id")
        task_name = row.pop("task_name")
        origin = f"taskiq-django's schedule {schedule_id!r}"
        entry = {key: value for key, value in row.items() if value not in (None, "")}
        job_id = f"{JobSource.TASKIQ_DJANGO}:{schedule_id}"
        _read_into(declared, job_id, partial(taskiq_entry, JobSource.TASKIQ_DJANGO, job_id, origin, task_name, entry))
    return declared


def taskiq_django_model() -> Any:
    """taskiq-django's schedule model; ``LookupError`` when its app is not installed."""
    return apps.get_app_config(TASKIQ_DJANGO_APP).get_model("TaskiqTaskSchedule")


# -- shared field readers --------------------------------------------------------------


def _read_into(declared: Declared, job_id: str, read: Callable[[], Declaration]) -> None:
    try:
        declared.declarations.append(read())
    except DeclarationError as exc:
        exc.job_id = job_id
        declared.errors.append(exc)


class _field:
    """Turns a ``SchedulerValidationError`` raised inside into a ``DeclarationError`` naming ``field``."""

    def __init__(self, origin: str, field: str) -> None:
        self.origin, self.field = origin, field

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        if isinstance(error, SchedulerValidationError) and not isinstance(error, DeclarationError):
            raise DeclarationError(self.origin, self.field, error) from None


def _require_entry(origin: str, entry: Any, known: frozenset[str], needs: str) -> None:
    """A dict whose keys are all ``known`` fields."""
    if not isinstance(entry, Mapping):
        raise DeclarationError(
            origin, "entry", SchedulerValidationError("entry", entry, f"Must be a dict with {needs}.")
        )
    unknown = sorted((key for key in entry if key not in known), key=str)
    if unknown:
        raise DeclarationError(
            origin,
            str(unknown[0]),
            SchedulerValidationError(
                str(unknown[0]), entry[unknown[0]], f"Unknown field; the fields are {', '.join(sorted(known))}."
            ),
        )


def _one_trigger(origin: str, entry: Mapping[str, Any], names: Iterable[str]) -> str:
    given = [name for name in names if entry.get(name) is not None]
    if len(given) != 1:
        names = tuple(names)
        problem = "Give one of " if not given else "A job has one trigger: give only one of "
        raise DeclarationError(
            origin,
            given[1] if given else names[0],
            SchedulerValidationError(
                given[1] if given else "trigger",
                {name: entry.get(name) for name in given} or None,
                problem + ", ".join(repr(name) for name in names) + " (declare another entry for another trigger).",
            ),
        )
    return given[0]


def _seconds(field: str, value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchedulerValidationError(field, value, "Must be a number of seconds or a timedelta.")
    return value


def _json(origin: str, entry: Mapping[str, Any], field: str, expected: type) -> Any:
    with _field(origin, field):
        return require_json(entry.get(field), field, expected)


def _labels(origin: str, labels: Any) -> dict[str, Any]:
    with _field(origin, "labels"):
        return require_labels(labels)


def _text(origin: str, entry: Mapping[str, Any], field: str) -> str | None:
    value = entry.get(field)
    with _field(origin, field):
        return None if value is None else require_text(field, value, max_length=255 if field == "name" else None)
