"""SchedulerConfig, settings.TASKIQ_BEAT and the system checks."""

from typing import Any

import pytest
from django.core.checks import CheckMessage, run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from taskiq import InMemoryBroker

from django_taskiq_beat import SchedulerConfig, SchedulerValidationError, get_scheduler_app
from django_taskiq_beat.conf import load_broker


def check_ids() -> set[str]:
    return {message.id for message in run_checks() if message.id and message.id.startswith("django_taskiq_beat")}


def test_defaults_follow_the_reference() -> None:
    config = SchedulerConfig()
    assert len(config.scheduler_id) == 32
    assert (config.sync_interval_seconds, config.idle_sleep_seconds, config.claim_ttl_seconds) == (1.0, 0.2, 60)
    assert (config.dispatch_retry_seconds, config.dispatch_concurrency, config.dispatch_batch_size) == (5, 32, 256)
    assert config.record_runs is True
    # History is bounded by default (the design's wave 2): the reference keeps it forever.
    assert (config.run_history_retention_days, config.completed_job_retention_days) == (30, None)
    assert (config.heartbeat_seconds, config.engine_dead_after_seconds) == (5.0, 15.0)
    assert (config.run_cleanup_interval_seconds, config.job_cleanup_interval_seconds) == (3600.0, 3600.0)
    assert SchedulerConfig().scheduler_id != config.scheduler_id


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        SchedulerConfig().dispatch_batch_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scheduler_id", " "),
        ("sync_interval_seconds", 0),
        ("idle_sleep_seconds", -1.0),
        ("claim_ttl_seconds", 1.5),
        ("dispatch_retry_seconds", 0),
        ("dispatch_concurrency", True),
        ("dispatch_batch_size", "10"),
        ("record_runs", 1),
        ("run_history_retention_days", -1),
        ("completed_job_retention_days", 2.0),
        ("run_cleanup_interval_seconds", float("inf")),
        ("default_timezone", "Nowhere/Special"),
        ("claim_ahead_seconds", -0.1),
        ("dispatch_timeout_seconds", 0),
        ("dispatch_retry_max_seconds", 1),
        ("heartbeat_seconds", 0),
        ("engine_dead_after_seconds", 5.0),
    ],
)
def test_invalid_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        SchedulerConfig(**{field: value})
    assert (caught.value.field, caught.value.value) == (field, value)


def test_retention_zero_is_allowed() -> None:
    assert SchedulerConfig(run_history_retention_days=0).run_history_retention_days == 0


def test_settings_are_read_with_time_zone_as_default_timezone(settings: Any) -> None:
    settings.TIME_ZONE = "Asia/Kolkata"
    settings.TASKIQ_BEAT = {"BROKER": "testproject.tasks:broker", "DISPATCH_CONCURRENCY": 4, "RECORD_RUNS": False}
    config = SchedulerConfig.from_settings()
    assert (config.default_timezone, config.dispatch_concurrency, config.record_runs) == ("Asia/Kolkata", 4, False)
    settings.TASKIQ_BEAT = {"DEFAULT_TIMEZONE": "UTC"}
    assert SchedulerConfig.from_settings().default_timezone == "UTC"


def test_unknown_setting_is_named(settings: Any) -> None:
    settings.TASKIQ_BEAT = {"DISPATCH_BATCH": 10}
    with pytest.raises(SchedulerValidationError, match="DISPATCH_BATCH"):
        SchedulerConfig.from_settings()


def test_get_scheduler_app_builds_one_app_from_settings(settings: Any) -> None:
    settings.TASKIQ_BEAT = {"BROKER": "testproject.tasks:broker", "DISPATCH_BATCH_SIZE": 9}
    app = get_scheduler_app()
    assert app is get_scheduler_app()
    from testproject.tasks import broker

    assert app.broker is broker and app.config.dispatch_batch_size == 9
    settings.TASKIQ_BEAT = {"BROKER": "testproject.tasks:broker", "DISPATCH_BATCH_SIZE": 3}
    assert get_scheduler_app().config.dispatch_batch_size == 3


