"""django-taskiq-beat: a database-backed scheduler and beat engine for Taskiq.

Names that need Django's models (``SchedulerApp``, ``get_scheduler_app``) load on
first access, so importing this package is safe before the app registry is ready.
"""

from typing import TYPE_CHECKING, Any

from django_taskiq_beat.conf import SchedulerConfig
from django_taskiq_beat.exceptions import JobNotFoundError, SchedulerValidationError
from django_taskiq_beat.triggers import (
    CrontabTrigger,
    ImmediateDispatch,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
)

if TYPE_CHECKING:
    from django_taskiq_beat.app import SchedulerApp, get_scheduler_app

__all__ = [
    "CrontabTrigger",
    "ImmediateDispatch",
    "IntervalTrigger",
    "JobNotFoundError",
    "OneOffSchedule",
    "PeriodicSchedule",
    "SchedulerApp",
    "SchedulerConfig",
    "SchedulerValidationError",
    "get_scheduler_app",
]

_LAZY = {"SchedulerApp", "get_scheduler_app"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from django_taskiq_beat import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
