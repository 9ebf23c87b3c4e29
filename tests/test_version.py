"""The version: written once (pyproject.toml), shown by both commands' ``--version`` and the engine's banner."""

import io
import platform
import re
import tomllib
from importlib.metadata import version

import django
import pytest

from django_taskiq_beat import SchedulerApp, __version__
from django_taskiq_beat.management.commands.run_taskiq_beat import Command as RunCommand
from tests.processes import REPO, manage

RUNTIME = f"Django {django.get_version()}, taskiq {version('taskiq')}, Python {platform.python_version()}"


def test_the_version_is_the_one_pyproject_names() -> None:
    """``__version__`` reads the installed metadata, which pip wrote from pyproject.toml: no second copy."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert __version__ == pyproject["project"]["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)
    assert not re.search(r"^__version__ = ['\"]", (REPO / "django_taskiq_beat" / "__init__.py").read_text(), re.M)


@pytest.mark.parametrize("command", ["run_taskiq_beat", "taskiq_beat"])
def test_version_option_prints_this_package_then_what_it_runs_on(command: str) -> None:
    """What a shell sees: one line, exit 0, and nothing started (Django's default would print its own version)."""
    result = manage(command, "--version", timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"django-taskiq-beat {__version__} ({RUNTIME})\n"


@pytest.mark.django_db
def test_banner_names_the_version_and_what_it_runs_on(app: SchedulerApp) -> None:
    out = io.StringIO()
    RunCommand(stdout=out)._print_banner(app, "tests.process_broker:broker", None)
    lines = out.getvalue().splitlines()
    assert lines[:2] == [f"django-taskiq-beat {__version__} engine", f"  versions : {RUNTIME}"]
    assert (
        lines[2].startswith("  database : ") and lines[3] == "  broker   : InMemoryBroker (tests.process_broker:broker)"
    )
