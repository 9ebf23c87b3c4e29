"""How a job reads to a person: its schedule in words, its next fire times, local times.

The admin and the ``taskiq_beat`` command show jobs the same way.
"""

import uuid
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from django.utils import timezone

from django_taskiq_beat.chains import CHAIN_ORCHESTRATOR_TASK_NAME
from django_taskiq_beat.declarations import settings_origin
from django_taskiq_beat.exceptions import SchedulerValidationError
from django_taskiq_beat.models import JobSource, SchedulerJob
from django_taskiq_beat.triggers import ImmediateDispatch, IntervalTrigger, OneOffSchedule, PeriodicSchedule


def local_time(moment: datetime, zone: tzinfo | None = None) -> str:
    """The time in ``zone`` (else the project's), to the second, with the zone's abbreviation."""
    try:
        return timezone.localtime(moment, zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    except OverflowError:  # a time at the calendar's edge, stored before it was refused
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def dicts_in(value: Any, key: str) -> list[dict[str, Any]]:
    """``value[key]`` as a list of dicts (a chain's steps, its progress): [] for a row written otherwise."""
    items = value.get(key) if isinstance(value, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def job_label(job: SchedulerJob) -> str:
    """Its name; an unnamed job with a generated id is its task and the id's first 8 characters."""
    if job.name:
        return job.name
    try:
        uuid.UUID(job.id)
    except ValueError:
        return job.id  # an id someone chose says something
    return f"{job.task_name} · {job.id[:8]}"


def short_time(moment: datetime, now: datetime | None = None) -> str:
    """For lists: ``14:58:45`` today, ``2026-12-03 14:58`` on other days, in the project's zone."""
    local, today = timezone.localtime(moment), timezone.localtime(now or timezone.now()).date()
    return local.strftime("%H:%M:%S") if local.date() == today else local.strftime("%Y-%m-%d %H:%M")


def relative_time(moment: datetime, now: datetime | None = None) -> str:
    """'in 5 s', '3 min ago', '2 h ago', '4 d ago': short, and never 'in 0 minutes'."""
    seconds = ((now or timezone.now()) - moment).total_seconds()
    amount = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if amount >= size:
            text = f"{amount // size:.0f} {unit}"
            break
    else:
        text = f"{amount:.0f} s"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def _interval_text(interval: IntervalTrigger) -> str:
    for unit in ("days", "hours", "minutes", "seconds"):
        value = getattr(interval, unit)
        if value is not None:
            return f"every {unit[:-1]}" if value == 1 else f"every {value:g} {unit}"
    return "every ?"


def declaration_text(job: SchedulerJob) -> str:
    """Where a declared job is written, as the sync last read it: ``TASKIQ_BEAT['SCHEDULE']['nightly']``."""
    origin = job.declaration.get("origin") if isinstance(job.declaration, dict) else None
    if origin:
        return str(origin)
    places: dict[str, str] = {
        JobSource.SETTINGS: settings_origin(job.id.partition(":")[2]),
        JobSource.TASKIQ: f"a schedule label of task {job.task_name!r}",
        JobSource.TASKIQ_DJANGO: f"taskiq-django's schedule {job.id.partition(':')[2]!r}",
    }
    where = places.get(job.source, "")
    return f"no longer declared; it was in {where}" if where else ""


def trigger_problem(job: SchedulerJob) -> str | None:
    """Why the job's stored trigger cannot be read, or None."""
    try:
        job.trigger  # noqa: B018  (reading it is the check)
    except SchedulerValidationError as exc:
        return str(exc)
    return None


def describe_schedule(job: SchedulerJob) -> str:
    """'every 5 minutes', 'cron 0 */5 * * * * (Europe/Berlin)', 'once at ...', 'chain of 3 steps, ...'."""
    try:
        trigger = job.trigger
    except Exception:
        return f"unreadable {job.strategy} trigger"
    if isinstance(trigger, ImmediateDispatch):
        text = "immediately"
    elif isinstance(trigger, OneOffSchedule):
        zone = ZoneInfo(trigger.timezone) if trigger.timezone else None
        text = f"once at {local_time(trigger.run_at, zone)}" + (f" ({trigger.timezone})" if zone else "")
    else:
        assert isinstance(trigger, PeriodicSchedule)
        if trigger.interval is not None:
            text = _interval_text(trigger.interval)
        else:
            assert trigger.crontab is not None
            text = f"cron {trigger.crontab.expression} ({trigger.crontab.timezone or 'default timezone'})"
        if trigger.start_at:
            text += f", from {local_time(trigger.start_at)}"
        if trigger.end_at:
            text += f", until {local_time(trigger.end_at)}"
    if job.task_name == CHAIN_ORCHESTRATOR_TASK_NAME:
        steps = len(dicts_in(job.task_kwargs, "steps"))
        text = f"chain of {steps} step{'' if steps == 1 else 's'}, {text}"
    return text


def next_fire_times(job: SchedulerJob, count: int = 5) -> list[datetime]:
    """The job's next slots from its stored next run (or from now), for the preview."""
    try:
        trigger = job.trigger
    except Exception:
        return []
    if not isinstance(trigger, PeriodicSchedule):
        return [job.next_run_at] if job.next_run_at else []
    times: list[datetime] = []
    current = job.next_run_at or trigger.next_after(timezone.now(), job.created_at)
    while current is not None and len(times) < count:
        times.append(current)
        current = trigger.next_after(current, job.created_at)
    return times
