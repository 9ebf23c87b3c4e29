"""Set-based writes the ORM lacks, and the locks around them: the one place that knows each database.

``bulk_update`` builds a CASE expression per field and row, and a plain
``executemany`` costs a round trip per row on PostgreSQL; a claim batch of 256 slots
would spend most of its time there. These helpers send one statement per chunk:

- PostgreSQL: the rows come as one array per column (``unnest``), so the statement is as
  short as its column list and the driver does not parse thousands of placeholders;
  ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` and ``UPDATE ... FROM``.
- SQLite (3.35+): the same statements, with the rows as ``VALUES``.
- MariaDB and MySQL: ``INSERT ... ON DUPLICATE KEY UPDATE`` with a no-op (MySQL has no
  ``RETURNING``, so the keys written are read back), and ``UPDATE ... JOIN`` a derived
  table of the rows.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import DatabaseError, connection, transaction

ServerBindingCursor: type[Any] | None
NativeTimestamptzLoader: type[Any] | None
try:  # Django uses psycopg 3 whenever it is installed
    from psycopg import Cursor as ServerBindingCursor
    from psycopg.types.datetime import TimestamptzLoader as NativeTimestamptzLoader
except ImportError:  # psycopg2, or no PostgreSQL driver at all
    ServerBindingCursor = NativeTimestamptzLoader = None

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


def writes_side_by_side() -> bool:
    """Whether a second connection of this process can write while the first one does.

    Not on SQLite: it has one writer at a time, so a second connection would only wait
    for the first one's lock.
    """
    return connection.vendor != "sqlite"


_SYNC_LOCK_KEY = 0x7A5B_5C01  # any constant: the lock's name among the project's advisory locks
_SYNC_LOCK_WAIT_SECONDS = 3600


@contextmanager
def serialized_sync() -> Iterator[None]:
    """A transaction during which no other process syncs declared jobs.

    PostgreSQL has a transaction-level advisory lock; on SQLite the write lock serialises
    writers already. MariaDB and MySQL have only session-level named locks, so the lock
    is taken before the transaction and released after it has committed or rolled back
    (inside a caller's own transaction, before that one commits).
    """
    if connection.vendor != "mysql":
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SYNC_LOCK_KEY])
            else:
                begin_write()
            yield
        return
    name = f"{connection.settings_dict['NAME']}.taskiq_beat.sync"[-64:]  # named locks are server-wide
    with connection.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(%s, %s)", [name, _SYNC_LOCK_WAIT_SECONDS])
        if cursor.fetchone()[0] != 1:
            raise TimeoutError(f"Another process held the sync lock {name!r} for {_SYNC_LOCK_WAIT_SECONDS} s.")
    try:
        with transaction.atomic():
            yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT RELEASE_LOCK(%s)", [name])
        except DatabaseError:  # the session is gone, and its lock with it: the sync's own error is what matters
            pass


def chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """Slices small enough for one statement's bound parameters."""
    for start in range(0, len(items), _ROWS_PER_STATEMENT):
        yield items[start : start + _ROWS_PER_STATEMENT]


@contextmanager
def native_timestamps() -> Iterator[None]:
    """Within it, this thread's queries read ``timestamptz`` with psycopg's own loader (PostgreSQL, psycopg 3).

    Django registers a Python subclass of it, there to make times naive when ``USE_TZ`` is off,
    and psycopg then calls Python for every value: about 10 µs each, a fifth of a claim's time
    in Python. With ``USE_TZ`` on (which the engine requires) both read the session's time zone,
    which Django sets, and give the same aware datetimes. A cursor that is not psycopg's (a
    wrapping backend) keeps its own loaders.
    """
    if connection.vendor != "postgresql" or NativeTimestamptzLoader is None:
        yield
        return

    def load_natively(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        adapters = getattr(context["cursor"].cursor, "adapters", None)
        if adapters is not None:
            adapters.register_loader("timestamptz", NativeTimestamptzLoader)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(load_natively):
        yield


def _server_binding() -> bool:
    return connection.vendor == "postgresql" and ServerBindingCursor is not None


def _cursor() -> Any:
    """On PostgreSQL with psycopg 3, a cursor that binds parameters on the server.

    Django's own psycopg cursor renders every parameter into the SQL text in Python,
    which for thousands of parameters costs more than running the statement.
    """
    if _server_binding():
        assert ServerBindingCursor is not None  # _server_binding() says so
        connection.ensure_connection()
        return ServerBindingCursor(connection.connection)
    return connection.cursor()


def _rows_sql(columns: Sequence[tuple[str, str]], chunk: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """A query giving ``chunk`` as rows of ``columns`` ((name, SQL type) pairs), and its parameters."""
    if connection.vendor == "postgresql":  # typed arrays: a column of NULLs is still of its type
        placeholder = "%b" if _server_binding() else "%s"
        arrays = ", ".join(f"CAST({placeholder} AS {sql_type}[])" for _, sql_type in columns)
        return f"SELECT * FROM unnest({arrays})", [list(column) for column in zip(*chunk, strict=True)]
    params = [value for row in chunk for value in row]
    if connection.vendor == "mysql":  # MariaDB has no column names for a derived VALUES table
        first = "SELECT " + ", ".join(f"%s AS {name}" for name, _ in columns)
        rest = " UNION ALL SELECT " + ", ".join(["%s"] * len(columns))
        return first + rest * (len(chunk) - 1), params
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    return "VALUES " + ", ".join([row_sql] * len(chunk)), params


def _execute_in_chunks(
    rows: Sequence[tuple[Any, ...]],
    statement: Callable[[str], str],
    columns: Sequence[tuple[str, str]],
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

    ``columns`` are (name, SQL type) pairs in row order; the first is the table's key, and
    each row's key must be new (an id made for it), so that the keys now stored are the rows written.
    """
    names = ", ".join(name for name, _ in columns)
    key = columns[0][0]
    if connection.vendor != "mysql":
        written = _execute_in_chunks(
            rows,
            lambda rows_sql: f"INSERT INTO {table} ({names}) {rows_sql} ON CONFLICT DO NOTHING RETURNING {key}",
            columns,
            returning=True,
        )
        return {row[0] for row in written}
    # A no-op update on a duplicate key skips the row without hiding other errors, as INSERT IGNORE would.
    _execute_in_chunks(
        rows,
        lambda rows_sql: (
            f"INSERT INTO {table} ({names}) SELECT * FROM ({rows_sql}) AS v"
            f" ON DUPLICATE KEY UPDATE {table}.{key} = {table}.{key}"
        ),
        columns,
    )
    stored: set[Any] = set()
    with connection.cursor() as cursor:
        for chunk in chunks([row[0] for row in rows]):
            cursor.execute(f"SELECT {key} FROM {table} WHERE {key} IN ({', '.join(['%s'] * len(chunk))})", chunk)
            stored.update(row[0] for row in cursor.fetchall())
    return stored


def update_from_values(
    table: str,
    columns: Sequence[tuple[str, str]],
    assignments: Sequence[tuple[str, str]],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """UPDATE ``table`` from rows of values; each (column, expression) assignment reads them as ``v.<column>``.

    ``columns`` are (name, SQL type) pairs in row order; the first one is matched
    against ``table.id``. MariaDB and MySQL may assign left to right, each expression seeing the
    columns assigned before it: an expression may read ``v``, its own column, and columns
    assigned after it, never one assigned before it.
    """
    names = ", ".join(name for name, _ in columns)
    key = columns[0][0]
    if connection.vendor == "mysql":
        # The target columns are qualified: ``v`` has columns of the same names. STRAIGHT_JOIN reads
        # ``v`` first, so rows are locked in its (sorted) order whatever plan the optimizer would pick.
        sets = ", ".join(f"{table}.{column} = {expression}" for column, expression in assignments)
        template = f"UPDATE ({{rows}}) AS v STRAIGHT_JOIN {table} ON {table}.id = v.{key} SET {sets}"
    else:
        sets = ", ".join(f"{column} = {expression}" for column, expression in assignments)
        template = f"WITH v ({names}) AS ({{rows}}) UPDATE {table} SET {sets} FROM v WHERE {table}.id = v.{key}"
    # One lock order for every writer: no deadlocks.
    _execute_in_chunks(sorted(rows, key=lambda row: row[0]), lambda rows_sql: template.format(rows=rows_sql), columns)
