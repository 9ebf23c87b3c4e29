"""The run history: read-only, written by the engines and the workers' outcome middleware."""

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from django_taskiq_beat.admin.common import (
    OUTCOME_COLOURS,
    UNKNOWN_COLOUR,
    WrittenByTheSchedulerAdmin,
    change_url,
    duration_text,
    lag_text,
    list_time,
    run_colour_and_label,
    status_colour_and_label,
)
from django_taskiq_beat.describe import dicts_in, job_label
from django_taskiq_beat.models import SHOWN_STATUSES, SchedulerJob, SchedulerRun

_SHORT_ERROR = 60


class ShownStatusFilter(admin.SimpleListFilter):
    """The status as the list says it: a held slot is "waiting", a backfill awaiting its retry "retry pending"."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(status, status) for status in SHOWN_STATUSES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[SchedulerRun]) -> QuerySet[SchedulerRun]:
        """No runs for a status the history never shows (an old bookmark, a typo), as a field's filter lists none."""
        value = self.value()
        if value is None:
            return queryset
        return queryset.shown_as(value) if value in SHOWN_STATUSES else queryset.none()  # type: ignore[attr-defined]


@admin.register(SchedulerRun)
class SchedulerRunAdmin(WrittenByTheSchedulerAdmin):
    # What became of the run is one column (the worker's outcome, else the dispatch status), the lag says when it
    # was sent, the error is cut short: the run's page has the rest (dispatch time, broker task id, the whole
    # error), and the list fits a 1280 px window.
    list_display = ("scheduled_time", "job_link", "ended", "lag", "duration_text", "short_error")
    list_filter = (ShownStatusFilter, "outcome", "job__source", ("scheduled_for", admin.DateFieldListFilter))
    list_select_related = ("job",)
    search_fields = ("id", "job__id", "job__name", "broker_task_id")
    date_hierarchy = "scheduled_for"
    ordering = ("-scheduled_for",)
    readonly_fields = (
        "id",
        "job_link",
        "status_badge",
        "scheduled_for",
        "dispatched_at",
        "finished_at",
        "lag",
        "broker_task_id",
        "outcome_badge",
        "started_at",
        "completed_at",
        "duration_text",
        "error",
        "reason",
        "claimed_by",
        "lease_expires_at",
        "chain_progress",
        "created_at",
        "updated_at",
    )
    fields = readonly_fields

    @admin.display(description="scheduled for", ordering="scheduled_for")
    def scheduled_time(self, run: SchedulerRun) -> str:
        return list_time(run.scheduled_for)  # to the second today: jobs run every few seconds

    @admin.display(description="dispatched at", ordering="dispatched_at")
    def dispatched_time(self, run: SchedulerRun) -> str:
        return list_time(run.dispatched_at)

    @admin.display(description="job", ordering="job__name")
    def job_link(self, run: SchedulerRun) -> str:
        return format_html('<a href="{}">{}</a>', change_url(SchedulerJob, run.job_id), job_label(run.job))

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: SchedulerRun) -> str:
        return format_html('<strong style="color: {}">{}</strong>', *status_colour_and_label(run))

    @admin.display(description="lag")
    def lag(self, run: SchedulerRun) -> str:
        return lag_text(run)

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, run: SchedulerRun) -> str:
        return format_html(
            '<strong style="color: {}">{}</strong>',
            OUTCOME_COLOURS.get(run.outcome, UNKNOWN_COLOUR),
            run.get_outcome_display(),
        )

    @admin.display(description="duration")
    def duration_text(self, run: SchedulerRun) -> str:
        return duration_text(run)

    @admin.display(description="outcome", ordering="outcome")
    def ended(self, run: SchedulerRun) -> str:
        return format_html('<strong style="color: {}">{}</strong>', *run_colour_and_label(run))

    @admin.display(description="error or reason")
    def short_error(self, run: SchedulerRun) -> str:
        text = run.error or run.reason or ""
        if len(text) <= _SHORT_ERROR:
            return text
        return format_html('<span title="{}">{}…</span>', text[:2000], text[:_SHORT_ERROR])

    @admin.display(description="chain progress")
    def chain_progress(self, run: SchedulerRun) -> str:
        progress = run.progress
        if not isinstance(progress, dict) or not progress:
            return "–"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (index, step.get("task_name"), step.get("status"), step.get("attempts"), step.get("error") or "")
                for index, step in enumerate(dicts_in(progress, "steps"))
            ),
        )
        outcome = progress.get("error") or progress.get("result") or ""
        return format_html(
            "<p>{} (chain attempt {})</p><table><tr><th>#</th><th>task</th><th>status</th><th>attempts</th>"
            "<th>error</th></tr>{}</table><p>{}</p>",
            progress.get("status"),
            progress.get("chain_attempt"),
            rows,
            outcome,
        )
