"""Is the scheduler working? The checks behind ``taskiq_beat health`` and the admin's warning.

Each check answers from the database alone, so it can run anywhere Django runs: a
Kubernetes probe, a Docker HEALTHCHECK, the admin. They run in order and stop at the
first failure, since a later check means nothing without the earlier ones.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from django_taskiq_beat.models import DatabaseNow, SchedulerEngine
from django_taskiq_beat.overview import overdue

APP_LABEL = "django_taskiq_beat"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def unapplied_migrations(app_label: str | None = None) -> list[str]:
    """``app.migration`` names not applied yet on the default database (of one app, or all)."""
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [
        f"{migration.app_label}.{migration.name}"
        for migration, _ in plan
        if app_label is None or migration.app_label == app_label
    ]


def live_engines(dead_after: timedelta) -> list[SchedulerEngine]:
    """Engines with a heartbeat within ``dead_after``, judged by the database's clock as engines write it."""
    return list(SchedulerEngine.objects.alive(DatabaseNow(), dead_after))


def _database() -> Check:
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return Check("database", False, f"cannot query: {exc}".strip())
    return Check("database", True, connections[DEFAULT_DB_ALIAS].vendor)


def _migrations() -> Check:
    missing = unapplied_migrations(APP_LABEL)
    if missing:
        return Check("migrations", False, f"not applied: {', '.join(missing)} (run manage.py migrate)")
    return Check("migrations", True, "applied")


def _engines(dead_after: timedelta) -> Check:
    alive = live_engines(dead_after)
    if alive:
        return Check("engines", True, f"{len(alive)} alive")
    last = SchedulerEngine.objects.order_by("-heartbeat_at").first()
    seen = f"; last heartbeat {last.heartbeat_at.isoformat(timespec='seconds')} from {last}" if last else ""
    return Check(
        "engines", False, f"no engine alive (none with a heartbeat in the last {dead_after.total_seconds():g} s{seen})"
    )


def _schedule(now: datetime, max_lag: timedelta) -> Check:
    late = overdue(now, max_lag)
    if not late.count:
        return Check("schedule", True, f"no enabled job overdue by more than {max_lag.total_seconds():g} s")
    assert late.oldest_slot is not None
    return Check(
        "schedule",
        False,
        f"{late.count} enabled job(s) overdue by more than"
        f" {max_lag.total_seconds():g} s; the oldest, {late.oldest_job_id!r}, was due"
        f" {late.oldest_slot.isoformat(timespec='seconds')}",
    )


def run_checks(dead_after: timedelta, max_lag: timedelta, now: datetime | None = None) -> list[Check]:
    """database, migrations, engines, schedule: in that order, up to and including the first failure."""
    moment = now or timezone.now()
    checks: list[Callable[[], Check]] = [
        _database,
        _migrations,
        lambda: _engines(dead_after),
        lambda: _schedule(moment, max_lag),
    ]
    results: list[Check] = []
    for check in checks:
        results.append(check())
        if not results[-1].ok:
            break
    return results
