"""The one exception family the scheduler raises for bad input."""

import reprlib
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 60, 60, 40
_SHORT_LENGTH = 120


def short_repr(value: Any) -> str:
    """A bounded ``repr`` that never fails: a 10 MB value must not make a 10 MB message."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # a repr that raises, or one too deep to build
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= _SHORT_LENGTH else text[: _SHORT_LENGTH - 3] + "..."


class SchedulerValidationError(ValueError):
    """Input the scheduler refuses; ``field`` and ``value`` say what was wrong.

    It is raised before anything is written, so a rejected call leaves the
    database as it was. It subclasses ``ValueError`` so code written against
    taskiq-beat keeps catching it. The message quotes a short prefix of the value.
    """

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}={short_repr(value)}: {problem}")


class JobNotFoundError(SchedulerValidationError):
    """No scheduler job has the given id."""

    def __init__(self, job_id: Any) -> None:
        super().__init__("job_id", job_id, f"Scheduler job {short_repr(job_id)} was not found.")
