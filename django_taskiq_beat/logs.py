"""How our log lines name things and describe errors, so that an operator can act on one line alone.

A line about one job names it in its text (``'Nightly report' (reports.nightly), task
reports.send, slot 14:00:00 UTC``) and carries the same values in ``extra`` for structured
logging; no ``extra`` key is a ``LogRecord`` attribute. Times are in UTC and say so: engines
and workers may run in other time zones than the reader. Errors read as the run rows store
them (``describe_error``). A failure that repeats (a tick, a lease renewal, a heartbeat during
an outage) prints its traceback once, not at every try (``Outage``).
"""

import logging
import time
from datetime import UTC, datetime
from typing import Any

from taskiq import SendTaskError

_ERROR_LIMIT = 500


def when(moment: datetime) -> str:
    """``14:03:05 UTC``; with the date in front when it is not today's (in UTC)."""
    utc = moment.astimezone(UTC)
    if utc.date() == datetime.now(UTC).date():
        return utc.strftime("%H:%M:%S UTC")
    return utc.strftime("%Y-%m-%d %H:%M:%S UTC")


def job(job_id: str, name: str | None = None, task_name: str | None = None, slot: datetime | None = None) -> str:
    """``'Nightly report' (reports.nightly), task reports.send, slot 14:00:00 UTC``: the parts that are known.

    Names are quoted and ids written as they are unless they hold unprintable characters,
    so that stored text can never break a line in two.
    """
    text = f"{name!r} ({_plain(job_id)})" if name else _plain(job_id)
    if task_name:
        text += f", task {_plain(task_name)}"
    if slot is not None:
        text += f", slot {when(slot)}"
    return text


def job_extra(
    job_id: str, name: str | None = None, task_name: str | None = None, slot: datetime | None = None
) -> dict[str, Any]:
    """The same values for structured logging."""
    return {
        "job_id": job_id,
        "job_name": name,
        "task_name": task_name,
        "scheduled_for": slot.isoformat() if slot is not None else None,
    }


def job_row(row: Any) -> str:
    """``job(...)`` of a job row: anything with ``id``, ``name`` and ``task_name``."""
    return job(row.id, row.name, row.task_name)


def job_row_extra(row: Any) -> dict[str, Any]:
    """``job_extra(...)`` of a job row."""
    return job_extra(row.id, row.name, row.task_name)


def one_line(text: str, limit: int = _ERROR_LIMIT) -> str:
    """``text`` on one line (an error message may hold newlines), cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(error: BaseException | None, limit: int = 4000) -> str:
    """``Type: message``, with the chain of causes (as a traceback shows it), cut to ``limit`` characters.

    The text is storable on every backend, so storing it fails only for passing reasons:
    no NUL (PostgreSQL text refuses it) and no lone surrogate (not UTF-8; a message may
    carry undecodable bytes that way), which is written as its ``\\udcxx`` escape.
    """
    parts, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    text = " <- caused by ".join(parts).replace("\x00", "").encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(error: BaseException) -> str:
    """``describe_error``'s text on one line, shorter; without taskiq's ``SendTaskError`` wrapper, whose cause
    says what happened (``ConnectionError: Error 111 connecting to ...``)."""
    if isinstance(error, SendTaskError) and error.__cause__ is not None:
        error = error.__cause__
    return one_line(describe_error(error))


def count(number: int, noun: str) -> str:
    """``1 run``, ``3 runs``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def seconds(value: float) -> str:
    """``0.2 s``, ``2.5 s``, ``30 s``."""
    return f"{value:.2g} s" if value < 10 else f"{round(value)} s"


def traceback_at_debug(logger: logging.Logger, error: BaseException) -> BaseException | None:
    """``exc_info`` for a line whose traceback only a DEBUG log shows: one record, never a second line."""
    return error if logger.isEnabledFor(logging.DEBUG) else None


def _plain(text: str) -> str:
    return text if text.isprintable() else repr(text)


class Outage:
    """A repeated activity that keeps failing, logged without flooding the log.

    The first failure is an ERROR with its traceback; each further one a WARNING line with
    the error and the next try (its traceback at DEBUG); the first success after them an
    INFO line saying how long it lasted.
    """

    def __init__(self, logger: logging.Logger, activity: str) -> None:
        self.logger, self.activity = logger, activity
        self.failures = 0
        self._since = 0.0

    def failed(self, error: BaseException, retry_in: float) -> None:
        self.failures += 1
        extra = {"failure_count": self.failures}
        if self.failures == 1:
            self._since = time.monotonic()
            self.logger.error(
                "%s failed: %s; trying again in %s.",
                self.activity,
                error_text(error),
                seconds(retry_in),
                exc_info=error,
                extra=extra,
            )
        else:
            self.logger.warning(
                "%s failed again (%d in a row): %s; trying again in %s.",
                self.activity,
                self.failures,
                error_text(error),
                seconds(retry_in),
                exc_info=traceback_at_debug(self.logger, error),
                extra=extra,
            )

    def succeeded(self) -> None:
        if self.failures:
            self.logger.info(
                "%s works again after %s in %s.",
                self.activity,
                count(self.failures, "failure"),
                seconds(time.monotonic() - self._since),
                extra={"failure_count": self.failures},
            )
            self.failures = 0
