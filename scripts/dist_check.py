"""``make dist-check``: the distribution as a user gets it, built, checked, installed and run.

1. ``python -m build``: the sdist, then the wheel built from that sdist (so the sdist is enough
   to build it); ``twine check --strict`` on both, as PyPI would read them.
2. The wheel holds every file of the package in the checkout (migrations, templates, static
   files, ``py.typed``) and nothing else; the sdist holds the package, the test suite and its
   project, README, LICENSE and CHANGELOG.
3. The wheel (not an editable install) goes into a new virtualenv, and a throwaway Django
   project in a temporary directory (SQLite, taskiq's InMemoryBroker), run from there so the
   checkout is not on ``sys.path``: ``migrate``, ``check``, ``run_taskiq_beat --version``, a job
   created through the public API, ``run_taskiq_beat`` as a process until the job's task has run
   and its run is recorded (dispatched, succeeded), the admin's pages, then SIGTERM: exit 0.

Needs the 'release' extra (build, twine) in the Python that runs it, and PyPI for the build's
setuptools and the wheel's dependencies. ``--keep`` keeps the temporary directory.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "django_taskiq_beat"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# The environment of every child: nothing that would point it at the checkout or a shell's services.
_DROPPED = ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV", "PYTHONHOME")
CHILD_ENV = {name: value for name, value in os.environ.items() if name not in _DROPPED}
CHILD_ENV.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")


class CheckFailed(Exception):
    pass


_STARTED = time.monotonic()


def step(title: str) -> None:
    print(f"-- {time.monotonic() - _STARTED:5.1f} s  {title}", flush=True)


def require(condition: bool, problem: str) -> None:
    if not condition:
        raise CheckFailed(problem)


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> str:
    """Run ``command``; its output, or CheckFailed with the output when it fails."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(map(str, command))} exited {result.returncode}\n{result.stdout}{result.stderr}")
    return result.stdout


def checkout_files(folder: str) -> set[str]:
    """The files under ``folder`` that git tracks (without git, as in an unpacked sdist: all but bytecode)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", folder],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {
            path.relative_to(REPO).as_posix()
            for path in (REPO / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
        }
    return {name for name in listed.split("\0") if name}


def package_files() -> set[str]:
    """Every file of the package, as a path inside the wheel."""
    return checkout_files(PACKAGE)


def source_files(*folders: str) -> set[str]:
    return {name for folder in folders for name in checkout_files(folder) if name.endswith(".py")}


# -- 1. build and twine ---------------------------------------------------------------------------------------


def build(dist: Path) -> tuple[Path, Path]:
    step("python -m build (the sdist, then the wheel from it)")
    run(sys.executable, "-m", "build", "--outdir", dist, REPO, cwd=REPO)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    require(wheel.name == f"{PACKAGE}-{VERSION}-py3-none-any.whl", f"unexpected wheel name {wheel.name}")
    step(f"twine check --strict {sdist.name} {wheel.name}")
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel, cwd=REPO)
    return sdist, wheel


# -- 2. what they hold --------------------------------------------------------------------------------------------


def check_wheel(wheel: Path) -> None:
    step("the wheel holds the whole package: migrations, templates, static files, py.typed")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"{PACKAGE}-{VERSION}.dist-info/METADATA").decode()
    expected = package_files()
    missing = sorted(expected - names)
    require(not missing, f"files of the package missing from the wheel: {missing}")
    kinds = {
        "migrations": [name for name in expected if name.startswith(f"{PACKAGE}/migrations/0")],
        "templates": [name for name in expected if name.startswith(f"{PACKAGE}/templates/")],
        "static files": [name for name in expected if name.startswith(f"{PACKAGE}/static/")],
        "py.typed": [name for name in expected if name == f"{PACKAGE}/py.typed"],
    }
    require(all(kinds[kind] for kind in ("migrations", "templates", "py.typed")), f"the checkout lacks some: {kinds}")
    print(
        "   "
        + ", ".join(f"{len(files)} {kind}" for kind, files in kinds.items() if files)
        + ("" if kinds["static files"] else "; no static files (the package has none)")
    )
    strays = sorted(name for name in names - expected if not name.startswith(f"{PACKAGE}-{VERSION}.dist-info/"))
    require(not strays, f"files in the wheel that are not the package's: {strays}")
    require(f"{PACKAGE}-{VERSION}.dist-info/licenses/LICENSE" in names, "no LICENSE in the wheel's metadata")
    for line in (f"Version: {VERSION}", "License-Expression: MIT", "Requires-Dist: django>=5.2"):
        require(line in metadata.splitlines(), f"the wheel's METADATA lacks {line!r}")


def check_sdist(sdist: Path) -> None:
    step("the sdist holds the package, the tests and their project, README, LICENSE, CHANGELOG")
    top = f"{PACKAGE}-{VERSION}"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(f"{top}/") for name in archive.getnames()}
    expected = (
        package_files()
        | source_files("tests", "testproject")
        | {"README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "MANIFEST.in", "Makefile", "tox.ini"}
    )
    missing = sorted(expected - names)
    require(not missing, f"files missing from the sdist: {missing}")
    print(f"   {len(source_files('tests'))} test modules, {len(source_files('testproject'))} project modules")


# -- 3. installed and run ------------------------------------------------------------------------------------------

SETTINGS = """\
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "dist-check"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
    "django_taskiq_beat",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "smoke.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3",
    "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;"},
}}
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TASKIQ_BEAT = {"BROKER": "smoke.tasks:broker", "SYNC_INTERVAL_SECONDS": 0.5}
"""

TASKS = """\
from pathlib import Path

from taskiq import InMemoryBroker

from django_taskiq_beat.middleware import RunOutcomeMiddleware

