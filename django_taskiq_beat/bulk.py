"""Set-based writes the ORM lacks: many rows in one statement, on SQLite and PostgreSQL.

``bulk_update`` builds a CASE expression per field and row, and a plain
``executemany`` costs a round trip per row on PostgreSQL; a claim batch of 256 slots
would spend most of its time there. These helpers send one statement per chunk: on
PostgreSQL its rows come as one array per column (``unnest``), so the statement is as
short as its column list and the driver does not parse thousands of placeholders; on
SQLite as ``VALUES``. UPDATE ... FROM and RETURNING need SQLite 3.35 (2021) or PostgreSQL.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from django.db import connection

try:
    from psycopg import Cursor as ServerBindingCursor
except ImportError:  # psycopg2, or no PostgreSQL driver at all
    ServerBindingCursor = None

_ROWS_PER_STATEMENT = 500  # keeps SQLite under its 32,766 bound parameters
_T = TypeVar("_T")


def begin_write() -> None:
    """Inside a transaction that reads before it writes, take the write lock first.

    PostgreSQL locks rows with SELECT ... FOR UPDATE; SQLite ignores that, and a
    transaction that read before another process committed cannot write at all
    ("database is locked", with no waiting). A no-op write takes SQLite's write lock
    at once, so a concurrent writer waits its turn instead.
    """
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("UPDATE scheduler_job SET id = id WHERE 0 = 1")


_SYNC_LOCK_KEY = 0x7A5B_5C01  # any constant: the lock's name among the project's advisory locks


def lock_for_sync() -> None:
    """Inside a transaction, wait until no other process syncs declared jobs, then hold it until commit.

    PostgreSQL has a transaction-level advisory lock; on SQLite the write lock serialises
    writers already.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SYNC_LOCK_KEY])
    else:
        begin_write()


def chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """Slices small enough for one statement's bound parameters."""
    for start in range(0, len(items), _ROWS_PER_STATEMENT):
        yield items[start : start + _ROWS_PER_STATEMENT]


def _server_binding() -> bool:
    return connection.vendor == "postgresql" and ServerBindingCursor is not None


def _cursor() -> Any:
    """On PostgreSQL with psycopg 3, a cursor that binds parameters on the server.

    Django's own psycopg cursor renders every parameter into the SQL text in Python,
    which for thousands of parameters costs more than running the statement.
    """
    if _server_binding():
        connection.ensure_connection()
        return ServerBindingCursor(connection.connection)
    return connection.cursor()


def _rows_sql(columns: Sequence[tuple[str, str]], chunk: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """A query giving ``chunk`` as rows of ``columns`` ((name, SQL type) pairs), and its parameters."""
    if connection.vendor == "postgresql":  # typed arrays: a column of NULLs is still of its type
        arrays = ", ".join(f"CAST(%s AS {sql_type}[])" for _, sql_type in columns)
        return f"SELECT * FROM unnest({arrays})", [list(column) for column in zip(*chunk, strict=True)]
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    return "VALUES " + ", ".join([row_sql] * len(chunk)), [value for row in chunk for value in row]


def _execute_in_chunks(
    rows: Sequence[tuple[Any, ...]], statement: Callable[[str], str], columns: Sequence[tuple[str, str]],
    returning: bool = False,
) -> list[tuple[Any, ...]]:
    """Run ``statement(rows_sql)`` once per chunk of rows; returns what RETURNING gave."""
    returned: list[tuple[Any, ...]] = []
    if not rows:
        return returned
    with _cursor() as cursor:
        for chunk in chunks(rows):
            rows_sql, params = _rows_sql(columns, chunk)
            if _server_binding():
                # No server-side prepared statements: safe behind PgBouncer.
                cursor.execute(statement(rows_sql), params, prepare=False)
            else:
                cursor.execute(statement(rows_sql), params)
            if returning:
                returned.extend(cursor.fetchall())
    return returned


def insert_ignoring_conflicts(
    table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]]
) -> set[Any]:
    """INSERT the rows, skipping any that would break a unique key; returns the first column of those written.

    ``columns`` are (name, SQL type) pairs in row order.
    """
    names = ", ".join(name for name, _ in columns)
    written = _execute_in_chunks(
        rows,
        lambda rows_sql: f"INSERT INTO {table} ({names}) {rows_sql} ON CONFLICT DO NOTHING RETURNING {columns[0][0]}",
        columns,
        returning=True,
    )
    return {row[0] for row in written}


def update_from_values(
    table: str, columns: Sequence[tuple[str, str]], assignments: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """UPDATE ``table`` from rows of values; ``assignments`` reads them as ``v.<column>``.

    ``columns`` are (name, SQL type) pairs in row order; the first one is matched
    against ``table.id``.
    """
    names = ", ".join(name for name, _ in columns)
    key = columns[0][0]
    _execute_in_chunks(
        sorted(rows, key=lambda row: row[0]),  # one lock order for every writer: no deadlocks
        lambda rows_sql: f"WITH v ({names}) AS ({rows_sql})"
                         f" UPDATE {table} SET {assignments} FROM v WHERE {table}.id = v.{key}",
        columns,
    )
