"""What a job sends: a task name and JSON arguments, checked before anything is stored."""

import json
import math
from dataclasses import dataclass
from typing import Any

from django_taskiq_beat.exceptions import SchedulerValidationError


def task_name_of(task: Any, field: str = "task") -> str:
    """The name of a taskiq task object, or the stripped string given."""
    name = task if isinstance(task, str) else getattr(task, "task_name", None)
    if not isinstance(name, str):
        raise SchedulerValidationError(field, task, "Scheduler task must have a task_name.")
    if not name.strip():
        raise SchedulerValidationError(field, task, "Task name must not be empty.")
    return name.strip()


def require_json(value: Any, field: str, expected: type) -> Any:
    """A JSON-serialisable copy of ``value``, which must be a list/tuple or a dict."""
    if value is None:
        return expected()
    if expected is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, expected):
        raise SchedulerValidationError(field, value, f"Must be a JSON {'array' if expected is list else 'object'}.")
    if isinstance(value, dict) and not all(isinstance(key, str) for key in value):
        raise SchedulerValidationError(field, value, "Keys must be strings.")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SchedulerValidationError(field, value, f"Must be JSON-serialisable: {exc}") from None


@dataclass(frozen=True)
class TaskCall:
    """What a job sends: a task name and its JSON arguments, plus stored-only metadata."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    metadata: dict[str, Any]


def require_number(field: str, value: Any, *, minimum: float, inclusive: bool, integer: bool = False) -> None:
    """A finite number (an int if ``integer``) at least (``inclusive``) or above ``minimum``."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise SchedulerValidationError(field, value, "Must be an integer." if integer else "Must be a number.")
    if value < minimum or (value == minimum and not inclusive):
        if minimum == 0:
            problem = "Must be zero or more." if inclusive else "Must be positive."
        else:
            problem = f"Must be at least {minimum:g}." if inclusive else f"Must be more than {minimum:g}."
        raise SchedulerValidationError(field, value, problem)
