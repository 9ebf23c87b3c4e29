"""Admin screens: jobs with their state and recent runs, and the run history.

Every change goes through ``SchedulerApp`` (pause, resume, run now, delete), never
through raw row edits, so the rules of the API and the engine's wake-ups apply.
Everything shown is escaped (``format_html``).
"""

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet
from django.db.models import Count, F, Prefetch, QuerySet
from django.db.models.functions import Now
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from django_taskiq_beat.app import get_scheduler_app
from django_taskiq_beat.chains import CHAIN_ORCHESTRATOR_TASK_NAME
from django_taskiq_beat.exceptions import JobNotFoundError, SchedulerValidationError
from django_taskiq_beat.forms import BackfillForm, SchedulerJobForm
from django_taskiq_beat.health import live_engines
from django_taskiq_beat.policies import SchedulePolicy
from django_taskiq_beat.models import (
    EngineState,
    JobState,
    RunOutcome,
    RunStatus,
    SchedulerEngine,
    SchedulerJob,
    SchedulerRun,
)
from django_taskiq_beat.describe import (
    declaration_text,
    describe_schedule,
    dicts_in,
    local_time,
    next_fire_times,
    relative_time,
    trigger_problem,
)

RECENT_RUNS = 20
_LISTED_PROBLEMS = 10
_UNKNOWN_COLOUR = "#9e9e9e"  # a status or outcome written by a newer version or behind the app's back
_RUN_COLOURS = {
    RunStatus.DISPATCHED: "#2e7d32", RunStatus.FAILED: "#c62828", RunStatus.PENDING: "#9e9e9e",
    RunStatus.SKIPPED: "#f9a825",
}
_WAITING_COLOUR = "#78909c"  # a pending run held for the previous one (overlap="buffer_one")
_OUTCOME_COLOURS = {
    RunOutcome.UNKNOWN: "#9e9e9e", RunOutcome.RUNNING: "#1565c0", RunOutcome.RETRYING: "#ef6c00",
    RunOutcome.SUCCEEDED: "#2e7d32", RunOutcome.FAILED: "#c62828",
}
_STATE_COLOURS = {
    JobState.ACTIVE: "#2e7d32", JobState.FAILING: "#c62828", JobState.PAUSED: "#ef6c00", JobState.FINISHED: "#616161",
}


def _change_url(model: type[Any], pk: str) -> str:
    """The admin page of a row, its id quoted as the admin quotes ids ('/', '_', '%' ...)."""
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[quote(pk)])


# -- filters ------------------------------------------------------------------------------------------

class SafeChangeList(ChangeList):
    """Refuses a query string the database cannot take the way Django refuses an unknown
    filter (a redirect to ``?e=1``), never with a 500: a NUL byte (PostgreSQL refuses it)
    or a date filter with no end (``?scheduled_for__year=9999``)."""

    def get_filters(self, request: HttpRequest) -> Any:
        if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
            raise IncorrectLookupParameters("The query string holds a NUL character.")
        try:
            return super().get_filters(request)
        except (ValueError, OverflowError) as exc:
            raise IncorrectLookupParameters(exc) from exc

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        """Also refuse a filter value the backend cannot convert, such as a date before year 1 in UTC."""
        queryset = super().get_queryset(request, exclude_parameters)
        try:
            queryset.query.sql_with_params()  # the values are adapted for the database here
        except EmptyResultSet:
            pass  # a filter no row can match: an empty page, not an error
        except (ValueError, OverflowError) as exc:
            raise IncorrectLookupParameters(exc) from exc
        return queryset


class SafeListAdmin(admin.ModelAdmin):
    """A model admin whose list refuses query strings the database cannot take (``SafeChangeList``)."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return SafeChangeList


class WrittenByTheSchedulerAdmin(SafeListAdmin):
    """Rows the scheduler writes itself (runs, engines): to read, never to add, change or delete by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # run history goes by retention or purge_runs; engines prune their own old rows


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


# -- jobs ---------------------------------------------------------------------------------------------

