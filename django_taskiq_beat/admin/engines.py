"""The engines screen: every ``run_taskiq_beat`` process as its heartbeats tell, read-only."""

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from django_taskiq_beat.admin.common import WrittenByTheSchedulerAdmin, dead_after, list_time
from django_taskiq_beat.describe import relative_time
from django_taskiq_beat.models import DatabaseNow, EngineState, SchedulerEngine

_ENGINE_COLOURS = {EngineState.ALIVE: "#2e7d32", EngineState.DEAD: "#c62828", EngineState.STOPPED: "#616161"}


class EngineStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(EngineState.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[SchedulerEngine]) -> QuerySet[SchedulerEngine]:
        match self.value():
            case EngineState.ALIVE:
                return queryset.alive(DatabaseNow(), dead_after())  # type: ignore[attr-defined]
            case EngineState.STOPPED:
                return queryset.filter(stopped_at__isnull=False)
            case EngineState.DEAD:
                return queryset.dead(DatabaseNow(), dead_after())  # type: ignore[attr-defined]
        return queryset


@admin.register(SchedulerEngine)
class SchedulerEngineAdmin(WrittenByTheSchedulerAdmin):
    """The engines as their heartbeats tell: read-only, written by the engines themselves."""

    list_display = ("id", "state_badge", "process", "version", "heartbeat", "started", "stopped", "counters")
    list_filter = (EngineStateFilter, "hostname")
    search_fields = ("id", "hostname")
    ordering = ("-heartbeat_at",)
    readonly_fields = (
        "id",
        "state_badge",
        "hostname",
        "pid",
        "version",
        "heartbeat",
        "started",
        "stopped",
        "dispatched_count",
        "failed_dispatch_count",
        "recovered_run_count",
        "claim_conflict_count",
    )
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[SchedulerEngine]:
        return super().get_queryset(request).on_database_clock()  # type: ignore[attr-defined]

    @admin.display(description="state")
    def state_badge(self, engine: SchedulerEngine) -> str:
        state = engine.state(dead_after())
        return format_html('<strong style="color: {}">{}</strong>', _ENGINE_COLOURS[state], state.label)

    @admin.display(description="host:pid", ordering="hostname")
    def process(self, engine: SchedulerEngine) -> str:
        return f"{engine.hostname}:{engine.pid}"

    @admin.display(description="counts")
    def counters(self, engine: SchedulerEngine) -> str:
        return format_html(
            "{} sent<br><small>{} failed · {} recovered · {} conflicts</small>",
            engine.dispatched_count,
            engine.failed_dispatch_count,
            engine.recovered_run_count,
            engine.claim_conflict_count,
        )

    @admin.display(description="started", ordering="started_at")
    def started(self, engine: SchedulerEngine) -> str:
        return list_time(engine.started_at)

    @admin.display(description="stopped", ordering="stopped_at")
    def stopped(self, engine: SchedulerEngine) -> str:
        return list_time(engine.stopped_at)

    @admin.display(description="last heartbeat", ordering="heartbeat_at")
    def heartbeat(self, engine: SchedulerEngine) -> str:
        return format_html(
            "{}<br><small>{}</small>", list_time(engine.heartbeat_at), relative_time(engine.heartbeat_at)
        )
