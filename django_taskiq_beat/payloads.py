"""Checks on what callers give the scheduler: task names, JSON arguments, text and numbers.

Everything accepted here can be stored on every supported database and sent by taskiq,
so a bad value fails with ``SchedulerValidationError`` before anything is written,
never later as a database or encoding error.
"""

import inspect
import json
from dataclasses import dataclass
from typing import Any

from django_taskiq_beat.exceptions import SchedulerValidationError, short_repr

MAX_SECONDS = 365 * 86400
"""The longest wait, lease or delay a setting may name: longer ones are mistakes, and overflow timedelta."""

MAX_COUNT = 2**31 - 1
"""The largest value of a count column on every backend (PostgreSQL's integer): counters stop there."""

MAX_JSON_DEPTH = 28
"""Arrays and objects nested deeper than this are refused: MariaDB refuses JSON 32 levels deep, and
a chain stores each step's arguments 3 levels down in its own kwargs."""

_KIQ_RESERVED = frozenset({"self"})  # ``kiq(self, *args, **kwargs)`` cannot take these as kwargs
RESERVED_LABELS = frozenset({"scheduler_job_id", "scheduler_run_id", "scheduler_slot", "schedule"})
"""Labels the scheduler writes itself on every message, and taskiq's own ``schedule`` declaration."""
_MAX_LABELS = 100


def text_problem(text: str) -> str | None:
    """Why a string cannot be stored as text on every database, or None."""
    if "\x00" in text:
        return "Must not contain NUL characters."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "Must be valid Unicode (it holds a lone surrogate)."
    return None


def require_text(field: str, value: Any, *, max_length: int | None = None, allow_blank: bool = True) -> str:
    """A string that every database stores as given: no NUL, no lone surrogate, not too long.

    Returns a plain ``str``: a subclass could answer ``len`` or ``in`` otherwise than the text it holds.
    """
    if not isinstance(value, str):
        raise SchedulerValidationError(field, value, "Must be a string.")
    value = str.__str__(value)
    problem = text_problem(value)
    if problem is None and not allow_blank and not value.strip():
        problem = "Must not be empty."
    if problem is None and max_length is not None and len(value) > max_length:
        problem = f"At most {max_length} characters."
    if problem is not None:
        raise SchedulerValidationError(field, value, problem)
    return value


def task_name_of(task: Any, field: str = "task", max_length: int = 255) -> str:
    """The name of a taskiq task object, or the stripped string given."""
    try:
        name = task if isinstance(task, str) else getattr(task, "task_name", None)
    except Exception:  # an object whose task_name raises
        name = None
    if not isinstance(name, str):
        raise SchedulerValidationError(field, task, "Scheduler task must have a task_name.")
    if not name.strip():
        raise SchedulerValidationError(field, task, "Task name must not be empty.")
    return require_text(field, str.__str__(name).strip(), max_length=max_length)


def require_json(value: Any, field: str, expected: type) -> Any:
    """A JSON copy of ``value``, which must be a list/tuple or a dict.

    Object keys must be strings at every depth: JSON would turn ``1`` into ``"1"``, so
    the task would get other keys than were given, and ``{1: .., "1": ..}`` would lose one.
    """
    if value is None:
        return expected()
    if expected is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, expected):
        raise SchedulerValidationError(field, value, f"Must be a JSON {'array' if expected is list else 'object'}.")
    _check_json_tree(value, field)
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise SchedulerValidationError(field, value, f"Must be JSON-serialisable: {exc}") from None


_Path = tuple[Any, ...] | None  # (parent path, key or index): built as a chain, spelt out only for an error


def _spell(path: _Path, field: str) -> str:
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(f"[{short_repr(key)}]")
    text = field + "".join(reversed(parts))
    return text if len(text) <= 100 else f"{field}[...]{text[-80:]}"


