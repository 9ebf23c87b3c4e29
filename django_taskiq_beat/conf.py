"""``SchedulerConfig`` and reading ``settings.TASKIQ_BEAT`` into it."""

import uuid
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from taskiq import AsyncBroker
from taskiq.cli.utils import import_object

from django_taskiq_beat.exceptions import SchedulerValidationError
from django_taskiq_beat.payloads import MAX_SECONDS, require_number, require_text
from django_taskiq_beat.triggers import resolve_timezone

BACKFILL_CLAIMANT = "backfill"
"""``claimed_by`` of a run a backfill wrote: its lease has expired already, so the next engine sends it (its
job not paused). Also of one whose send failed: its lease expires when its retry is due."""
BACKFILLED = "backfilled"
"""``reason`` of a run a backfill wrote, kept when an engine claims it."""
WAITING_CLAIMANT = "waiting"
"""``claimed_by`` of a slot its job's ``overlap="buffer_one"`` holds (no lease): sent once the previous run finishes."""
_NOT_ENGINES = (BACKFILL_CLAIMANT, WAITING_CLAIMANT)

SETTINGS_NAME = "TASKIQ_BEAT"
BROKER_KEY = "BROKER"
SCHEDULE_KEY = "SCHEDULE"  # jobs declared in settings: read by ``declarations``, not part of the config
_MAX_DAYS = 36500
_MAX_COUNT = 100_000


def _new_scheduler_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """How the scheduler behaves; every value is checked when the object is built."""

    scheduler_id: str = field(default_factory=_new_scheduler_id)
    sync_interval_seconds: float = 1.0
    idle_sleep_seconds: float = 0.2
    claim_ttl_seconds: int = 60
    claim_ahead_seconds: float = 0.5
    dispatch_retry_seconds: int = 5
    dispatch_retry_max_seconds: int = 300
    dispatch_timeout_seconds: float = 10.0
    dispatch_concurrency: int = 32
    dispatch_batch_size: int = 256
    record_runs: bool = True
    run_history_retention_days: int | None = 30  # None keeps all: a 5-second job adds 17,000 rows a day
    run_cleanup_interval_seconds: float = 3600.0
    completed_job_retention_days: int | None = None
    job_cleanup_interval_seconds: float = 3600.0
    stale_run_seconds: float = 3600.0
    heartbeat_seconds: float = 5.0
    engine_dead_after_seconds: float = 15.0
    default_timezone: str | None = None  # None: settings.TIME_ZONE (UTC without settings)
    import_taskiq_django: bool = False  # sync the rows of taskiq-django's schedule table as jobs

    def __post_init__(self) -> None:
        require_text("scheduler_id", self.scheduler_id, max_length=128, allow_blank=False)
        if self.scheduler_id in _NOT_ENGINES:
            raise SchedulerValidationError(
                "scheduler_id", self.scheduler_id, "Reserved: runs claimed by no engine are marked so; choose another."
            )
        for name in (
            "sync_interval_seconds",
            "idle_sleep_seconds",
            "run_cleanup_interval_seconds",
            "job_cleanup_interval_seconds",
            "dispatch_timeout_seconds",
            "stale_run_seconds",
            "heartbeat_seconds",
            "engine_dead_after_seconds",
        ):
            require_number(name, getattr(self, name), minimum=0, inclusive=False, maximum=MAX_SECONDS)
        for name in ("claim_ttl_seconds", "dispatch_retry_seconds", "dispatch_retry_max_seconds"):
            require_number(name, getattr(self, name), minimum=0, inclusive=False, integer=True, maximum=MAX_SECONDS)
        for name in ("dispatch_concurrency", "dispatch_batch_size"):
            require_number(name, getattr(self, name), minimum=0, inclusive=False, integer=True, maximum=_MAX_COUNT)
        for name in ("run_history_retention_days", "completed_job_retention_days"):
            if getattr(self, name) is not None:
                require_number(name, getattr(self, name), minimum=0, inclusive=True, integer=True, maximum=_MAX_DAYS)
        require_number("claim_ahead_seconds", self.claim_ahead_seconds, minimum=0, inclusive=True, maximum=MAX_SECONDS)
        if self.engine_dead_after_seconds <= self.heartbeat_seconds:
            raise SchedulerValidationError(
                "engine_dead_after_seconds",
                self.engine_dead_after_seconds,
                "Must be longer than heartbeat_seconds (three heartbeats is a good margin).",
            )
        if self.dispatch_retry_max_seconds < self.dispatch_retry_seconds:
            raise SchedulerValidationError(
                "dispatch_retry_max_seconds",
                self.dispatch_retry_max_seconds,
                "Must be at least dispatch_retry_seconds.",
            )
        for name in ("record_runs", "import_taskiq_django"):
            if not isinstance(getattr(self, name), bool):
                raise SchedulerValidationError(name, getattr(self, name), "Must be True or False.")
        if self.default_timezone is None:
            object.__setattr__(self, "default_timezone", _project_time_zone())
        object.__setattr__(self, "default_timezone", resolve_timezone(self.default_timezone, "default_timezone").key)

    @classmethod
    def from_settings(cls) -> "SchedulerConfig":
        """The config in ``settings.TASKIQ_BEAT``; ``DEFAULT_TIMEZONE`` falls back to ``TIME_ZONE``."""
        options = _settings_dict()
        known = {item.name.upper(): item.name for item in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key in (BROKER_KEY, SCHEDULE_KEY):
                continue
            if key not in known:
                raise SchedulerValidationError(
                    f"{SETTINGS_NAME}[{key!r}]",
                    value,
                    f"Unknown setting; known keys: {', '.join([BROKER_KEY, SCHEDULE_KEY, *sorted(known)])}.",
                )
            values[known[key]] = value
        return cls(**values)


def _project_time_zone() -> str:
    return (settings.TIME_ZONE if settings.configured else None) or "UTC"


def _settings_dict() -> dict[str, Any]:
    options = getattr(settings, SETTINGS_NAME, {})
    if not isinstance(options, dict):
        raise SchedulerValidationError(SETTINGS_NAME, options, "Must be a dict.")
    return options


def schedule_setting() -> Any:
    """``TASKIQ_BEAT["SCHEDULE"]``: the jobs declared in settings (checked by ``declarations``)."""
    return _settings_dict().get(SCHEDULE_KEY, {})


def broker_path() -> str | None:
    """``TASKIQ_BEAT["BROKER"]``: the ``module:attribute`` path of the project's broker."""
    return _settings_dict().get(BROKER_KEY)


def load_broker(path: str) -> AsyncBroker:
    """Import the broker at ``module:attribute``; the error names the path and the cause."""
    if not isinstance(path, str) or ":" not in path or path.startswith(":") or path.endswith(":"):
        raise ImproperlyConfigured(f"{SETTINGS_NAME}[{BROKER_KEY!r}]={path!r}: expected 'package.module:broker'.")
    try:
        broker = import_object(path)
    except Exception as exc:  # an import runs arbitrary module code
        raise ImproperlyConfigured(
            f"{SETTINGS_NAME}[{BROKER_KEY!r}]={path!r} does not import: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(broker, AsyncBroker):
        raise ImproperlyConfigured(
            f"{SETTINGS_NAME}[{BROKER_KEY!r}]={path!r} is an object of type {type(broker).__name__},"
            " not a taskiq broker."
        )
    return broker
