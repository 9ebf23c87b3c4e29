"""What the admin's screens share: colours, links, lists that refuse bad query strings, run labels."""

import math
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from django_taskiq_beat.app import get_scheduler_app
from django_taskiq_beat.describe import local_time, short_time
from django_taskiq_beat.models import JobState, RunOutcome, RunStatus, SchedulerRun

UNKNOWN_COLOUR = "#9e9e9e"  # a status or outcome written by a newer version or behind the app's back
RUN_COLOURS: dict[str, str] = {
    RunStatus.DISPATCHED: "#2e7d32",
    RunStatus.FAILED: "#c62828",
    RunStatus.PENDING: "#9e9e9e",
    RunStatus.SKIPPED: "#f9a825",
}
WAITING_COLOUR = "#78909c"  # a pending run held for the previous one (overlap="buffer_one")
OUTCOME_COLOURS: dict[str, str] = {
    RunOutcome.UNKNOWN: "#9e9e9e",
    RunOutcome.RUNNING: "#1565c0",
    RunOutcome.RETRYING: "#ef6c00",
    RunOutcome.SUCCEEDED: "#2e7d32",
    RunOutcome.FAILED: "#c62828",
}
STATE_COLOURS = {
    JobState.ACTIVE: "#2e7d32",
    JobState.FAILING: "#c62828",
    JobState.PAUSED: "#ef6c00",
    JobState.FINISHED: "#616161",
}


def change_url(model: type[Any], pk: str) -> str:
    """The admin page of a row, its id quoted as the admin quotes ids ('/', '_', '%' ...)."""
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[quote(pk)])


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


def run_colour_and_label(run: SchedulerRun) -> tuple[str, str]:
    """The worker's outcome when it reported one, else the dispatch status."""
    if run.status == RunStatus.DISPATCHED and run.outcome:
        return OUTCOME_COLOURS.get(run.outcome, UNKNOWN_COLOUR), run.get_outcome_display()
    return status_colour_and_label(run)


def status_colour_and_label(run: SchedulerRun) -> tuple[str, str]:
    """The dispatch status (``SchedulerRun.shown_status``); a held run in grey, one that awaits a retry as failed."""
    if run.is_held:
        return WAITING_COLOUR, run.shown_status
    status = RunStatus.FAILED if run.awaits_retry else run.status
    return RUN_COLOURS.get(status, UNKNOWN_COLOUR), run.shown_status


def lag_text(run: SchedulerRun) -> str:
    if run.dispatched_at is None:
        return "–"
    return f"{(run.dispatched_at - run.scheduled_for).total_seconds() * 1000:.0f} ms"


def list_time(moment: datetime | None) -> str:
    """A time in a list: short (``short_time``), the full time with its zone on hover; ``–`` for none."""
    if moment is None:
        return "–"
    return format_html('<span title="{}">{}</span>', local_time(moment), short_time(moment))


def duration_text(run: SchedulerRun) -> str:
    """How long the worker took; while it runs, since when (``stale`` past ``STALE_RUN_SECONDS``)."""
    duration = run.duration
    if duration is not None:
        return f"{duration.total_seconds() * 1000:.0f} ms"
    if run.started_at is None or run.outcome != RunOutcome.RUNNING:
        return "–"
    if timezone.now() - run.started_at > timedelta(seconds=get_scheduler_app().config.stale_run_seconds):
        return format_html(
            '<strong style="color: #c62828">stale</strong>: running since {}', local_time(run.started_at)
        )
    return f"running since {local_time(run.started_at)}"


_SPARK_LOW, _SPARK_HIGH = math.log10(0.001), math.log10(60)


def sparkline(runs: list[SchedulerRun]) -> str:
    """The runs, oldest left, as bars: the height is the lag from slot to send (log scale, 1 ms to
    60 s), the colour what became of the run; hover for both. An unsent run is a short bar."""
    bars = []
    for index, run in enumerate(reversed(runs)):
        colour, label = run_colour_and_label(run)
        if run.dispatched_at is None:
            height, lag = 3.0, "not sent"
        else:
            seconds = max((run.dispatched_at - run.scheduled_for).total_seconds(), 0.001)
            height = 3 + (min(math.log10(seconds), _SPARK_HIGH) - _SPARK_LOW) / (_SPARK_HIGH - _SPARK_LOW) * 21
            lag = f"lag {lag_text(run)}"
        bars.append(
            format_html(
                '<rect x="{}" y="{}" width="4" height="{}" fill="{}" data-outcome="{}">'
                "<title>{}: {}, {}</title></rect>",
                index * 5,
                f"{24 - height:.1f}",
                f"{height:.1f}",
                colour,
                label,
                local_time(run.scheduled_for),
                label,
                lag,
            )
        )
    return format_html(
        '<svg class="tb-sparkline" width="{}" height="24" viewBox="0 0 {} 24" role="img"'
        ' aria-label="lag and outcome of the latest runs">{}</svg>',
        len(bars) * 5,
        len(bars) * 5,
        mark_safe("".join(bars)),
    )


def dead_after() -> timedelta:
    return timedelta(seconds=get_scheduler_app().config.engine_dead_after_seconds)