def test_get_scheduler_app_without_broker_says_what_to_set(settings: Any) -> None:
    settings.TASKIQ_BEAT = {}
    with pytest.raises(ImproperlyConfigured, match=r"TASKIQ_BEAT\['BROKER'\]"):
        get_scheduler_app()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("testproject.tasks", "expected 'package.module:broker'"),
        ("testproject.missing:broker", "does not import: ModuleNotFoundError"),
        ("testproject.tasks:nothing", "does not import: AttributeError"),
        ("testproject.tasks:heartbeat", "not a taskiq broker"),
    ],
)
def test_load_broker_errors_name_the_path(path: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as caught:
        load_broker(path)
    assert path in str(caught.value)


def test_load_broker_returns_the_broker() -> None:
    assert isinstance(load_broker("testproject.tasks:broker"), InMemoryBroker)


# -- system checks ----------------------------------------------------------------------------


def test_valid_settings_pass_the_checks() -> None:
    assert check_ids() == set()


@pytest.mark.parametrize(
    ("setting", "value", "check_id"),
    [
        ("TASKIQ_BEAT", {"BROKER": "testproject.tasks:broker", "SYNC_INTERVAL_SECONDS": -1}, "django_taskiq_beat.E001"),
        ("TASKIQ_BEAT", {"BROKER": "testproject.tasks:broker", "NOPE": 1}, "django_taskiq_beat.E001"),
        ("TASKIQ_BEAT", ["not", "a", "dict"], "django_taskiq_beat.E001"),
        (
            "TASKIQ_BEAT",
            {"BROKER": "testproject.tasks:broker", "DEFAULT_TIMEZONE": "Mars/Base"},
            "django_taskiq_beat.E002",
        ),
        ("TASKIQ_BEAT", {"BROKER": "testproject.nowhere:broker"}, "django_taskiq_beat.E003"),
        ("TASKIQ_BEAT", {"BROKER": "testproject.tasks:add"}, "django_taskiq_beat.E003"),
        ("TASKIQ_BEAT", {}, "django_taskiq_beat.W001"),
        ("USE_TZ", False, "django_taskiq_beat.E004"),
    ],
)
def test_bad_settings_are_reported_by_manage_py_check(settings: Any, setting: str, value: Any, check_id: str) -> None:
    setattr(settings, setting, value)
    assert check_ids() == {check_id}


def test_check_messages_are_clear(settings: Any) -> None:
    settings.TASKIQ_BEAT = {"BROKER": "testproject.nowhere:broker", "DEFAULT_TIMEZONE": "Mars/Base"}
    messages = {message.id: message.msg for message in run_checks()}
    assert "Mars/Base" in messages["django_taskiq_beat.E002"]
    assert "testproject.nowhere:broker" in messages["django_taskiq_beat.E003"]
    assert "ModuleNotFoundError" in messages["django_taskiq_beat.E003"]


def test_a_hand_built_config_takes_the_project_time_zone(settings: Any) -> None:
    settings.TIME_ZONE = "America/Sao_Paulo"
    assert SchedulerConfig(dispatch_batch_size=100).default_timezone == "America/Sao_Paulo"
    assert SchedulerConfig(default_timezone="UTC").default_timezone == "UTC"


# -- the database the scheduler's tables live on ----------------------------------------------------


def database_checks() -> dict[str, str]:
    messages = run_checks(databases=["default"], include_deployment_checks=False)
    return {
        message.id: message.msg for message in messages if message.id and message.id.startswith("django_taskiq_beat")
    }


@pytest.mark.django_db
def test_the_database_the_tests_run_on_passes_every_check() -> None:
    assert database_checks() == {}


class SchedulerElsewhere:
    """A router that reads the scheduler's runs from a replica and writes its jobs to another database."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        return "replica" if model.__name__ == "SchedulerRun" else None

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        return "other" if model.__name__ == "SchedulerJob" else None


class DashboardAndEngineElsewhere:
    """A router that reads the admin dashboard's proxy from a replica and migrates the engine table elsewhere."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        return "replica" if model.__name__ == "SchedulerDashboard" else None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        return db != "default" if model_name == "schedulerengine" else None


def e009(router: object) -> CheckMessage:
    with override_settings(DATABASE_ROUTERS=[router]):
        (message,) = [message for message in run_checks() if message.id == "django_taskiq_beat.E009"]
    return message


def test_a_router_sending_the_scheduler_elsewhere_than_the_default_database_is_an_error() -> None:
    """The engine's SQL and transactions are on the default database: ORM reads from elsewhere would split them."""
    assert "django_taskiq_beat.E009" not in {message.id for message in run_checks()}
    message = e009(SchedulerElsewhere())
    assert "SchedulerRun reads on 'replica'" in message.msg and "SchedulerJob writes on 'other'" in message.msg
    assert "SchedulerEngine" not in message.msg and "return None" in message.hint
    message = e009(DashboardAndEngineElsewhere())
    assert "SchedulerDashboard reads on 'replica'" in message.msg
    assert "SchedulerEngine's table elsewhere (allow_migrate)" in message.msg and "SchedulerJob" not in message.msg


def test_an_unsupported_database_backend_is_an_error_naming_the_supported_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connection

    monkeypatch.setattr(connection, "vendor", "oracle")
    message = next(message for message in run_checks() if message.id == "django_taskiq_beat.E007")
    assert "'oracle'" in message.msg and "DATABASES['default']" in message.msg
    for supported in ("PostgreSQL", "SQLite", "MariaDB 10.6+", "MySQL"):
        assert supported in message.hint


def too_old(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the test database look older than the engine allows; returns what E008 then says."""
    from django.db import connection

    if connection.vendor == "sqlite":
        monkeypatch.setattr(connection.Database, "sqlite_version_info", (3, 34, 1))
        return "needs SQLite 3.35 or later; DATABASES['default'] is 3.34.1"
    if connection.vendor == "mysql":
        monkeypatch.setattr(connection, "mysql_is_mariadb", True)
        monkeypatch.setattr(connection, "mysql_version", (10, 5, 27))
        return "needs MariaDB 10.6 or later; DATABASES['default'] is 10.5.27"
    pytest.skip("PostgreSQL: Django's own minimum (14) has everything the engine needs")


@pytest.mark.django_db
def test_a_database_version_without_what_the_engine_needs_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert too_old(monkeypatch) in database_checks()["django_taskiq_beat.E008"]


@pytest.mark.django_db
def test_the_engine_command_refuses_such_a_database_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    expected = too_old(monkeypatch)
    with pytest.raises(SystemCheckError) as refused:
        call_command("run_taskiq_beat", skip_checks=False)
    assert "django_taskiq_beat.E008" in str(refused.value) and expected in str(refused.value)


@pytest.mark.django_db
def test_missing_time_zone_tables_are_a_warning_on_mariadb(settings: Any) -> None:
    from django.db import connection

    if connection.vendor != "mysql":
        pytest.skip("MariaDB/MySQL only: the other databases convert time zones without tables")
    zone = "Antarctica/Troll"  # a zone no other test converts to: the server caches zones it has used
    with connection.cursor() as cursor:
        cursor.execute("SELECT Time_zone_id FROM mysql.time_zone_name WHERE Name = %s", [zone])
        (zone_id,) = cursor.fetchone()
        cursor.execute("DELETE FROM mysql.time_zone_name WHERE Name = %s", [zone])
    try:
        settings.TIME_ZONE = zone
        message = database_checks()["django_taskiq_beat.W002"]
        assert "no time zone tables" in message and zone in message
    finally:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO mysql.time_zone_name (Name, Time_zone_id) VALUES (%s, %s)", [zone, zone_id])
    settings.TIME_ZONE = "Europe/Berlin"
    assert "django_taskiq_beat.W002" not in database_checks()
