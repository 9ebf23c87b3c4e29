"""The one exception family the scheduler raises for bad input."""

from typing import Any


class SchedulerValidationError(ValueError):
    """Input the scheduler refuses; ``field`` and ``value`` say what was wrong.

    It is raised before anything is written, so a rejected call leaves the
    database as it was. It subclasses ``ValueError`` so code written against
    taskiq-beat keeps catching it.
    """

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}={value!r}: {problem}")


class JobNotFoundError(SchedulerValidationError):
    """No scheduler job has the given id."""

    def __init__(self, job_id: Any) -> None:
        super().__init__("job_id", job_id, f"Scheduler job '{job_id}' was not found.")