def _check_json_tree(value: Any, field: str) -> None:
    """Walk the value without recursion: keys, strings and depth; the problem names the path."""
    stack: list[tuple[Any, _Path, int]] = [(value, None, 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            problem = text_problem(str.__str__(node))
            if problem:
                raise SchedulerValidationError(field, node, f"At {_spell(path, field)}: {problem}")
        elif isinstance(node, dict | list | tuple):
            if depth > MAX_JSON_DEPTH:
                raise SchedulerValidationError(field, value, f"Nested deeper than {MAX_JSON_DEPTH} levels.")
            if isinstance(node, dict):
                for key, item in node.items():
                    if not isinstance(key, str):
                        raise SchedulerValidationError(
                            field,
                            key,
                            f"At {_spell(path, field)}: keys must be strings (JSON would turn this one into a string).",
                        )
                    problem = text_problem(str.__str__(key))
                    if problem:
                        raise SchedulerValidationError(field, key, f"A key at {_spell(path, field)}: {problem}")
                    stack.append((item, (path, key), depth + 1))
                if len({str.__str__(key) for key in node}) < len(node):  # str subclasses that differ as keys
                    raise SchedulerValidationError(
                        field, list(node), f"At {_spell(path, field)}: two keys are the same text."
                    )
            else:
                stack.extend((item, (path, index), depth + 1) for index, item in enumerate(node))


_EXACT_FLOAT_LIMIT = 2**53


def json_identity(value: Any) -> Any:
    """A form of ``value`` that equals another's only if the task would receive the same JSON.

    Python's ``==`` has ``True == 1 == 1.0``; JSON, and the task, do not. Numbers past 2**53
    compare by value, since PostgreSQL's jsonb gives ``1e23`` back as an integer.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        big = abs(value) >= _EXACT_FLOAT_LIMIT and (isinstance(value, int) or value.is_integer())
        if big:
            try:
                return ("number", float(value))
            except OverflowError:  # an integer past the float range: only itself
                return ("number", value)
        return (type(value).__name__, value)
    if isinstance(value, list | tuple):
        return ("list", tuple(json_identity(item) for item in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((key, json_identity(item)) for key, item in value.items())))
    return value  # not JSON (a datetime column): its own equality


def require_callable_with(task: Any, args: list[Any], kwargs: dict[str, Any], field: str) -> None:
    """Refuse arguments the task cannot be called with, now rather than at every slot.

    ``task`` is the broker's decorated task; its function's signature decides. Names that
    ``kiq`` itself takes (``self``) cannot be passed through it at all.
    """
    reserved = _KIQ_RESERVED.intersection(kwargs)
    if reserved:
        raise SchedulerValidationError(
            f"{field}kwargs", sorted(reserved), "taskiq's kiq() cannot pass a keyword argument with this name."
        )
    function = getattr(task, "original_func", None)
    if function is None:
        return
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a callable without a readable signature: taskiq will tell at run time
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise SchedulerValidationError(
            f"{field}kwargs" if kwargs else f"{field}args",
            {"args": args, "kwargs": kwargs},
            f"The task {getattr(task, 'task_name', '?')!r} cannot be called with these arguments: {str(exc)[:200]}.",
        ) from None


def require_labels(value: Any, field: str = "labels") -> dict[str, str | int | float | bool]:
    """Taskiq labels for every message of a job: string keys and scalar values, none of ours.

    Scalars only: every broker carries them in its message headers, where a list or a dict
    would arrive as its string form.
    """
    labels = require_json(value, field, dict)
    if len(labels) > _MAX_LABELS:
        raise SchedulerValidationError(field, value, f"At most {_MAX_LABELS} labels.")
    for key, item in labels.items():
        if key in RESERVED_LABELS:
            raise SchedulerValidationError(
                f"{field}[{key!r}]", item, "This label is the scheduler's own; choose another name."
            )
        if not key.strip() or isinstance(item, list | dict) or item is None:
            raise SchedulerValidationError(
                f"{field}[{key!r}]", item, "Labels need a non-empty name and a string, number or boolean value."
            )
    return labels


@dataclass(frozen=True)
class TaskCall:
    """What a job sends: a task name, its JSON arguments and taskiq labels, plus stored-only metadata."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    labels: dict[str, Any]


def require_number(
    field: str, value: Any, *, minimum: float, inclusive: bool, integer: bool = False, maximum: float | None = None
) -> None:
    """A finite number (an int if ``integer``) at least (``inclusive``) or above ``minimum``, at most ``maximum``."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (isinstance(value, float) and value != value):
        raise SchedulerValidationError(field, value, "Must be an integer." if integer else "Must be a number.")
    if value in (float("inf"), float("-inf")):
        raise SchedulerValidationError(field, value, "Must be a finite number.")
    if value < minimum or (value == minimum and not inclusive):
        if minimum == 0:
            problem = "Must be zero or more." if inclusive else "Must be positive."
        else:
            problem = f"Must be at least {minimum:g}." if inclusive else f"Must be more than {minimum:g}."
        raise SchedulerValidationError(field, value, problem)
    if maximum is not None and value > maximum:
        raise SchedulerValidationError(field, value, f"Must be at most {maximum:g}.")
