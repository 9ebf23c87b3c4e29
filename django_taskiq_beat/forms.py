"""The admin's job form: one form for interval, crontab, one-off and windowed jobs.

It checks input with the same trigger classes and builder as the Python API, maps
their ``SchedulerValidationError`` onto the form's fields, and saves through
``SchedulerApp`` (``schedule`` to add, ``upsert`` to change), never by writing the row
itself. Adding never changes an existing job: a taken id is a form error.
"""

import json
import uuid
import zoneinfo
from datetime import datetime
from functools import cache
from typing import Any, cast

from django import forms
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_taskiq_beat.app import SchedulerApp
from django_taskiq_beat.chains import CHAIN_ORCHESTRATOR_TASK_NAME
from django_taskiq_beat.cron import FIELD_NAMES as CRON_FIELDS
from django_taskiq_beat.exceptions import SchedulerValidationError, short_repr
from django_taskiq_beat.models import JobSource, SchedulerJob
from django_taskiq_beat.policies import (
    CATCH_UP_ALL,
    CATCH_UP_LATEST,
    OVERLAP_ALLOW,
    OVERLAP_BUFFER_ONE,
    OVERLAP_SKIP,
    SchedulePolicy,
)
from django_taskiq_beat.triggers import (
    CrontabTrigger,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    Trigger,
    zone_names,
)

SCHEDULE_TYPES = [("interval", "every ... (interval)"), ("crontab", "crontab"), ("one_off", "once, at a time")]
INTERVAL_UNITS = [("seconds", "seconds"), ("minutes", "minutes"), ("hours", "hours"), ("days", "days")]
_OTHER_TASK = ""
_DATETIME = forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S")
_WINDOW_FIELDS = ("start_at", "end_at")
_TIME_FIELDS = ("run_at", *_WINDOW_FIELDS)


class WallClockField(forms.DateTimeField):
    """A date and time as typed, in no zone yet: the form's own timezone field says which (``in_zone``).

    Django's field reads it in the site's time zone at once: it refused a time that zone skips
    at a DST change even where the chosen zone has none, and the chosen zone then saw a time
    already moved. A UTC offset typed with the time is kept.
    """

    widget = _DATETIME

    def to_python(self, value: Any) -> datetime | None:
        if value in self.empty_values:
            return None
        if isinstance(value, datetime):
            return value
        try:
            parsed = parse_datetime(str(value).strip())
        except ValueError:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None
        return parsed or super(forms.DateTimeField, self).to_python(value)  # the input formats, read as typed


def in_zone(value: datetime, zone: zoneinfo.ZoneInfo, field: str) -> datetime:
    """A ``WallClockField``'s time in ``zone`` (a typed UTC offset wins). A time the zone skips or repeats at a
    clock change (daylight saving time) names no single instant: refused, as Django refuses it in the site's zone."""
    if value.tzinfo is not None:
        return value
    aware = value.replace(tzinfo=zone)
    if aware.utcoffset() != aware.replace(fold=1).utcoffset():
        raise SchedulerValidationError(
            field, value, f"This time is skipped or repeated in {zone.key} (a clock change): choose another."
        )
    return aware


def _refusal(error: SchedulerValidationError) -> str:
    """The API's refusal as a form error: the problem, then the field and the value (a time as typed, not its repr)."""
    shown = error.value.isoformat(sep=" ") if isinstance(error.value, datetime) else short_repr(error.value)
    return f"{error.problem} ({error.field}={shown})"


# Where an API error about a field shows up in the form.
_ERROR_FIELDS = {
    **{unit: "interval_every" for unit, _ in INTERVAL_UNITS},
    "interval": "interval_every",
    **{name: name for name in CRON_FIELDS},
    "crontab": "cron_expression",
    "timezone": "timezone",
    "run_at": "run_at",
    "start_at": "start_at",
    "end_at": "end_at",
    "trigger": "schedule_type",
    "task": "task_name",
    "args": "args",
    "kwargs": "kwargs",
    "labels": "labels",
    "overlap": "overlap",
    "misfire_grace_seconds": "misfire_grace_seconds",
    "catch_up": "catch_up",
    "jitter_seconds": "jitter_seconds",
    "pause_after_failures": "pause_after_failures",
    "max_runs": "max_runs",
    "job_id": "job_id",
    "name": "name",
    "description": "description",
}


