"""django-taskiq-beat: a database-backed scheduler and beat engine for Taskiq.

Names that need Django's models (``SchedulerApp``, ``get_scheduler_app``) load on
first access, so importing this package is safe before the app registry is ready.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from django_taskiq_beat.chains import (
    CHAIN_ORCHESTRATOR_TASK_NAME,
    ChainAbortedError,
    ChainStep,
    ChainStepFailedError,
    TaskChain,
)
from django_taskiq_beat.conf import SchedulerConfig
from django_taskiq_beat.exceptions import JobNotFoundError, SchedulerValidationError
from django_taskiq_beat.policies import SchedulePolicy
from django_taskiq_beat.triggers import (
    CrontabTrigger,
    ImmediateDispatch,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
)

try:
    __version__ = version("django-taskiq-beat")  # pyproject.toml's, the one place it is written
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from django_taskiq_beat.app import SchedulerApp, get_scheduler_app
    from django_taskiq_beat.engine import SchedulerHealthSnapshot

__all__ = [
    "CHAIN_ORCHESTRATOR_TASK_NAME",
    "ChainAbortedError",
    "ChainStep",
    "ChainStepFailedError",
    "CrontabTrigger",
    "ImmediateDispatch",
    "IntervalTrigger",
    "JobNotFoundError",
    "OneOffSchedule",
    "PeriodicSchedule",
    "SchedulePolicy",
    "SchedulerApp",
    "SchedulerConfig",
    "SchedulerHealthSnapshot",
    "SchedulerValidationError",
    "TaskChain",
    "get_scheduler_app",
]

_LAZY = {
    "SchedulerApp": "django_taskiq_beat.app",
    "get_scheduler_app": "django_taskiq_beat.app",
    "SchedulerHealthSnapshot": "django_taskiq_beat.engine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
