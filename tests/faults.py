"""Faults the process tests inject into the database server: sessions cut, writes refused, logins refused.

A test finds an engine's sessions by the engine's name: PostgreSQL shows it as the
session's ``application_name``; on MariaDB and MySQL, which have no such name, each engine
logs in as a user of that name (``engine_login``).
"""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

# What the engine's log shows when the server refuses writes.
WRITES_REFUSED = {"postgresql": "read-only transaction", "mysql": "--read-only option"}


def _sql(statement: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description else []


def engine_login(name: str) -> str | None:
    """The database user an engine called ``name`` logs in as (None: the tests' own)."""
    if connection.vendor != "mysql":
        return None
    database = connection.ops.quote_name(connection.settings_dict["NAME"])
    for host in ("localhost", "%"):
        _sql(f"CREATE USER IF NOT EXISTS '{name}'@'{host}'")
        _sql(f"GRANT ALL ON {database}.* TO '{name}'@'{host}'")
    return name


def drop_login(name: str) -> None:
    if connection.vendor == "mysql":
        cut_sessions(name)
        for host in ("localhost", "%"):
            _sql(f"DROP USER IF EXISTS '{name}'@'{host}'")


def sessions(name: str) -> int:
    """How many sessions the engine ``name`` has open."""
    if connection.vendor == "postgresql":
        ((count,),) = _sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name])
    else:
        ((count,),) = _sql("SELECT count(*) FROM information_schema.processlist WHERE user = %s", [name])
    return int(count)  # type: ignore[call-overload]


def cut_sessions(name: str) -> int:
    """End every session of the engine ``name``; returns how many there were."""
    if connection.vendor == "postgresql":
        ((count,),) = _sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s", [name]
        )
        return int(count)  # type: ignore[call-overload]
    ids = [row[0] for row in _sql("SELECT id FROM information_schema.processlist WHERE user = %s", [name])]
    for session_id in ids:
        try:
            _sql(f"KILL CONNECTION {int(session_id)}")  # type: ignore[call-overload]
        except Exception:  # gone meanwhile
            pass
    return len(ids)


def refuse_logins(user: str, refused: bool) -> None:
    """Refuse (or allow again) new sessions of ``user``."""
    if connection.vendor == "postgresql":
        _sql(f'ALTER ROLE "{user}" {"NOLOGIN" if refused else "LOGIN"}')
    else:
        _sql(f"ALTER USER '{user}'@'localhost', '{user}'@'%' ACCOUNT {'LOCK' if refused else 'UNLOCK'}")


@contextmanager
def writes_refused(name: str) -> Iterator[None]:
    """The database refuses every write of the engine ``name`` until the block ends."""
    if connection.vendor == "postgresql":
        database = connection.ops.quote_name(connection.settings_dict["NAME"])
        _sql(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        try:
            cut_sessions(name)  # its new sessions are read-only
            yield
        finally:
            _sql(f"ALTER DATABASE {database} RESET default_transaction_read_only")
            cut_sessions(name)
        return
    _sql("SET GLOBAL read_only = 1")  # every session, at once, but the tests' own (a superuser)
    try:
        yield
    finally:
        _sql("SET GLOBAL read_only = 0")