@admin.register(SchedulerJob)
class SchedulerJobAdmin(SafeListAdmin):
    list_display = (
        "display_name", "task_name", "schedule_and_policy", "state_badge", "next_run", "last_run", "recent_runs_strip",
        "dispatch_count",
    )
    list_filter = (StateFilter, KindFilter, "source", "strategy", "task_name")
    search_fields = ("id", "name", "task_name")
    ordering = (F("next_run_at").asc(nulls_last=True), "id")
    sortable_by = ("task_name", "next_run", "dispatch_count")
    list_per_page = 50
    actions = ("pause_jobs", "resume_jobs", "run_jobs_now", "backfill_jobs")
    readonly_fields = (
        "id", "name", "description", "task_name", "schedule", "state_badge", "next_run", "next_fire_times_preview",
        "is_enabled", "source", "declared_in", "policy", "skipped_count", "task_args", "task_kwargs", "task_labels",
        "metadata_payload",
        "chain_steps", "last_run_at", "last_error",
        "last_dispatched_task_id", "dispatch_count", "dispatch_failures", "finished_at", "created_at", "updated_at",
        "recent_runs_table",
    )
    fieldsets = (
        (None, {"fields": ("id", "name", "description", "task_name", "schedule", "state_badge", "is_enabled",
                           "source", "declared_in")}),
        ("Timing", {"fields": ("next_run", "next_fire_times_preview", "policy", "last_run_at", "finished_at")}),
        ("What is sent", {"fields": ("task_args", "task_kwargs", "task_labels", "chain_steps", "metadata_payload")}),
        ("Dispatch", {"fields": ("dispatch_count", "dispatch_failures", "skipped_count", "last_error",
                                 "last_dispatched_task_id", "created_at", "updated_at")}),
        ("Recent runs", {"fields": ("recent_runs_table",)}),
    )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if request.method == "GET":
            config = get_scheduler_app().config
            dead_after = timedelta(seconds=config.engine_dead_after_seconds)
            if not live_engines(dead_after):
                self.message_user(
                    request, f"No scheduler engine is alive (none has sent a heartbeat in the last"
                    f" {dead_after.total_seconds():g} s): nothing is being sent. Start manage.py run_taskiq_beat.",
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
        (None, {"fields": (
            "name", "description", "job_id", "task", "task_name", "args", "kwargs", "labels", "is_enabled",
        )}),
        ("Schedule", {"fields": (
            "schedule_type", ("interval_every", "interval_unit"), "cron_expression",
            ("second", "minute", "hour", "day_of_month", "month_of_year", "day_of_week"), "timezone", "run_at",
            ("start_at", "end_at"),
        )}),
        ("Policy", {"fields": (
            "overlap", "misfire_grace_seconds", "catch_up", "jitter_seconds", "max_runs", "pause_after_failures",
        )}),
    )
    status_fieldsets = (
        ("Status", {"fields": ("state_badge", "next_run", "next_fire_times_preview", "policy", "last_run_at",
                               "finished_at", "dispatch_count", "dispatch_failures", "skipped_count", "last_error",
                               "last_dispatched_task_id")}),
        ("Recent runs", {"fields": ("recent_runs_table",)}),
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
                where = (f"This job is declared in code, in {declaration_text(job)}" if job.declaration is not None
                         else f"This job was declared in code and is {declaration_text(job)}")
                self.message_user(
                    request, f"{where}: change it there, and the next sync (run_taskiq_beat's start, or manage.py"
                    " taskiq_beat sync) applies it. Pause, resume and run now work here.", messages.INFO,
                )
            if problem:
                self.message_user(
                    request, f"The stored schedule of this job cannot be read ({problem}). Choose a schedule and"
                    " save to replace it.", messages.WARNING,
                )
        return super().change_view(request, object_id, form_url, extra_context)

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
        return () if obj is None else tuple(
            field for _, options in self.status_fieldsets for field in options["fields"]
        )

    def get_form(self, request: HttpRequest, obj: SchedulerJob | None = None, change: bool = False,
                 **kwargs: Any) -> Any:
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
        """The name; a job declared in code says where, under it (no column of its own: the list stays narrow)."""
        name = job.name or job.id
        if not job.is_declared:
            return name
        return format_html("{}<br><small>{}</small>", name, job.get_source_display())

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
        return format_html('<strong style="color: {}">{}</strong>', _STATE_COLOURS[state], state.label)

    @admin.display(description="next run", ordering=F("next_run_at").asc(nulls_last=True))
    def next_run(self, job: SchedulerJob) -> str:
        if job.next_run_at is None:
            return "–"
        moment = job.next_run_at
        relative = relative_time(moment)
        return format_html("{}<br><small>{}</small>", local_time(moment), relative if moment > timezone.now()
                           else f"due {relative}")

    @admin.display(description="last run")
    def last_run(self, job: SchedulerJob) -> str:
        runs = _recent(job)
        if not runs:
            return "–"
        run = runs[0]
        colour, label = _run_colour_and_label(run)
        return format_html('{}<br><small style="color: {}">{}</small>', local_time(run.scheduled_for), colour, label)

    @admin.display(description=f"last {RECENT_RUNS} runs")
    def recent_runs_strip(self, job: SchedulerJob) -> str:
        cells = format_html_join(
            "", '<span title="{} {}{}" style="display:inline-block;width:6px;height:14px;margin-right:1px;background:{}">'
                '</span>',
            ((_run_colour_and_label(run)[1], local_time(run.scheduled_for), f": {run.reason}" if run.reason else "",
              _run_colour_and_label(run)[0])
             for run in reversed(_recent(job))),
        )
        return format_html('<span style="white-space: nowrap">{}</span>', cells)

    @admin.display(description="next five fire times")
    def next_fire_times_preview(self, job: SchedulerJob) -> str:
        times = next_fire_times(job)
        if not times:
            return "–"
        return format_html_join(mark_safe("<br>"), "{}", ((local_time(moment),) for moment in times))

    @admin.display(description="chain steps")
    def chain_steps(self, job: SchedulerJob) -> str:
        if job.task_name != CHAIN_ORCHESTRATOR_TASK_NAME:
            return "–"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((index, step.get("task_name"), step.get("args"), step.get("kwargs"), step.get("max_attempts") or "default")
             for index, step in enumerate(dicts_in(job.task_kwargs, "steps"))),
        )
        return format_html(
            "<table><tr><th>#</th><th>task</th><th>args</th><th>kwargs</th><th>attempts</th></tr>{}</table>", rows
        )

    @admin.display(description=f"latest {RECENT_RUNS} runs")
    def recent_runs_table(self, job: SchedulerJob) -> str:
        runs = list(job.runs.order_by("-scheduled_for")[:RECENT_RUNS])
        if not runs:
            return "No runs yet."
        rows = format_html_join(
            "", '<tr><td><a href="{}">{}</a></td><td style="color: {}">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            ((_change_url(SchedulerRun, run.pk), local_time(run.scheduled_for), *_status_colour_and_label(run),
              local_time(run.dispatched_at) if run.dispatched_at else "–", _lag_text(run), run.error or run.reason or "")
             for run in runs),
        )
        history = reverse("admin:django_taskiq_beat_schedulerrun_changelist") + "?" + urlencode({"job__id__exact": job.pk})
        return format_html(
            "<table><tr><th>scheduled for</th><th>status</th><th>dispatched at</th><th>lag</th><th>error or reason</th></tr>"
            '{}</table><p><a href="{}">All runs of this job</a></p>', rows, history,
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
                request, f"{len(problems)} job{'' if len(problems) == 1 else 's'} could not be changed: "
                + "; ".join(problems[:_LISTED_PROBLEMS]) + more, messages.ERROR,
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
        form = BackfillForm(request.POST if "apply" in request.POST else None, default_timezone=default_timezone)
        if form.is_valid():
            self._report(request, "Backfilled", self._apply(
                request, queryset, "backfill", form.cleaned_data["start"], form.cleaned_data["end"]
            ))
            return None
        return TemplateResponse(request, "admin/django_taskiq_beat/backfill.html", {
            **self.admin_site.each_context(request), "title": "Backfill scheduler jobs", "opts": self.model._meta,
            "form": form, "jobs": queryset, "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        })

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, ...]:
        """The jobs with the number of their runs, not every run: a job may have a million.

        A job's runs go with it, so deleting it needs no permission on the (read-only) history.
        """
        jobs = list(objs)
        runs = dict(
            SchedulerRun.objects.filter(job__in=[job.pk for job in jobs]).values_list("job").annotate(Count("id"))
            .order_by()
        )
        listed = []
        for job in jobs:
            listed.append(format_html(
                '{}: <a href="{}">{}</a>', capfirst(SchedulerJob._meta.verbose_name), _change_url(SchedulerJob, job.pk),
                str(job),
            ))
            if runs.get(job.pk):
                listed.append([f"its {runs[job.pk]} scheduler run{'' if runs[job.pk] == 1 else 's'} (run history)"])
        counts = {SchedulerJob._meta.verbose_name_plural: len(jobs), SchedulerRun._meta.verbose_name_plural: sum(runs.values())}
        return listed, counts, set(), []

    def delete_model(self, request: HttpRequest, obj: SchedulerJob) -> None:
        get_scheduler_app().delete(obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[SchedulerJob]) -> None:
        self._apply(request, queryset, "delete")


def _run_colour_and_label(run: SchedulerRun) -> tuple[str, str]:
    """The worker's outcome when it reported one, else the dispatch status."""
    if run.status == RunStatus.DISPATCHED and run.outcome:
        return _OUTCOME_COLOURS.get(run.outcome, _UNKNOWN_COLOUR), run.get_outcome_display()
    return _status_colour_and_label(run)


def _status_colour_and_label(run: SchedulerRun) -> tuple[str, str]:
    """The dispatch status; ``waiting`` for a pending run held until the previous one finishes."""
    if run.is_held:
        return _WAITING_COLOUR, "waiting"
    return _RUN_COLOURS.get(run.status, _UNKNOWN_COLOUR), run.get_status_display()


def _policy_words(job: SchedulerJob) -> str:
    """The job's policy in words (empty: the default); a stored value the policy refuses is named, not a 500."""
    try:
        return SchedulePolicy.of(job).describe(job.remaining_runs)
    except SchedulerValidationError as error:
        return f"unreadable policy: {error.field}={error.value!r:.80}"


def _recent(job: SchedulerJob) -> list[SchedulerRun]:
    return getattr(job, "recent_runs", [])


def _lag_text(run: SchedulerRun) -> str:
    if run.dispatched_at is None:
        return "–"
    return f"{(run.dispatched_at - run.scheduled_for).total_seconds() * 1000:.0f} ms"


# -- runs ---------------------------------------------------------------------------------------------

@admin.register(SchedulerRun)
class SchedulerRunAdmin(WrittenByTheSchedulerAdmin):
    list_display = (
        "scheduled_time", "job_link", "status_badge", "outcome_badge", "dispatched_time", "lag", "duration_text",
        "broker_task_id", "short_error",
    )
    list_filter = ("status", "outcome", ("scheduled_for", admin.DateFieldListFilter))
    list_select_related = ("job",)
    search_fields = ("id", "job__id", "job__name", "broker_task_id")
    date_hierarchy = "scheduled_for"
    ordering = ("-scheduled_for",)
    readonly_fields = (
        "id", "job_link", "status_badge", "scheduled_for", "dispatched_at", "finished_at", "lag", "broker_task_id",
        "outcome_badge", "started_at", "completed_at", "duration_text", "error", "reason", "claimed_by",
        "lease_expires_at",
        "chain_progress", "created_at", "updated_at",
    )
    fields = readonly_fields

    @admin.display(description="scheduled for", ordering="scheduled_for")
    def scheduled_time(self, run: SchedulerRun) -> str:
        return local_time(run.scheduled_for)  # to the second: jobs run every few seconds

    @admin.display(description="dispatched at", ordering="dispatched_at")
    def dispatched_time(self, run: SchedulerRun) -> str:
        return local_time(run.dispatched_at) if run.dispatched_at else "–"

    @admin.display(description="job", ordering="job__name")
    def job_link(self, run: SchedulerRun) -> str:
        return format_html('<a href="{}">{}</a>', _change_url(SchedulerJob, run.job_id), run.job.name or run.job_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: SchedulerRun) -> str:
        return format_html('<strong style="color: {}">{}</strong>', *_status_colour_and_label(run))

    @admin.display(description="lag")
    def lag(self, run: SchedulerRun) -> str:
        return _lag_text(run)

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, run: SchedulerRun) -> str:
        return format_html('<strong style="color: {}">{}</strong>', _OUTCOME_COLOURS.get(run.outcome, _UNKNOWN_COLOUR),
                           run.get_outcome_display())

    @admin.display(description="duration")
    def duration_text(self, run: SchedulerRun) -> str:
        duration = run.duration
        if duration is not None:
            return f"{duration.total_seconds() * 1000:.0f} ms"
        if run.started_at is None or run.outcome != RunOutcome.RUNNING:
            return "–"
        if timezone.now() - run.started_at > timedelta(seconds=get_scheduler_app().config.stale_run_seconds):
            return format_html('<strong style="color: #c62828">stale</strong>: running since {}', local_time(run.started_at))
        return f"running since {local_time(run.started_at)}"

    @admin.display(description="error or reason")
    def short_error(self, run: SchedulerRun) -> str:
        return (run.error or run.reason or "")[:120]

    @admin.display(description="chain progress")
    def chain_progress(self, run: SchedulerRun) -> str:
        progress = run.progress
        if not isinstance(progress, dict) or not progress:
            return "–"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((index, step.get("task_name"), step.get("status"), step.get("attempts"), step.get("error") or "")
             for index, step in enumerate(dicts_in(progress, "steps"))),
        )
        outcome = progress.get("error") or progress.get("result") or ""
        return format_html(
            "<p>{} (chain attempt {})</p><table><tr><th>#</th><th>task</th><th>status</th><th>attempts</th>"
            "<th>error</th></tr>{}</table><p>{}</p>",
            progress.get("status"), progress.get("chain_attempt"), rows, outcome,
        )


