"""Importing every installed app's task modules, so their tasks register on the broker.

Django's ``autodiscover_modules("tasks")`` imports ``<app>.tasks`` only; when ``tasks`` is a
package, tasks declared in its submodules (``<app>/tasks/email.py``) would stay unknown.
"""

import pkgutil
import sys
from importlib import import_module
from types import ModuleType

from django.apps import apps
from django.utils.module_loading import module_has_submodule

TASKS_MODULE = "tasks"


def discover_tasks() -> None:
    """Import each installed app's ``tasks`` module and, if it is a package, all its submodules.

    An app without ``tasks`` is skipped. A task module that fails to import raises an
    ``ImportError`` naming it (the original error is its cause): a broken module is never
    skipped silently. Already imported modules come from ``sys.modules``, so repeating is cheap.
    """
    for app_config in apps.get_app_configs():
        # Checked before importing, as Django's autodiscover does: an ImportError raised inside
        # an existing module is the module's error, not a sign that it is missing.
        if not module_has_submodule(app_config.module, TASKS_MODULE):
            continue
        tasks = _import(f"{app_config.name}.{TASKS_MODULE}")
        path = getattr(tasks, "__path__", None)
        if path is None:  # a plain tasks.py
            continue
        for info in pkgutil.walk_packages(path, prefix=f"{tasks.__name__}.", onerror=_raise_import_error):
            _import(info.name)


def _import(name: str) -> ModuleType:
    try:
        return import_module(name)
    except Exception as error:
        raise ImportError(f"Could not import task module '{name}': {error}", name=name) from error


def _raise_import_error(name: str) -> None:
    # pkgutil.walk_packages calls this inside its ``except`` when importing a subpackage failed;
    # without it, an ImportError there would be swallowed.
    error = sys.exc_info()[1]
    raise ImportError(f"Could not import task module '{name}': {error}", name=name) from error
