"""A thread with a database connection of its own, for engine work that must not queue behind the tick.

Django's async ORM calls (``sync_to_async``) share one thread, and so one connection: each
query waits for the one before it. The heartbeat, and the engine's writes of outcomes and
leases where the database takes two writers at once, run on a thread of their own instead,
each with its own connection (Django keeps one per thread).
"""

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection

from django_taskiq_beat import logs

logger = logging.getLogger("django_taskiq_beat.engine")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _in_own_connection(function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """A connection that failed is closed, so the next call opens a new one.

    With ``CONN_MAX_AGE = 0`` (Django's default: close at the end of each request) the
    connection is kept between calls, which are many and small, not requests; with a
    maximum age, one past it (or unusable) is replaced first, as Django does per request.
    """
    if connection.settings_dict["CONN_MAX_AGE"] != 0:
        close_old_connections()
    try:
        return function(*args, **kwargs)
    except Exception:
        connection.close()
        raise


def close_connection() -> None:
    """Close this thread's connection (Django keeps one per thread)."""
    connection.close()


class DatabaseThread:
    """One thread, started by ``start()`` and let go by ``close()``, that runs ORM code on its own connection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    @property
    def is_running(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        if self._executor is None:  # started again without close() (a crashed runner): keep the thread
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)

    async def __call__(self, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        assert self._executor is not None, "DatabaseThread called before start()"
        return await sync_to_async(_in_own_connection, thread_sensitive=False, executor=self._executor)(
            function, *args, **kwargs
        )

    async def close(self) -> None:
        """Close the thread's connection (it holds no transaction between calls), then let the thread go."""
        if self._executor is None:
            return
        try:
            await self(close_connection)
        except Exception as exc:  # the connection is unusable either way; it must not keep the engine from stopping
            logger.warning("Closing the %s thread's database connection failed: %s", self.name, logs.error_text(exc))
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None
