"""The dashboard: the whole scheduler at a glance, for anyone who may view its jobs.

Engines, jobs by state, what is due and overdue, the last day's sends by hour (by outcome, and
their lag), the next hour's slots and the jobs failing most. The numbers come from
``overview``; the charts are SVG drawn here, on the server: no script, no CDN, nothing to
vendor, and each mark carries its numbers (``data-*``) and a tooltip (``<title>``).
"""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from django_taskiq_beat import overview
from django_taskiq_beat.admin.common import OUTCOME_COLOURS, RUN_COLOURS, STATE_COLOURS, change_url, dead_after
from django_taskiq_beat.describe import local_time, relative_time
from django_taskiq_beat.models import EngineState, JobState, RunOutcome, RunStatus, SchedulerDashboard, SchedulerJob

WIDTH = 960  # every chart's width in SVG units; it scales down with the page
CATEGORY_COLOURS = {
    overview.SUCCEEDED: OUTCOME_COLOURS[RunOutcome.SUCCEEDED],
    overview.FAILED: OUTCOME_COLOURS[RunOutcome.FAILED],
    overview.SKIPPED: RUN_COLOURS[RunStatus.SKIPPED],
    overview.NOT_REPORTED: OUTCOME_COLOURS[RunOutcome.UNKNOWN],
}


@dataclass(frozen=True)
class Mark:
    """One shape of a chart: where it is, its colour, its tooltip and its numbers."""

    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str
    data: dict[str, str]  # text already: the template must not localise it ("0,25" in German)


def _hour_label(start: datetime) -> str:
    return timezone.localtime(start).strftime("%H:%M")


def sends_chart(hours: list[overview.Hour], height: int = 180, left: int = 40) -> dict[str, Any]:
    """Stacked bars, one per hour: the runs by what became of them."""
    peak = max((hour.total for hour in hours), default=0) or 1
    slot = (WIDTH - left) / len(hours)
    bars = []
    for index, hour in enumerate(hours):
        top: float = height
        for category in overview.CATEGORIES:
            count = hour.outcomes[category]
            if not count:
                continue
            size = count / peak * (height - 10)
            top -= size
            bars.append(
                Mark(
                    left + index * slot + 1,
                    top,
                    slot - 2,
                    size,
                    CATEGORY_COLOURS[category],
                    f"{_hour_label(hour.start)}: {count} {category}",
                    {"hour": _hour_label(hour.start), "category": category, "count": str(count)},
                )
            )
    return {
        "height": height + 20,
        "left": left,
        "bars": bars,
        "peak": peak,
        "labels": _hour_axis(hours, left, slot),
        "legend": list(CATEGORY_COLOURS.items()),
        "plot_height": height,
    }


def _hour_axis(hours: list[overview.Hour], left: int, slot: float) -> list[tuple[float, str]]:
    """Every third hour's label, centred under its bar."""
    return [
        (left + index * slot + slot / 2, _hour_label(hour.start)) for index, hour in enumerate(hours) if index % 3 == 0
    ]


_LAG_LOW, _LAG_HIGH = overview.LAG_BOUNDS[0], overview.LAG_BOUNDS[-1]


def _lag_y(seconds: float, top: float, height: float) -> float:
    """Log scale from the first to the last histogram bound; past it, on the top line."""
    if math.isinf(seconds):
        return top
    span = math.log10(_LAG_HIGH) - math.log10(_LAG_LOW)
    return top + (math.log10(_LAG_HIGH) - math.log10(max(seconds, _LAG_LOW))) / span * height


def _lag_words(seconds: float) -> str:
    if math.isinf(seconds):
        return f"over {_LAG_HIGH:g} s"
    return f"under {seconds * 1000:g} ms" if seconds < 1 else f"under {seconds:g} s"