# -- engines ------------------------------------------------------------------------------------------

_ENGINE_COLOURS = {EngineState.ALIVE: "#2e7d32", EngineState.DEAD: "#c62828", EngineState.STOPPED: "#616161"}


def _dead_after() -> timedelta:
    return timedelta(seconds=get_scheduler_app().config.engine_dead_after_seconds)


class EngineStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(EngineState.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[SchedulerEngine]) -> QuerySet[SchedulerEngine]:
        match self.value():
            case EngineState.ALIVE:
                return queryset.alive(Now(), _dead_after())  # type: ignore[attr-defined]
            case EngineState.STOPPED:
                return queryset.filter(stopped_at__isnull=False)
            case EngineState.DEAD:
                return queryset.dead(Now(), _dead_after())  # type: ignore[attr-defined]
        return queryset


@admin.register(SchedulerEngine)
class SchedulerEngineAdmin(WrittenByTheSchedulerAdmin):
    """The engines as their heartbeats tell: read-only, written by the engines themselves."""

    list_display = ("id", "state_badge", "process", "version", "heartbeat", "started", "stopped", "counters")
    list_filter = (EngineStateFilter, "hostname")
    search_fields = ("id", "hostname")
    ordering = ("-heartbeat_at",)
    readonly_fields = (
        "id", "state_badge", "hostname", "pid", "version", "heartbeat", "started", "stopped", "dispatched_count",
        "failed_dispatch_count", "recovered_run_count", "claim_conflict_count",
    )
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[SchedulerEngine]:
        return super().get_queryset(request).on_database_clock()  # type: ignore[attr-defined]

    @admin.display(description="state")
    def state_badge(self, engine: SchedulerEngine) -> str:
        state = engine.state(_dead_after())
        return format_html('<strong style="color: {}">{}</strong>', _ENGINE_COLOURS[state], state.label)

    @admin.display(description="host:pid", ordering="hostname")
    def process(self, engine: SchedulerEngine) -> str:
        return f"{engine.hostname}:{engine.pid}"

    @admin.display(description="counts")
    def counters(self, engine: SchedulerEngine) -> str:
        return format_html(
            "{} sent<br><small>{} failed · {} recovered · {} conflicts</small>", engine.dispatched_count,
            engine.failed_dispatch_count, engine.recovered_run_count, engine.claim_conflict_count,
        )

    @admin.display(description="started", ordering="started_at")
    def started(self, engine: SchedulerEngine) -> str:
        return local_time(engine.started_at)

    @admin.display(description="stopped", ordering="stopped_at")
    def stopped(self, engine: SchedulerEngine) -> str:
        return local_time(engine.stopped_at) if engine.stopped_at else "–"

    @admin.display(description="last heartbeat", ordering="heartbeat_at")
    def heartbeat(self, engine: SchedulerEngine) -> str:
        return format_html("{}<br><small>{}</small>", local_time(engine.heartbeat_at), relative_time(engine.heartbeat_at))
