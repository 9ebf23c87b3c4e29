"""The jobs screen: the list with state, schedule and recent runs; the form; actions through ``SchedulerApp``.

Every change goes through ``SchedulerApp`` (pause, resume, run now, backfill, delete), never
through raw row edits, so the rules of the API and the engine's wake-ups apply.
Everything shown is escaped (``format_html``).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.db import transaction
from django.db.models import Count, F, Prefetch, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import capfirst

from django_taskiq_beat.admin.common import (
    OUTCOME_COLOURS,
    STATE_COLOURS,
    UNKNOWN_COLOUR,
    SafeListAdmin,
    change_url,
    dead_after,
    duration_text,
    lag_text,
    list_time,
    run_colour_and_label,
    sparkline,
)
from django_taskiq_beat.app import get_scheduler_app
from django_taskiq_beat.bulk import begin_write
from django_taskiq_beat.chains import CHAIN_ORCHESTRATOR_TASK_NAME
from django_taskiq_beat.describe import (
    declaration_text,
    describe_schedule,
    dicts_in,
    job_label,
    local_time,
    next_fire_times,
    relative_time,
    trigger_problem,
)
from django_taskiq_beat.exceptions import JobNotFoundError, SchedulerValidationError
from django_taskiq_beat.forms import BackfillForm, SchedulerJobForm
from django_taskiq_beat.health import live_engines
from django_taskiq_beat.models import JobState, SchedulerJob, SchedulerRun
from django_taskiq_beat.policies import SchedulePolicy

RECENT_RUNS = 20
SPARKLINE_RUNS = 60
_LISTED_PROBLEMS = 10


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(JobState.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[SchedulerJob]) -> QuerySet[SchedulerJob]:
        value = self.value()
        return queryset.in_state(value) if value in JobState.values else queryset  # type: ignore[attr-defined]


class KindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("single", "single task"), ("chain", "chain"), ("one_off", "one-off"), ("periodic", "periodic")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[SchedulerJob]) -> QuerySet[SchedulerJob]:
        match self.value():
            case "chain":
                return queryset.filter(task_name=CHAIN_ORCHESTRATOR_TASK_NAME)
            case "single":
                return queryset.exclude(task_name=CHAIN_ORCHESTRATOR_TASK_NAME)
            case "one_off" | "periodic" as kind:
                return queryset.filter(kind=kind)
        return queryset


@admin.register(SchedulerJob)
class SchedulerJobAdmin(SafeListAdmin):
    # Six columns, so that the list fits a 1280 px window beside the admin's menu and the filters: the
    # task goes under the name, the count of sends under the strip of runs.
    list_display = ("display_name", "schedule_and_policy", "state_badge", "next_run", "last_run", "recent_runs_strip")
    list_filter = (StateFilter, KindFilter, "source", "strategy", "task_name")
    search_fields = ("id", "name", "task_name")
    ordering = (F("next_run_at").asc(nulls_last=True), "id")
    sortable_by = ("display_name", "next_run", "recent_runs_strip")
    list_per_page = 50
    actions = ("pause_jobs", "resume_jobs", "run_jobs_now", "backfill_jobs")
    readonly_fields = (
        "id",
        "name",
        "description",
        "task_name",
        "schedule",
        "state_badge",
        "last_outcome_text",
        "pause_text",
        "next_run",
        "next_fire_times_preview",
        "is_enabled",
        "source",
        "declared_in",
        "policy",
        "skipped_count",
        "task_args",
        "task_kwargs",
        "task_labels",
        "metadata_payload",
        "chain_steps",
        "last_run_at",
        "last_error",
        "last_dispatched_task_id",
        "dispatch_count",
        "dispatch_failures",
        "finished_at",
        "created_at",
        "updated_at",
        "runs_sparkline",
        "recent_runs_table",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "name",
                    "description",
                    "task_name",
                    "schedule",
                    "state_badge",
                    "last_outcome_text",
                    "pause_text",
                    "is_enabled",
                    "source",
                    "declared_in",
                )
            },
        ),
        ("Timing", {"fields": ("next_run", "next_fire_times_preview", "policy", "last_run_at", "finished_at")}),
        ("What is sent", {"fields": ("task_args", "task_kwargs", "task_labels", "chain_steps", "metadata_payload")}),
        (
            "Dispatch",
            {
                "fields": (
                    "dispatch_count",
                    "dispatch_failures",
                    "skipped_count",
                    "last_error",
                    "last_dispatched_task_id",
                    "created_at",
                    "updated_at",
                )
            },
        ),
        ("Recent runs", {"fields": ("runs_sparkline", "recent_runs_table")}),
    )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if request.method == "GET":
            silent_for = dead_after()
            if not live_engines(silent_for):
                self.message_user(
                    request,
                    f"No scheduler engine is alive (none has sent a heartbeat in the last"
                    f" {silent_for.total_seconds():g} s): nothing is being sent. Start manage.py run_taskiq_beat.",
                    messages.WARNING,
                )
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request: HttpRequest) -> QuerySet[SchedulerJob]:
        recent = SchedulerRun.objects.order_by("-scheduled_for").only(
            "id", "job_id", "status", "outcome", "scheduled_for", "dispatched_at", "error", "reason", "claimed_by"
        )[:RECENT_RUNS]
        return super().get_queryset(request).prefetch_related(Prefetch("runs", queryset=recent, to_attr="recent_runs"))

    form = SchedulerJobForm
    edit_fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "description",
                    "job_id",
                    "task",
                    "task_name",
                    "args",
                    "kwargs",
                    "labels",
                    "is_enabled",
                )
            },
        ),
        (
            "Schedule",
            {
                "fields": (
                    "schedule_type",
                    ("interval_every", "interval_unit"),
                    "cron_expression",
                    ("second", "minute", "hour", "day_of_month", "month_of_year", "day_of_week"),
                    "timezone",
                    "run_at",
                    ("start_at", "end_at"),
                )
            },
        ),
        (
            "Policy",
            {
                "fields": (
                    "overlap",
                    "misfire_grace_seconds",
                    "catch_up",
                    "jitter_seconds",
                    "max_runs",
                    "pause_after_failures",
                )
            },
        ),
    )
    status_fieldsets = (
        (
            "Status",
            {
                "fields": (
                    "state_badge",
                    "last_outcome_text",
                    "pause_text",
                    "next_run",
                    "next_fire_times_preview",
                    "policy",
                    "last_run_at",
                    "finished_at",
                    "dispatch_count",
                    "dispatch_failures",
                    "skipped_count",
                    "last_error",
                    "last_dispatched_task_id",
                )
            },
        ),
        ("Recent runs", {"fields": ("runs_sparkline", "recent_runs_table")}),
    )

    def _editable(self, job: SchedulerJob | None) -> bool:
        """Single-task jobs are edited here; chains and jobs declared in code are shown read-only."""
        return job is None or (job.task_name != CHAIN_ORCHESTRATOR_TASK_NAME and not job.is_declared)

    def has_change_permission(self, request: HttpRequest, obj: SchedulerJob | None = None) -> bool:
        """A read-only job's page is a view: no Save button, and a POST to it is refused (403)."""
        return self._editable(obj) and super().has_change_permission(request, obj)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "GET":
            job = self.get_object(request, unquote(object_id))  # ids are quoted in URLs, as change_view does
            problem = job is not None and trigger_problem(job)
            if job is not None and job.is_declared:
                where = (
                    f"This job is declared in code, in {declaration_text(job)}"
                    if job.declaration is not None
                    else f"This job was declared in code and is {declaration_text(job)}"
                )
                self.message_user(
                    request,
                    f"{where}: change it there, and the next sync (run_taskiq_beat's start, or manage.py"
                    " taskiq_beat sync) applies it. Pause, resume and run now work here.",
                    messages.INFO,
                )
            if problem:
                self.message_user(
                    request,
                    f"The stored schedule of this job cannot be read ({problem}). Choose a schedule and"
                    " save to replace it.",
                    messages.WARNING,
                )
        return super().change_view(request, object_id, form_url, extra_context)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        with _write_lock_first(request):
            return super().changeform_view(request, object_id, form_url, extra_context)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        with _write_lock_first(request):
            return super().delete_view(request, object_id, extra_context)

    def _shown_read_only(self, request: HttpRequest, obj: SchedulerJob | None) -> bool:
        """A chain, or any job to a user who may not change it: every column, nothing to edit."""
        return obj is not None and not self.has_change_permission(request, obj)

    def get_fieldsets(self, request: HttpRequest, obj: SchedulerJob | None = None) -> Any:
        if self._shown_read_only(request, obj):
            return self.fieldsets
        return self.edit_fieldsets if obj is None else self.edit_fieldsets + self.status_fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: SchedulerJob | None = None) -> Any:
        if self._shown_read_only(request, obj):
            return self.readonly_fields
        return (
            () if obj is None else tuple(field for _, options in self.status_fieldsets for field in options["fields"])
        )

    def get_form(
        self, request: HttpRequest, obj: SchedulerJob | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if self._shown_read_only(request, obj):
            return super().get_form(request, obj, change=change, **{**kwargs, "fields": (), "form": ModelForm})
        form = super().get_form(request, obj, change=change, **kwargs)
        app = get_scheduler_app()

        class FormOnThisApp(form):  # type: ignore[misc,valid-type]
            def __init__(self, *args: Any, **form_kwargs: Any) -> None:
                super().__init__(*args, app=app, **form_kwargs)

        return FormOnThisApp

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> SchedulerJob:
        return form.save()  # SchedulerApp has written the row

    def save_model(self, request: HttpRequest, obj: SchedulerJob, form: Any, change: bool) -> None:
        """Nothing to write: the form saved through ``SchedulerApp``."""

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """A job has no related rows to save from the form."""

    # -- columns ---------------------------------------------------------------------------------------

    @admin.display(description="name", ordering="name")
    def display_name(self, job: SchedulerJob) -> str:
        """The name (unnamed: its task and a short id); under it its task, and where a job declared in code is."""
        name = job_label(job)
        under = [job.task_name] if job.name else []
        if job.is_declared:
            under.append(job.get_source_display())
        if not under:
            return name
        return format_html("{}<br><small>{}</small>", name, " · ".join(under))

    @admin.display(description="policy")
    def policy(self, job: SchedulerJob) -> str:
        return _policy_words(job) or "send every slot, however late"

    @admin.display(description="declared in")
    def declared_in(self, job: SchedulerJob) -> str:
        return declaration_text(job) or "–"

    @admin.display(description="schedule")
    def schedule(self, job: SchedulerJob) -> str:
        return describe_schedule(job)

    @admin.display(description="schedule")
    def schedule_and_policy(self, job: SchedulerJob) -> str:
        """The schedule, and under it the policy in words when the job has one."""
        policy = _policy_words(job)
        if not policy:
            return describe_schedule(job)
        return format_html("{}<br><small>{}</small>", describe_schedule(job), policy)

    @admin.display(description="state")
    def state_badge(self, job: SchedulerJob) -> str:
        state = job.state
        return format_html('<strong style="color: {}">{}</strong>', STATE_COLOURS[state], state.label)

    @admin.display(description="next run", ordering=F("next_run_at").asc(nulls_last=True))
    def next_run(self, job: SchedulerJob) -> str:
        if job.next_run_at is None:
            return "–"
        moment = job.next_run_at
        relative = relative_time(moment)
        return format_html(
            "{}<br><small>{}</small>", list_time(moment), relative if moment > timezone.now() else f"due {relative}"
        )

    @admin.display(description="last run")
    def last_run(self, job: SchedulerJob) -> str:
        runs = _recent(job)
        if not runs:
            return "–"
        run = runs[0]
        colour, label = run_colour_and_label(run)
        return format_html('{}<br><small style="color: {}">{}</small>', list_time(run.scheduled_for), colour, label)

    @admin.display(description=f"last {RECENT_RUNS} runs", ordering="dispatch_count")
    def recent_runs_strip(self, job: SchedulerJob) -> str:
        """The latest runs as coloured bars, oldest left (hover: outcome, time, reason); under them, the sends so
        far."""
        cells = format_html_join(
            "",
            '<span title="{} {}{}" style="display:inline-block;width:4px;height:14px;margin-right:1px;background:{}">'
            "</span>",
            (
                (
                    run_colour_and_label(run)[1],
                    local_time(run.scheduled_for),
                    f": {run.reason}" if run.reason else "",
                    run_colour_and_label(run)[0],
                )
                for run in reversed(_recent(job))
            ),
        )
        return format_html(
            '<span style="white-space: nowrap">{}</span><br><small>{} sent</small>', cells, job.dispatch_count
        )

    @admin.display(description="next five fire times")
    def next_fire_times_preview(self, job: SchedulerJob) -> str:
        if not job.is_enabled:  # a paused job fires at no time; a finished one never again
            return "– (finished)" if job.is_finished else "– (paused: no slot until it is resumed)"
        times = next_fire_times(job)
        if not times:
            return "–"
        return format_html_join(mark_safe("<br>"), "{}", ((local_time(moment),) for moment in times))

    @admin.display(description="last outcome")
    def last_outcome_text(self, job: SchedulerJob) -> str:
        """What the worker last reported, and the failures in a row when there are any."""
        if not job.last_outcome:
            return "– (no outcome reported yet)"
        colour = OUTCOME_COLOURS.get(job.last_outcome, UNKNOWN_COLOUR)
        failures = job.consecutive_failures
        in_a_row = f" ({failures} failed run{'s' if failures > 1 else ''} in a row)" if failures else ""
        return format_html('<strong style="color: {}">{}</strong>{}', colour, job.get_last_outcome_display(), in_a_row)

    @admin.display(description="paused")
    def pause_text(self, job: SchedulerJob) -> str:
        if job.paused_at is None:
            return "–"
        note = f": {job.pause_note}" if job.pause_note else ""
        return f"since {local_time(job.paused_at)} ({relative_time(job.paused_at)}){note}"

    @admin.display(description=f"latest {SPARKLINE_RUNS} runs")
    def runs_sparkline(self, job: SchedulerJob) -> str:
        runs = _latest_runs(job)
        return sparkline(runs) if runs else "–"

    @admin.display(description="chain steps")
    def chain_steps(self, job: SchedulerJob) -> str:
        if job.task_name != CHAIN_ORCHESTRATOR_TASK_NAME:
            return "–"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    index,
                    step.get("task_name"),
                    step.get("args"),
                    step.get("kwargs"),
                    step.get("max_attempts") or "default",
                )
                for index, step in enumerate(dicts_in(job.task_kwargs, "steps"))
            ),
        )
        return format_html(
            "<table><tr><th>#</th><th>task</th><th>args</th><th>kwargs</th><th>attempts</th></tr>{}</table>", rows
        )

    @admin.display(description=f"latest {RECENT_RUNS} runs")
    def recent_runs_table(self, job: SchedulerJob) -> str:
        """Each run as it ended: the worker's outcome when it reported one (a failed task shows failed, with
        the worker's error), else the dispatch status; how long the task took."""
        runs = _latest_runs(job)[:RECENT_RUNS]
        if not runs:
            return "No runs yet."
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td style="color: {}">{}</td><td>{}</td><td>{}</td><td>{}</td>'
            "<td>{}</td></tr>",
            (
                (
                    change_url(SchedulerRun, run.pk),
                    local_time(run.scheduled_for),
                    *run_colour_and_label(run),
                    local_time(run.dispatched_at) if run.dispatched_at else "–",
                    lag_text(run),
                    duration_text(run),
                    run.error or run.reason or "",
                )
                for run in runs
            ),
        )
        history = (
            reverse("admin:django_taskiq_beat_schedulerrun_changelist") + "?" + urlencode({"job__id__exact": job.pk})
        )
        return format_html(
            "<table><tr><th>scheduled for</th><th>outcome</th><th>dispatched at</th><th>lag</th><th>duration</th>"
            '<th>error or reason</th></tr>{}</table><p><a href="{}">All runs of this job</a></p>',
            rows,
            history,
        )

    # -- actions: through SchedulerApp --------------------------------------------------------------

    def _apply(self, request: HttpRequest, queryset: QuerySet[SchedulerJob], operation: str, *args: Any) -> int:
        """Apply ``operation`` (with ``args`` after the job id) to each job on its own; returns how many
        it changed and reports, per job, what it could not do."""
        app = get_scheduler_app()
        count, problems = 0, []
        for job_id in queryset.values_list("pk", flat=True):
            try:
                getattr(app, operation)(job_id, *args)
            except JobNotFoundError:
                continue  # deleted meanwhile
            except SchedulerValidationError as exc:
                problems.append(f"{job_id}: {exc.problem}")
                continue
            count += 1
        if problems:
            more = f"; and {len(problems) - _LISTED_PROBLEMS} more" if len(problems) > _LISTED_PROBLEMS else ""
            self.message_user(
                request,
                f"{len(problems)} job{'' if len(problems) == 1 else 's'} could not be changed: "
                + "; ".join(problems[:_LISTED_PROBLEMS])
                + more,
                messages.ERROR,
            )
        return count

    def _report(self, request: HttpRequest, done: str, count: int) -> None:
        self.message_user(request, f"{done} {count} job{'' if count == 1 else 's'}.", messages.SUCCESS)

    @admin.action(description="Pause selected jobs", permissions=["change"])
    def pause_jobs(self, request: HttpRequest, queryset: QuerySet[SchedulerJob]) -> None:
        self._report(request, "Paused", self._apply(request, queryset, "pause"))

    @admin.action(description="Resume selected jobs", permissions=["change"])
    def resume_jobs(self, request: HttpRequest, queryset: QuerySet[SchedulerJob]) -> None:
        self._report(request, "Resumed", self._apply(request, queryset, "resume"))

    @admin.action(description="Run selected jobs now", permissions=["change"])
    def run_jobs_now(self, request: HttpRequest, queryset: QuerySet[SchedulerJob]) -> None:
        self._report(request, "Marked to run now:", self._apply(request, queryset, "run_now"))

    @admin.action(description="Backfill selected jobs…", permissions=["change"])
    def backfill_jobs(self, request: HttpRequest, queryset: QuerySet[SchedulerJob]) -> HttpResponse | None:
        """Ask for a range, then send each past slot in it (``SchedulerApp.backfill``)."""
        default_timezone = get_scheduler_app().config.default_timezone
        assert default_timezone is not None  # SchedulerConfig resolved it (TIME_ZONE when None)
        form = BackfillForm(request.POST if "apply" in request.POST else None, default_timezone=default_timezone)
        if form.is_valid():
            self._report(
                request,
                "Backfilled",
                self._apply(request, queryset, "backfill", form.cleaned_data["start"], form.cleaned_data["end"]),
            )
            return None
        return TemplateResponse(
            request,
            "admin/django_taskiq_beat/backfill.html",
            {
                **self.admin_site.each_context(request),
                "title": "Backfill scheduler jobs",
                "opts": self.model._meta,
                "form": form,
                "jobs": queryset,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, ...]:
        """The jobs with the number of their runs, not every run: a job may have a million.

        A job's runs go with it, so deleting it needs no permission on the (read-only) history.
        """
        jobs = list(objs)
        runs = dict(
            SchedulerRun.objects.filter(job__in=[job.pk for job in jobs])
            .values_list("job")
            .annotate(Count("id"))
            .order_by()
        )
        listed: list[Any] = []  # an object, then the list of what goes with it
        for job in jobs:
            listed.append(
                format_html(
                    '{}: <a href="{}">{}</a>',
                    capfirst(SchedulerJob._meta.verbose_name),
                    change_url(SchedulerJob, job.pk),
                    str(job),
                )
            )
            if runs.get(job.pk):
                listed.append([f"its {runs[job.pk]} scheduler run{'' if runs[job.pk] == 1 else 's'} (run history)"])
        counts = {
            SchedulerJob._meta.verbose_name_plural: len(jobs),
            SchedulerRun._meta.verbose_name_plural: sum(runs.values()),
        }
        return listed, counts, set(), []

    def delete_model(self, request: HttpRequest, obj: SchedulerJob) -> None:
        get_scheduler_app().delete(obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[SchedulerJob]) -> None:
        self._apply(request, queryset, "delete")


@contextmanager
def _write_lock_first(request: HttpRequest) -> Iterator[None]:
    """A POST's transaction, holding SQLite's write lock before the view reads anything.

    Django runs the add, change and delete views in one transaction that reads (the job, the
    form's checks) before it writes. On SQLite a transaction that read before another process
    committed (an engine does at every tick) cannot write at all: "database is locked", at once.
    With the lock taken first, the view waits for the engine's write instead.
    """
    if request.method != "POST":
        yield
        return
    with transaction.atomic():
        begin_write()
        yield


def _policy_words(job: SchedulerJob) -> str:
    """The job's policy in words (empty: the default); a stored value the policy refuses is named, not a 500."""
    try:
        return SchedulePolicy.of(job).describe(job.remaining_runs)
    except SchedulerValidationError as error:
        return f"unreadable policy: {error.field}={error.value!r:.80}"


def _latest_runs(job: SchedulerJob) -> list[SchedulerRun]:
    """The job's latest runs for its page (the sparkline's, the table's first), read once per page."""
    if not hasattr(job, "_latest_runs"):
        job._latest_runs = list(job.runs.order_by("-scheduled_for")[:SPARKLINE_RUNS])  # type: ignore[attr-defined]
    return job._latest_runs  # type: ignore[attr-defined]


def _recent(job: SchedulerJob) -> list[SchedulerRun]:
    return getattr(job, "recent_runs", [])
