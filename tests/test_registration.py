"""The orchestrator is known wherever the configured broker is used, with no call of the user's."""

import json
import subprocess
import sys

from tests.processes import REPO, child_env

ASK_WORKER = (
    "from taskiq.cli.utils import import_object\n"
    "broker = import_object('{path}')\n"  # what `taskiq worker module:broker` does
    "print('registered' if broker.find_task('taskiq_beat.chain_orchestrator') else 'missing')\n"
)


def run_python(code: str, broker_path: str) -> subprocess.CompletedProcess[str]:
    env = child_env(TASKIQ_BEAT_OPTIONS=json.dumps({"BROKER": broker_path}))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_a_worker_importing_the_broker_module_knows_the_orchestrator() -> None:
    path = "tests.worker_project.broker:broker"
    result = run_python(ASK_WORKER.format(path=path), path)
    assert result.stdout.strip() == "registered", result.stderr


def test_a_django_process_imports_the_same_module_without_setting_django_up_twice() -> None:
    path = "tests.worker_project.broker:broker"
    code = (
        "import django; django.setup()\n"
        "import sys\n"
        "broker = sys.modules['tests.worker_project.broker'].broker\n"
        "print('registered' if broker.find_task('taskiq_beat.chain_orchestrator') else 'missing')\n"
    )
    result = run_python(code, path)
    assert result.stdout.strip() == "registered", result.stderr


def test_a_broker_defined_after_django_setup_is_reported() -> None:
    path = "tests.worker_project.early_setup:broker"
    result = run_python(ASK_WORKER.format(path=path), path)
    assert result.stdout.strip() == "missing"
    assert "chain orchestrator is not registered" in result.stderr and "before calling django.setup()" in result.stderr
