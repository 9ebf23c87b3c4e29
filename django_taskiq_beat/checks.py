"""System checks: ``manage.py check`` reports a bad ``TASKIQ_BEAT`` before anything runs."""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from django_taskiq_beat.conf import SETTINGS_NAME, SchedulerConfig, broker_path, load_broker
from django_taskiq_beat.exceptions import SchedulerValidationError

_HINT = f"See the settings reference in django-taskiq-beat's README ({SETTINGS_NAME})."
_SCHEDULE_HINT = "See 'Declaring schedules in code' in django-taskiq-beat's README."


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if not settings.USE_TZ:
        messages.append(Error(
            "django_taskiq_beat needs USE_TZ = True: every schedule is kept in timezone-aware datetimes.",
            hint="Set USE_TZ = True in your settings.", id="django_taskiq_beat.E004",
        ))
    try:
        SchedulerConfig.from_settings()
    except SchedulerValidationError as exc:
        check_id = "django_taskiq_beat.E002" if exc.field == "default_timezone" else "django_taskiq_beat.E001"
        what = "DEFAULT_TIMEZONE (or TIME_ZONE)" if exc.field == "default_timezone" else SETTINGS_NAME
        messages.append(Error(f"Invalid {what}: {exc}", hint=_HINT, id=check_id))
    try:
        path = broker_path()
    except SchedulerValidationError:
        return messages  # already reported as E001
    if not path:
        messages.append(Warning(
            f"{SETTINGS_NAME}['BROKER'] is not set: get_scheduler_app() and run_taskiq_beat need it.",
            hint="Set it to the 'package.module:broker' path of your taskiq broker.",
            id="django_taskiq_beat.W001",
        ))
        return messages
    try:
        load_broker(path)
    except ImproperlyConfigured as exc:
        messages.append(Error(str(exc), hint=_HINT, id="django_taskiq_beat.E003"))
    return messages


_left_to_the_sync: ContextVar[bool] = ContextVar("declared_schedules_left_to_the_sync", default=False)


@contextmanager
def declared_schedules_left_to_the_sync() -> Iterator[None]:
    """The system checks skip declared schedules inside: for this app's commands, which sync (or may
    need to run) while one declaration is wrong. The sync reports a bad entry and leaves its job as
    it was; ``manage.py check`` still reports it."""
    token = _left_to_the_sync.set(True)
    try:
        yield
    finally:
        _left_to_the_sync.reset(token)


class DeclaredSchedulesLeftToTheSync:
    """For this app's management commands: their system checks skip declared schedules, so one bad
    entry costs its job, not the command (their sync reports it)."""

    def check(self, *args: Any, **kwargs: Any) -> None:
        with declared_schedules_left_to_the_sync():
            super().check(*args, **kwargs)  # type: ignore[misc]


@register(Tags.compatibility)
def check_declared_schedules(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every job declared in settings or in a task's ``schedule`` label, checked as the API checks it.

    taskiq-django's rows are data, not code: the sync reports a bad row without stopping anything.
    """
    from django_taskiq_beat.app import get_scheduler_app
    from django_taskiq_beat.declarations import TASKIQ_DJANGO_APP, TASKIQ_DJANGO_MISSING
    from django_taskiq_beat.sync import declared_in_code

    if _left_to_the_sync.get():
        return []
    try:
        app = get_scheduler_app()
    except (ImproperlyConfigured, SchedulerValidationError):
        return []  # reported by check_settings
    messages: list[CheckMessage] = [
        Error(str(error), hint=_SCHEDULE_HINT, id="django_taskiq_beat.E005")
        for source in declared_in_code(app) for error in source.errors
    ]
    if app.config.import_taskiq_django and not apps.is_installed(TASKIQ_DJANGO_APP):
        messages.append(Error(
            f"{SETTINGS_NAME}['IMPORT_TASKIQ_DJANGO'] is True, but {TASKIQ_DJANGO_MISSING}",
            hint=_HINT, id="django_taskiq_beat.E006",
        ))
    return messages