class JSONValueField(forms.JSONField):
    """Django's JSON field, also refusing JSON nested too deep to parse (not a 500)."""

    def to_python(self, value: Any) -> Any:
        try:
            return super().to_python(value)
        except RecursionError:
            raise forms.ValidationError("Nested too deeply.", code="invalid") from None

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return data

    def prepare_value(self, value: Any) -> Any:
        """Escape what cannot be written to the page as UTF-8 (``"\\ud800"`` parses to a lone surrogate)."""
        text = super().prepare_value(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(value, ensure_ascii=True, cls=self.encoder)
        return text


@cache
def _timezones() -> list[tuple[str, str]]:
    """The zones a schedule takes (``resolve_timezone``): no choice the form offers is one the API refuses."""
    return [(name, name) for name in sorted(zone_names())]


class ZoneSelect(forms.Select):
    """The ~600 zone names, each option written by the select's own template: through Django's option template
    (an include per option) the zone list was most of a job page's render time. Options only, no groups."""

    template_name = "django_taskiq_beat/widgets/zone_select.html"


class SchedulerJobForm(forms.ModelForm):
    """Create or change a single-task job; saving calls ``SchedulerApp.single(...).upsert(...)``."""

    job_id = forms.CharField(required=False, max_length=255, help_text="Leave empty for a generated id.")
    task = forms.ChoiceField(required=False, help_text="A task the broker knows; or type a name below.")
    task_name = forms.CharField(required=False, max_length=255, label="Other task name")
    args = JSONValueField(initial=list, required=False, help_text='A JSON array, e.g. [42, "x"].')
    kwargs = JSONValueField(initial=dict, required=False, help_text='A JSON object, e.g. {"label": "ping"}.')
    labels = JSONValueField(
        initial=dict,
        required=False,
        label="Taskiq labels",
        help_text='Sent with every message, e.g. {"queue": "low", "priority": 3}: strings, numbers or booleans.',
    )
    schedule_type = forms.ChoiceField(choices=SCHEDULE_TYPES, initial="interval")
    interval_every = forms.FloatField(required=False, label="Every")
    interval_unit = forms.ChoiceField(choices=INTERVAL_UNITS, initial="minutes", required=False, label="Unit")
    cron_expression = forms.CharField(
        required=False,
        max_length=1000,
        help_text="5 fields (or 6 with seconds first); when given, the fields below are ignored.",
    )
    second = forms.CharField(required=False, initial="0", max_length=200)
    minute = forms.CharField(required=False, initial="*", max_length=200)
    hour = forms.CharField(required=False, initial="*", max_length=200)
    day_of_month = forms.CharField(required=False, initial="*", max_length=200)
    month_of_year = forms.CharField(required=False, initial="*", max_length=200)
    day_of_week = forms.CharField(
        required=False, initial="*", max_length=200, help_text="0 and 7 are Sunday; names work (mon)."
    )
    timezone = forms.ChoiceField(widget=ZoneSelect, help_text="Cron times and the times entered here are in this zone.")
    run_at = WallClockField(required=False, label="Run at", help_text="For 'once'.")
    start_at = WallClockField(required=False, help_text="Optional start of an interval or crontab window.")
    end_at = WallClockField(required=False, help_text="Optional end of the window; a slot at the end still runs.")
    is_enabled = forms.BooleanField(required=False, initial=True, label="Enabled")
    overlap = forms.ChoiceField(
        choices=[
            (OVERLAP_ALLOW, "send it anyway"),
            (OVERLAP_SKIP, "skip the slot"),
            (OVERLAP_BUFFER_ONE, "send it once the previous run finishes (one slot waits)"),
        ],
        initial=OVERLAP_ALLOW,
        required=False,
        label="If still running",
        help_text="A slot due while the previous run has not finished (it reads the worker's outcomes).",
    )
    misfire_grace_seconds = forms.FloatField(
        required=False,
        label="Misfire grace (s)",
        help_text="A slot found later than this is skipped, not sent (empty: sent however late).",
    )
    catch_up = forms.ChoiceField(
        choices=[(CATCH_UP_LATEST, "one run for the latest missed slot"), (CATCH_UP_ALL, "one run per missed slot")],
        initial=CATCH_UP_LATEST,
        required=False,
        label="After an outage",
    )
    jitter_seconds = forms.FloatField(
        required=False,
        initial=0,
        label="Jitter (s)",
        help_text="Each slot is sent at a delay in [0, jitter), the same in every engine; the slot itself is kept.",
    )
    max_runs = forms.IntegerField(
        required=False,
        label="Max runs",
        help_text="The job finishes after this many scheduled sends; run now does not count (empty: no limit).",
    )
    pause_after_failures = forms.IntegerField(
        required=False,
        label="Pause after failures",
        help_text="Pause the job after this many runs in a row that the worker reported failed (empty: never).",
    )

    class Meta:
        model = SchedulerJob
        fields = ("name", "description")

    def __init__(self, *args: Any, app: SchedulerApp, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app
        known = sorted(name for name in app.broker.get_all_tasks() if name != CHAIN_ORCHESTRATOR_TASK_NAME)
        _choice_field(self, "task").choices = [
            (_OTHER_TASK, "— other (type it below) —"),
            *((name, name) for name in known),
        ]
        _choice_field(self, "timezone").choices = _timezones()
        self.fields["timezone"].initial = app.config.default_timezone
        self.editing = not self.instance._state.adding
        self._stored_times: dict[str, datetime] = {}  # the edited job's times, as instants
        if self.editing:
            self._fill_from(self.instance)
            self.fields["job_id"].disabled = True
            self.fields["job_id"].help_text = ""

    def _fill_from(self, job: SchedulerJob) -> None:
        """Show the stored job in the form's terms."""
        known = dict(_choice_field(self, "task").choices)  # type: ignore[arg-type]  # django-stubs: a list here
        initial: dict[str, Any] = {
            "job_id": job.pk,
            "args": job.task_args,
            "kwargs": job.task_kwargs,
            "labels": job.task_labels,
            "is_enabled": job.is_enabled,
            **SchedulePolicy.of(job).columns(),
            "task": job.task_name if job.task_name in known else _OTHER_TASK,
            "task_name": "" if job.task_name in known else job.task_name,
        }
        zone = self.app.config.default_timezone
        assert zone is not None  # SchedulerConfig resolved it (TIME_ZONE when None)
        try:
            trigger = job.trigger
        except SchedulerValidationError:
            trigger = None  # unreadable: the admin says so, and saving a new schedule replaces it
        if isinstance(trigger, OneOffSchedule):
            zone = trigger.timezone or zone
            initial.update(schedule_type="one_off", run_at=trigger.run_at)
        elif isinstance(trigger, PeriodicSchedule):
            initial.update(start_at=trigger.start_at, end_at=trigger.end_at)
            if trigger.interval is not None:
                unit = next(unit for unit, _ in INTERVAL_UNITS if getattr(trigger.interval, unit) is not None)
                initial.update(
                    schedule_type="interval", interval_every=getattr(trigger.interval, unit), interval_unit=unit
                )
            elif trigger.crontab is not None:
                zone = trigger.crontab.timezone or zone
                initial.update(
                    schedule_type="crontab", **{name: getattr(trigger.crontab, name) for name in CRON_FIELDS}
                )
        initial["timezone"] = zone
        for name in _TIME_FIELDS:
            if initial.get(name):
                self._stored_times[name] = initial[name]
                initial[name] = timezone.localtime(initial[name], zoneinfo.ZoneInfo(zone)).replace(tzinfo=None)
        self.initial.update(initial)

    # -- validation: the API's rules, mapped onto the fields -----------------------------------------

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if self.errors:
            return data
        try:
            self.trigger = self._trigger(data)
            self.task_call = self.app.single(
                task=data.get("task") or data.get("task_name") or "",
                args=data.get("args") if data.get("args") is not None else [],
                kwargs=data.get("kwargs") if data.get("kwargs") is not None else {},
                metadata=self.instance.metadata_payload if self.editing else None,
                labels=data.get("labels") if data.get("labels") is not None else {},
            )
            self.policy = SchedulePolicy(
                overlap=data.get("overlap") or OVERLAP_ALLOW,
                misfire_grace_seconds=data.get("misfire_grace_seconds"),
                catch_up=data.get("catch_up") or CATCH_UP_LATEST,
                jitter_seconds=data.get("jitter_seconds") or 0,
                max_runs=data.get("max_runs"),
                pause_after_failures=data.get("pause_after_failures"),
            )
            self.task_call.validate(
                self.trigger, self._job_id(data), data.get("name"), data.get("description"), policy=self.policy
            )
        except SchedulerValidationError as error:
            field = _ERROR_FIELDS.get(error.field.split("[")[0])
            if error.field == "policy":  # the policy needs outcomes the broker does not report: next to its field
                field = self.policy.outcome_readers[0]
            elif field in CRON_FIELDS and (data.get("cron_expression") or "").strip():
                field = "cron_expression"  # the fields below it were ignored: the mistake is in the expression
            self.add_error(field, _refusal(error))
            return data
        if not self.editing and SchedulerJob.objects.filter(pk=self._job_id(data)).exists():
            self.add_error("job_id", "A job with this id already exists; open it to change it.")
        return data

    def _instant(self, data: dict[str, Any], name: str) -> datetime:
        """The time typed in ``name``, in the chosen zone; an edited job's stored time as it was, where neither
        it nor the zone was changed: it may lie in an hour its zone repeats, which a typed time may not."""
        if name in self._stored_times and not {name, "timezone"} & set(self.changed_data):
            return self._stored_times[name]
        return in_zone(data[name], zoneinfo.ZoneInfo(data["timezone"]), name)

    def _job_id(self, data: dict[str, Any]) -> str:
        if self.editing:
            return self.instance.pk
        if not getattr(self, "_new_id", None):
            self._new_id = data.get("job_id") or str(uuid.uuid4())
        return self._new_id

    def _trigger(self, data: dict[str, Any]) -> Trigger:
        zone = data["timezone"]
        kind = data["schedule_type"]
        if kind == "one_off":
            if data.get("run_at") is None:
                raise SchedulerValidationError("run_at", None, "A one-off job needs a time to run at.")
            return OneOffSchedule(run_at=self._instant(data, "run_at"), timezone=zone)
        window: dict[str, Any] = {
            name: self._instant(data, name) if data.get(name) else None for name in _WINDOW_FIELDS
        }
        if kind == "interval":
            if data.get("interval_every") is None:
                raise SchedulerValidationError("interval", None, "Say how often: a number and a unit.")
            interval = IntervalTrigger(**{data.get("interval_unit") or "minutes": data["interval_every"]})
            return PeriodicSchedule(interval=interval, **window)
        expression = (data.get("cron_expression") or "").strip()
        if expression:
            crontab = CrontabTrigger.from_expression(expression, timezone=zone)
        else:
            # A field left blank means what the API's default means: second 0, every minute, hour ...
            crontab = CrontabTrigger(
                **{name: data.get(name) or ("0" if name == "second" else "*") for name in CRON_FIELDS}, timezone=zone
            )
        return PeriodicSchedule(crontab=crontab, **window)

    # -- saving, through the app ---------------------------------------------------------------------

    def save(self, commit: bool = True) -> SchedulerJob:
        """Create (``schedule``) or change (``upsert``) through ``SchedulerApp``; the enabled flag is
        the operator's explicit choice."""
        data = self.cleaned_data
        identity: dict[str, Any] = {
            "name": data.get("name") or None,
            "description": data.get("description") or None,
            "is_enabled": bool(data.get("is_enabled")),
            "policy": self.policy,
        }
        if self.editing:
            return self.task_call.upsert(self.trigger, self._job_id(data), **identity)
        return self.task_call.schedule(self.trigger, self._job_id(data), **identity, source=JobSource.ADMIN)


def _choice_field(form: forms.BaseForm, name: str) -> forms.ChoiceField:
    """A field the form declares as a ``ChoiceField`` (``form.fields`` holds any ``Field``)."""
    return cast(forms.ChoiceField, form.fields[name])


class BackfillForm(forms.Form):
    """The admin's backfill action: a range, in a timezone, for ``SchedulerApp.backfill``."""

    start = WallClockField(help_text="The first slot sent is the first at or after this.")
    end = WallClockField(help_text="Slots before this (and already past) are sent.")
    timezone = forms.ChoiceField(widget=ZoneSelect, help_text="The times above are in this zone.")

    def __init__(self, *args: Any, default_timezone: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choice_field(self, "timezone").choices = _timezones()
        self.fields["timezone"].initial = default_timezone

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if self.errors:
            return data
        zone = zoneinfo.ZoneInfo(data["timezone"])
        for name in ("start", "end"):
            try:
                data[name] = in_zone(data[name], zone, name)
            except SchedulerValidationError as error:
                self.add_error(name, _refusal(error))
        if not self.errors and data["end"] <= data["start"]:
            self.add_error("end", "Must be after start.")
        return data
