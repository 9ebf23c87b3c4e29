"""System checks: ``manage.py check`` reports a bad ``TASKIQ_BEAT`` before anything runs."""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.backends.base.base import BaseDatabaseWrapper

from django_taskiq_beat.conf import SETTINGS_NAME, SchedulerConfig, broker_path, load_broker
from django_taskiq_beat.exceptions import SchedulerValidationError

_HINT = f"See the settings reference in django-taskiq-beat's documentation (docs/settings.md, {SETTINGS_NAME})."
_SCHEDULE_HINT = "See 'Schedules declared in code' in django-taskiq-beat's documentation (docs/declared.md)."


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if not settings.USE_TZ:
        messages.append(
            Error(
                "django_taskiq_beat needs USE_TZ = True: every schedule is kept in timezone-aware datetimes.",
                hint="Set USE_TZ = True in your settings.",
                id="django_taskiq_beat.E004",
            )
        )
    try:
        SchedulerConfig.from_settings()
    except SchedulerValidationError as exc:
        check_id = "django_taskiq_beat.E002" if exc.field == "default_timezone" else "django_taskiq_beat.E001"
        what = "DEFAULT_TIMEZONE (or TIME_ZONE)" if exc.field == "default_timezone" else SETTINGS_NAME
        messages.append(Error(f"Invalid {what}: {exc}", hint=_HINT, id=check_id))
    try:
        path = broker_path()
    except SchedulerValidationError:
        return messages  # already reported as E001
    if not path:
        messages.append(
            Warning(
                f"{SETTINGS_NAME}['BROKER'] is not set: get_scheduler_app() and run_taskiq_beat need it.",
                hint="Set it to the 'package.module:broker' path of your taskiq broker.",
                id="django_taskiq_beat.W001",
            )
        )
        return messages
    try:
        load_broker(path)
    except ImproperlyConfigured as exc:
        messages.append(Error(str(exc), hint=_HINT, id="django_taskiq_beat.E003"))
    return messages


SUPPORTED_DATABASES = "PostgreSQL 14+, SQLite 3.35+, MariaDB 10.6+ and MySQL 8.0.13+"
_SUPPORTED_VENDORS = ("postgresql", "sqlite", "mysql")


def _connection_to_check(databases: Any) -> BaseDatabaseWrapper | None:
    """The scheduler's database (the default one: see ``check_database_routing``), if this run of the checks may
    connect to it."""
    return connections[DEFAULT_DB_ALIAS] if databases and DEFAULT_DB_ALIAS in databases else None