SENT = Path(__file__).resolve().parent.parent / "sent.txt"
broker = InMemoryBroker().with_middlewares(RunOutcomeMiddleware())


@broker.task(task_name="smoke.record")
def record(text: str) -> str:
    with SENT.open("a") as sent:
        sent.write(text + "\\n")
    return text
"""

URLS = """\
from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
"""

MANAGE = """\
import os
import sys

from django.core.management import execute_from_command_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smoke.settings")
execute_from_command_line(sys.argv)
"""

# Run by `manage.py shell -c`: the public API, as a project would call it.
CREATE_JOB = """\
import django_taskiq_beat
from django_taskiq_beat import IntervalTrigger, PeriodicSchedule, get_scheduler_app

job = get_scheduler_app().single(task="smoke.record", args=["sent from the wheel"]).schedule(
    PeriodicSchedule(interval=IntervalTrigger(seconds=1)), job_id="smoke", name="Smoke test",
)
print(job.id, django_taskiq_beat.__version__, django_taskiq_beat.__file__)
"""

ADMIN_PAGES = """\
from django.contrib.auth.models import User
from django.template.loader import get_template
from django.test import Client
from django.urls import reverse

client = Client()
client.force_login(User.objects.create_superuser("smoke", "smoke@example.com", "smoke"))
for name in ("schedulerjob", "schedulerrun", "schedulerengine", "schedulerdashboard"):
    response = client.get(reverse(f"admin:django_taskiq_beat_{name}_changelist"))
    print(name, response.status_code)
print("template", get_template("admin/django_taskiq_beat/dashboard.html").origin.name)
"""


def make_project(root: Path) -> Path:
    project = root / "project"
    (project / "smoke").mkdir(parents=True)
    for name, text in {
        "smoke/__init__.py": "",
        "smoke/settings.py": SETTINGS,
        "smoke/tasks.py": TASKS,
        "smoke/urls.py": URLS,
        "manage.py": MANAGE,
    }.items():
        (project / name).write_text(text)
    return project


def install(root: Path, wheel: Path) -> Path:
    step("a new virtualenv with the wheel installed (not editable)")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=root)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel, cwd=root)
    return python


def wait_for(condition: Callable[[], bool], timeout: float, what: str, engine: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        require(engine.poll() is None, f"run_taskiq_beat exited ({engine.returncode}) before {what}")
        require(time.monotonic() < deadline, f"no {what} within {timeout:g} s")
        time.sleep(0.25)


def smoke_test(python: Path, project: Path) -> None:
    def manage(*arguments: str) -> str:
        return run(python, "manage.py", *arguments, cwd=project, timeout=120)

    step("migrate, check")
    manage("migrate", "--verbosity", "0")
    manage("check", "--database", "default", "--fail-level", "WARNING")

    step("run_taskiq_beat --version")
    version = manage("run_taskiq_beat", "--version").strip()
    require(version.startswith(f"django-taskiq-beat {VERSION} (Django "), f"--version printed {version!r}")
    print(f"   {version}")

    step("a job through the public API (single(...).schedule(...))")
    job_id, imported_version, module_file = manage("shell", "--verbosity", "0", "-c", CREATE_JOB).split()
    site_packages = python.parent.parent / "lib"
    require(imported_version == VERSION, f"__version__ is {imported_version}")
    require(Path(module_file).is_relative_to(site_packages), f"imported from {module_file}, not the virtualenv")
    require(not Path(module_file).is_relative_to(REPO), "imported from the checkout")

    step("run_taskiq_beat until the job's task has run and its run is recorded, then SIGTERM")
    sent, log_path = project / "sent.txt", project / "engine.log"
    with log_path.open("wb") as log:
        engine = subprocess.Popen(
            [str(python), "manage.py", "run_taskiq_beat"],
            cwd=project,
            env=CHILD_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: sent.exists() and "sent from the wheel" in sent.read_text(), 30, "task run", engine)

        def recorded() -> bool:
            runs = json.loads(manage("taskiq_beat", "show", job_id, "--json"))["recent_runs"]
            return any(run["status"] == "dispatched" and run["outcome"] == "succeeded" for run in runs)

        wait_for(recorded, 30, "run recorded as dispatched and succeeded", engine)
        print("   " + manage("taskiq_beat", "health").strip().replace("\n", "\n   "))
        engine.send_signal(signal.SIGTERM)
        code = engine.wait(timeout=30)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    log_text = log_path.read_text()
    require(code == 0, f"run_taskiq_beat exited {code} after SIGTERM\n{log_text}")
    require(
        f"django-taskiq-beat {VERSION} engine" in log_text and "run_taskiq_beat stopped." in log_text,
        f"the engine's banner or its stop line is missing\n{log_text}",
    )
    print(f"   exit 0; the task ran {len(sent.read_text().splitlines())} time(s)")

    step("the admin's pages from the installed templates")
    pages = manage("shell", "--verbosity", "0", "-c", ADMIN_PAGES).splitlines()
    require(all(line.endswith(" 200") for line in pages[:-1]), f"admin pages: {pages}")
    template = pages[-1].removeprefix("template ")
    require(Path(template).is_relative_to(site_packages), f"the dashboard template came from {template}")
    print("   " + ", ".join(pages[:-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory (printed).")
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dist-check-"))
    try:
        sdist, wheel = build(root / "dist")
        check_wheel(wheel)
        check_sdist(sdist)
        python = install(root, wheel)
        smoke_test(python, make_project(root))
    except (CheckFailed, subprocess.TimeoutExpired) as problem:
        print(f"dist-check FAILED: {problem}", file=sys.stderr)
        return 1
    finally:
        if options.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"dist-check passed: {wheel.name} and {sdist.name} in {time.monotonic() - _STARTED:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
