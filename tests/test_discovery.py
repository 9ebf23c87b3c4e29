"""Task discovery: an app's tasks.py, the submodules of a tasks package, and broken task modules."""

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from importlib import import_module
from pathlib import Path

import pytest
from django.test import modify_settings
from taskiq import InMemoryBroker

from django_taskiq_beat.discovery import discover_tasks
from django_taskiq_beat.sending import UnknownTaskError, find_task

MakeApp = Callable[[dict[str, str]], str]


def task_module(task_name: str) -> str:
    """A task module registering ``task_name`` on the test broker, which ``make_app`` puts on the app."""
    return f"from {{app}} import broker\n\n@broker.task(task_name={task_name!r})\ndef task() -> None:\n    pass\n"


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: InMemoryBroker) -> Iterator[MakeApp]:
    """``make_app({"tasks/email.py": source})`` writes an installed app with those files; returns its name.

    Its modules and the tasks they registered are gone after the test.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []
    tasks_before = set(broker.local_task_registry)

    with ExitStack() as stack:

        def make(files: dict[str, str]) -> str:
            name = f"discovery_app_{uuid.uuid4().hex[:12]}"
            names.append(name)
            (tmp_path / name).mkdir()
            (tmp_path / name / "__init__.py").write_text("")
            for relative, source in files.items():
                path = tmp_path / name / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(source.replace("{app}", name))
            import_module(name).broker = broker  # type: ignore[attr-defined]
            stack.enter_context(modify_settings(INSTALLED_APPS={"append": name}))
            return name

        yield make

    for module in [m for m in sys.modules if any(m == n or m.startswith(f"{n}.") for n in names)]:
        del sys.modules[module]
    for task_name in set(broker.local_task_registry) - tasks_before:
        del broker.local_task_registry[task_name]


def test_tasks_in_submodules_of_a_tasks_package_are_found(make_app: MakeApp, broker: InMemoryBroker) -> None:
    app = make_app(
        {
            "tasks/__init__.py": "",
            "tasks/email.py": task_module("app.email"),
            "tasks/nested/__init__.py": "",
            "tasks/nested/reports.py": task_module("app.reports"),
        }
    )
    assert find_task(broker, "app.email").task_name == "app.email"
    assert find_task(broker, "app.reports").task_name == "app.reports"
    assert sys.modules[f"{app}.tasks.nested.reports"].task is broker.find_task("app.reports")  # type: ignore[attr-defined]


def test_repeated_discovery_imports_nothing_again(make_app: MakeApp, broker: InMemoryBroker) -> None:
    app = make_app({"tasks/__init__.py": "", "tasks/email.py": task_module("app.email")})
    discover_tasks()
    email = sys.modules[f"{app}.tasks.email"]
    discover_tasks()
    assert sys.modules[f"{app}.tasks.email"] is email and broker.find_task("app.email") is email.task  # type: ignore[attr-defined]


def test_a_plain_tasks_module_is_still_found(make_app: MakeApp, broker: InMemoryBroker) -> None:
    make_app({"tasks.py": task_module("app.plain")})
    assert find_task(broker, "app.plain").task_name == "app.plain"


def test_an_app_without_tasks_is_skipped(make_app: MakeApp, broker: InMemoryBroker) -> None:
    app = make_app({"models.py": ""})
    with pytest.raises(UnknownTaskError, match=r"Task 'app.none' is not registered"):
        find_task(broker, "app.none")
    assert f"{app}.tasks" not in sys.modules


@pytest.mark.parametrize(
    ("path", "source", "cause"),
    [
        ("tasks/broken.py", "def broken(:\n", SyntaxError),
        ("tasks/broken.py", "import no_such_module_for_discovery_tests\n", ModuleNotFoundError),
        ("tasks/nested/broken.py", "raise RuntimeError('boom')\n", RuntimeError),
        ("tasks/broken/__init__.py", "from . import missing_sibling\n", ImportError),
    ],
    ids=["syntax-error", "missing-import", "nested-runtime-error", "broken-subpackage"],
)
def test_a_broken_submodule_raises_naming_it(
    make_app: MakeApp, broker: InMemoryBroker, path: str, source: str, cause: type[Exception]
) -> None:
    app = make_app(
        {
            "tasks/__init__.py": "",
            "tasks/nested/__init__.py": "",
            "tasks/email.py": task_module("app.email"),
            path: source,
        }
    )
    module = f"{app}." + path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    with pytest.raises(ImportError, match=re.escape(f"Could not import task module '{module}'")) as caught:
        find_task(broker, "app.email")  # a healthy module's task too: no broken module is skipped
    assert caught.value.name == module and isinstance(caught.value.__cause__, cause)


def test_an_import_error_inside_an_existing_tasks_module_propagates(make_app: MakeApp, broker: InMemoryBroker) -> None:
    app = make_app({"tasks.py": "import no_such_module_for_discovery_tests\n"})
    with pytest.raises(ImportError, match=re.escape(f"Could not import task module '{app}.tasks'")) as caught:
        discover_tasks()
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    assert caught.value.__cause__.name == "no_such_module_for_discovery_tests"
