"""What the management commands share: the versions they report."""

import platform
from importlib.metadata import PackageNotFoundError, version

import django

from django_taskiq_beat import __version__


def _installed(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def runtime_versions() -> str:
    """``Django 5.2.8, taskiq 0.12.1, Python 3.11.7``: what the scheduler runs on, for bug reports."""
    return f"Django {django.get_version()}, taskiq {_installed('taskiq')}, Python {platform.python_version()}"


def version_text() -> str:
    """``django-taskiq-beat 0.2.0 (Django 5.2.8, taskiq 0.12.1, Python 3.11.7)``: what ``--version`` prints."""
    return f"django-taskiq-beat {__version__} ({runtime_versions()})"
