"""Shared fixtures: a fresh in-process broker per test, an app on it, sync/async callers; rows written raw."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from taskiq import InMemoryBroker

from django_taskiq_beat import SchedulerApp, SchedulerConfig

# Stored timestamps Python cannot read, as each backend's text: SQLite keeps any text, and a number
# (NUMERIC affinity) sorts before every text, so it is always due; psycopg refuses what Python's
# datetime cannot hold.
UNREADABLE_TIMES = {
    "sqlite": ["2026-02-30 00:00:00", "12345"],
    "postgresql": ["-infinity", "0044-03-15 00:00:00+00 BC"],
    "mysql": ["0000-00-00 00:00:00.000000"],  # MariaDB's zero date, which mysqlclient reads as None
}


def nested(depth: int) -> list[Any]:
    """A list nested ``depth`` deep: past the recursion limit, a value that ``repr`` and ``json`` fail on."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def store_raw(table: str, row_id: str, column: str, value: Any) -> None:
    """Write a value behind the ORM's back, as a broken import or a manual edit would."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", [value, row_id])


class Recorder:
    """Collects what the test tasks were called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def broker(recorder: Recorder) -> InMemoryBroker:
    """A fresh broker (taskiq's shutdown is final) that runs tasks inside ``kiq``."""
    broker = InMemoryBroker(await_inplace=True)

    @broker.task(task_name="system.echo")
    async def echo(*args: Any, **kwargs: Any) -> None:
        recorder.calls.append(("system.echo", args, kwargs))

    @broker.task(task_name="system.other")
    def other(*args: Any, **kwargs: Any) -> None:
        recorder.calls.append(("system.other", args, kwargs))

    return broker


@pytest.fixture
def config() -> SchedulerConfig:
    return SchedulerConfig(scheduler_id="test-scheduler", default_timezone="UTC")


@pytest.fixture
def app(broker: InMemoryBroker, config: SchedulerConfig) -> SchedulerApp:
    return SchedulerApp(broker=broker, config=config)


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``call(obj, "pause", job_id)`` runs ``obj.pause`` or, for the async run, ``obj.apause``."""

    def invoke(obj: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if request.param == "sync":
            return getattr(obj, method)(*args, **kwargs)
        return async_to_sync(getattr(obj, f"a{method}"))(*args, **kwargs)

    return invoke


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Let the test database be dropped: end connections that other threads left open.

    Engines and chain orchestrators reach the database from asgiref's worker threads,
    whose connections the test thread cannot close.
    """
    yield
    from django.db import connection

    if connection.vendor == "sqlite":  # the database file goes; its WAL files would stay behind
        for suffix in ("-wal", "-shm"):
            Path(f"{connection.settings_dict['NAME']}{suffix}").unlink(missing_ok=True)
    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
