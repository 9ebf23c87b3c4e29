"""The documentation site: `make docs` builds it with --strict, and a broken link or reference fails that build.

Each test builds the docs (a few seconds): the real ones must build without a warning, and a copy
with one mistake injected must fail, naming the mistake. Skipped without the ``docs`` extra, which
``make test``'s virtualenv installs.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import mkdocs  # noqa: F401
    import mkdocstrings  # noqa: F401
except ImportError:
    pytest.skip("needs the docs extra: pip install -e '.[docs]' (make test installs it)", allow_module_level=True)

pytestmark = pytest.mark.database_independent

REPO = Path(__file__).resolve().parent.parent


def build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` as ``make docs`` runs it, from another directory (paths must not depend on it)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(project / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=site.parent,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def copy_of_the_docs(tmp_path: Path) -> Path:
    """mkdocs.yml and docs/ copied, beside links to what they read from the checkout (the package, scripts/)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "mkdocs.yml", project / "mkdocs.yml")
    shutil.copytree(REPO / "docs", project / "docs", ignore=shutil.ignore_patterns("screenshots"))
    (project / "docs" / "screenshots").symlink_to(REPO / "docs" / "screenshots")
    for name in ("django_taskiq_beat", "scripts"):
        (project / name).symlink_to(REPO / name)
    return project


def test_the_docs_build_without_a_warning(tmp_path: Path) -> None:
    result = build(REPO, tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not re.search(r"^(WARNING|ERROR)", output, re.MULTILINE), output
    assert (tmp_path / "site" / "reference" / "app" / "index.html").read_text().count("get_scheduler_app") > 1
    assert "6,203" in (tmp_path / "site" / "load-tests" / "index.html").read_text()  # scripts/README.md, shown


@pytest.mark.parametrize(
    ("mistake", "named"),
    [
        ("A [link](no-such-page.md) to a page that does not exist.", "no-such-page.md"),
        ("A [link](settings.md#no-such-anchor) to an anchor the page lacks.", "no-such-anchor"),
        (
            "A [cross-reference][django_taskiq_beat.NoSuchName] to a Python name that does not exist.",
            "django_taskiq_beat.NoSuchName",
        ),
        ("::: django_taskiq_beat.no_such_thing", "django_taskiq_beat.no_such_thing"),
    ],
    ids=["broken link", "broken anchor", "unknown cross-reference", "missing identifier"],
)
def test_a_mistake_fails_the_build_naming_it(tmp_path: Path, mistake: str, named: str) -> None:
    project = copy_of_the_docs(tmp_path)
    page = project / "docs" / "faq.md"
    page.write_text(page.read_text() + f"\n## Injected by the test\n\n{mistake}\n")
    result = build(project, tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert named in output, output


def test_ci_builds_the_docs_from_a_clean_clone() -> None:
    """``.ci/run`` (a fresh clone) runs ``make docs``, whose virtualenv installs the docs extra and builds strictly."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^docs: \$\(BIN\)/\.installed\n\t.*mkdocs build --strict", makefile, re.MULTILINE)
    assert re.search(r'pip install .*-e "\.\[[^]]*\bdocs\b[^]]*\]"', makefile)
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^[^#\n]*\bmake docs\b", ci, re.MULTILINE)
    assert "strict: true" in (REPO / "mkdocs.yml").read_text()


def test_the_sqlite_pass_runs_what_the_other_databases_leave_out() -> None:
    """The tests marked ``database_independent`` run in one pass of ``make test``: the SQLite one."""

    def pytest_command(target: str) -> str:
        dry_run = ["make", "--dry-run", "--no-print-directory", "--old-file=.venv/bin/.installed", target]
        unset = ("PYTEST_ARGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")  # a caller's `make ... PYTEST_ARGS=...`
        env = {name: value for name, value in os.environ.items() if name not in unset}
        commands = subprocess.run(dry_run, cwd=REPO, capture_output=True, text=True, check=True, env=env).stdout
        return next(line for line in commands.splitlines() if "-m pytest" in line)

    assert ' -m "' not in pytest_command("test-sqlite")
    for other in ("test-postgres", "test-mariadb"):
        assert '-m pytest -m "not database_independent"' in pytest_command(other)