@register(Tags.compatibility)
def check_database_backend(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The engine's SQL is written for each supported database; on another it would fail at its first claim."""
    alias = DEFAULT_DB_ALIAS
    vendor = connections[alias].vendor
    if vendor in _SUPPORTED_VENDORS:
        return []
    return [
        Error(
            f"django_taskiq_beat does not support the {vendor!r} database backend of DATABASES[{alias!r}]"
            f" ({settings.DATABASES[alias]['ENGINE']}).",
            hint=f"Keep the scheduler's tables on one of: {SUPPORTED_DATABASES}.",
            id="django_taskiq_beat.E007",
        )
    ]


@register(Tags.compatibility)
def check_database_routing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The engine's SQL, its transactions and its row locks run on the default database: a router sending the
    scheduler's models elsewhere (another database, a replica for reads) would split one claim over two, and one
    whose ``allow_migrate`` keeps a table off the default database leaves the engine without it."""
    models = list(apps.get_app_config("django_taskiq_beat").get_models())  # the dashboard proxy too
    routed = [
        f"{model.__name__} {way} on {alias!r}"
        for model in models
        for way, alias in (("reads", router.db_for_read(model)), ("writes", router.db_for_write(model)))
        if alias != DEFAULT_DB_ALIAS
    ] + [
        f"{model.__name__}'s table elsewhere (allow_migrate)"
        for model in models
        if not model._meta.proxy and not router.allow_migrate_model(DEFAULT_DB_ALIAS, model)
    ]
    if not routed:
        return []
    return [
        Error(
            f"django_taskiq_beat keeps its tables on the {DEFAULT_DB_ALIAS!r} database, but DATABASE_ROUTERS send"
            f" {', '.join(routed)}.",
            hint="Let your routers return None for the django_taskiq_beat app's models.",
            id="django_taskiq_beat.E009",
        )
    ]


@register(Tags.database)
def check_database_version(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Versions that Django accepts but that lack what the engine needs: ``SKIP LOCKED`` (MariaDB 10.6),
    ``RETURNING`` (SQLite 3.35), JSON column defaults (MySQL 8.0.13). Run by ``migrate``,
    ``check --database`` and ``run_taskiq_beat``, which may connect."""
    connection = _connection_to_check(databases)
    if connection is None:
        return []
    backend: Any = connection  # the backend's own attributes (Database, mysql_version ...) are not on the base class
    needed: tuple[int, ...]
    if connection.vendor == "sqlite":
        version, needed, name = backend.Database.sqlite_version_info, (3, 35), "SQLite"
    elif connection.vendor == "mysql":  # MySQL 8.0.13 for the JSON column defaults of the migrations
        mariadb = backend.mysql_is_mariadb
        version, needed, name = (
            backend.mysql_version,
            (10, 6) if mariadb else (8, 0, 13),
            ("MariaDB" if mariadb else "MySQL"),
        )
    else:
        return []
    if tuple(version) >= needed:
        return []
    return [
        Error(
            f"django_taskiq_beat needs {name} {'.'.join(map(str, needed))} or later; DATABASES[{connection.alias!r}] is"
            f" {'.'.join(map(str, version))}.",
            hint=f"Supported: {SUPPORTED_DATABASES}.",
            id="django_taskiq_beat.E008",
        )
    ]


@register(Tags.database)
def check_time_zone_tables(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """MariaDB and MySQL convert times to ``TIME_ZONE`` with their own zone tables, empty until loaded:
    without them the run history's date drill-down and the dashboard's hours fail."""
    connection = _connection_to_check(databases)
    if connection is None or connection.vendor != "mysql" or connection.timezone_name == settings.TIME_ZONE:
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONVERT_TZ('2000-01-01 00:00:00', 'UTC', %s)", [settings.TIME_ZONE])
        if cursor.fetchone()[0] is not None:
            return []
    return [
        Warning(
            f"The {connection.display_name} server of DATABASES[{connection.alias!r}] has no time zone tables, so it"
            f" cannot convert times to TIME_ZONE={settings.TIME_ZONE!r}:"
            " the run history's dates and the dashboard fail.",
            hint="Load them once: mariadb-tzinfo-to-sql /usr/share/zoneinfo | mariadb -u root mysql"
            " (MySQL: mysql_tzinfo_to_sql).",
            id="django_taskiq_beat.W002",
        )
    ]


_left_to_the_sync: ContextVar[bool] = ContextVar("declared_schedules_left_to_the_sync", default=False)


@contextmanager
def declared_schedules_left_to_the_sync() -> Iterator[None]:
    """The system checks skip declared schedules inside: for this app's commands, which sync (or may
    need to run) while one declaration is wrong. The sync reports a bad entry and leaves its job as
    it was; ``manage.py check`` still reports it."""
    token = _left_to_the_sync.set(True)
    try:
        yield
    finally:
        _left_to_the_sync.reset(token)


class DeclaredSchedulesLeftToTheSync:
    """For this app's management commands: their system checks skip declared schedules, so one bad
    entry costs its job, not the command (their sync reports it)."""

    def check(self, *args: Any, **kwargs: Any) -> None:
        with declared_schedules_left_to_the_sync():
            super().check(*args, **kwargs)  # type: ignore[misc]


@register(Tags.compatibility)
def check_declared_schedules(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every job declared in settings or in a task's ``schedule`` label, checked as the API checks it.

    taskiq-django's rows are data, not code: the sync reports a bad row without stopping anything.
    """
    from django_taskiq_beat.app import get_scheduler_app
    from django_taskiq_beat.declarations import TASKIQ_DJANGO_APP, TASKIQ_DJANGO_MISSING
    from django_taskiq_beat.sync import declared_in_code

    if _left_to_the_sync.get():
        return []
    try:
        app = get_scheduler_app()
    except (ImproperlyConfigured, SchedulerValidationError):
        return []  # reported by check_settings
    messages: list[CheckMessage] = [
        Error(str(error), hint=_SCHEDULE_HINT, id="django_taskiq_beat.E005")
        for source in declared_in_code(app)
        for error in source.errors
    ]
    if app.config.import_taskiq_django and not apps.is_installed(TASKIQ_DJANGO_APP):
        messages.append(
            Error(
                f"{SETTINGS_NAME}['IMPORT_TASKIQ_DJANGO'] is True, but {TASKIQ_DJANGO_MISSING}",
                hint=_HINT,
                id="django_taskiq_beat.E006",
            )
        )
    return messages