def lag_chart(hours: list[overview.Hour], height: int = 150, left: int = 60, top: int = 10) -> dict[str, Any]:
    """Two lines over the hours, p50 and p95 of the lag from slot to send, on a log scale."""
    slot = (WIDTH - left) / len(hours)
    lines = []
    for name, colour in (("p50", "#1565c0"), ("p95", "#ef6c00")):
        points = []
        for index, hour in enumerate(hours):
            value = getattr(hour, f"lag_{name}")
            if value is None:
                continue
            points.append(
                Mark(
                    left + index * slot + slot / 2,
                    _lag_y(value, top, height),
                    0,
                    0,
                    colour,
                    f"{_hour_label(hour.start)}: {name} {_lag_words(value)}",
                    {
                        "hour": _hour_label(hour.start),
                        "percentile": name,
                        "seconds": "inf" if math.isinf(value) else f"{value:g}",
                    },
                )
            )
        lines.append(
            {
                "name": name,
                "colour": colour,
                "points": points,
                "path": " ".join(f"{point.x:.1f},{point.y:.1f}" for point in points),
            }
        )
    ticks = [
        (_lag_y(bound, top, height), _lag_words(bound).removeprefix("under ")) for bound in (0.01, 0.1, 1.0, 10.0, 60.0)
    ]
    return {
        "height": height + top + 20,
        "left": left,
        "lines": lines,
        "ticks": ticks,
        "labels": _hour_axis(hours, left, slot),
        "bottom": top + height,
    }


def timeline_chart(
    firing: list[overview.Firing], now: datetime, window: timedelta, left: int = 260, row: int = 20
) -> dict[str, Any]:
    """One row per job, a tick at each of its slots in the window."""
    width = WIDTH - left
    rows = []
    for index, fire in enumerate(firing):
        ticks = [
            Mark(
                left + max(moment - now, timedelta(0)) / window * width - 1,
                index * row + 4,
                3,
                row - 8,
                "#c62828" if moment <= now else "#1565c0",  # an overdue slot: red, at "now"
                f"{fire.job.name or fire.job.task_name}: {local_time(moment)} ({relative_time(moment, now)})",
                {"job": fire.job.pk, "at": moment.isoformat()},
            )
            for moment in fire.times
        ]
        rows.append(
            {
                "y": index * row,
                "label_y": index * row + row * 0.7,
                "job": fire.job,
                "url": change_url(SchedulerJob, fire.job.pk),
                "ticks": ticks,
            }
        )
    minutes = int(window.total_seconds() // 60)
    axis = [(left + step / minutes * width, f"+{step} min") for step in range(0, minutes + 1, max(minutes // 6, 1))]
    return {
        "height": len(firing) * row + 24,
        "left": left,
        "rows": rows,
        "axis": axis,
        "axis_y": len(firing) * row + 16,
    }


@admin.register(SchedulerDashboard)
class SchedulerDashboardAdmin(admin.ModelAdmin):
    """A page, not a list: it may be viewed by whoever may view the jobs, and changes nothing."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("django_taskiq_beat.view_schedulerjob") or request.user.has_perm(
            "django_taskiq_beat.change_schedulerjob"
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        window = timedelta(hours=1)
        seen = overview.snapshot(now)
        hours = overview.last_hours(now)
        firing_count, firing = overview.coming(now, window)
        failing = overview.failing_most(now)
        silent_for = dead_after()
        engines = [(engine, engine.state(silent_for)) for engine in seen.engines]
        states = {state: sum(1 for _, seen_state in engines if seen_state == state) for state in EngineState}
        return TemplateResponse(
            request,
            "admin/django_taskiq_beat/dashboard.html",
            {
                **self.admin_site.each_context(request),
                "title": "Scheduler dashboard",
                "opts": self.model._meta,
                "now": now,
                "snapshot": seen,
                "engine_states": states,
                "engines": engines[:10],
                "job_states": [
                    (JobState(state), count, STATE_COLOURS[JobState(state)])
                    for state, count in seen.jobs_by_state.items()
                ],
                "overdue_url": change_url(SchedulerJob, seen.overdue.oldest_job_id)
                if seen.overdue.oldest_job_id
                else None,
                "sends": sends_chart(hours),
                "lag": lag_chart(hours),
                "sent_last_day": sum(hour.total for hour in hours),
                "firing_count": firing_count,
                "timeline": timeline_chart(firing, now, window),
                "failing": [
                    (entry, change_url(SchedulerJob, entry.job.pk), entry.failed / max(failing[0].failed, 1) * 100)
                    for entry in failing
                ],
            },
        )
