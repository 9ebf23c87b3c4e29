"""`make demo` end to end: the demo project's jobs run on SQLite with the in-process broker."""

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import REPO, child_env, wait_until


@pytest.mark.processes
@pytest.mark.database_independent  # the demo's own SQLite file, whatever the pass
def test_demo_runs_jobs_and_fills_the_run_history(tmp_path: Path) -> None:
    env = child_env()
    env.pop("DATABASE_URL", None)
    env["SQLITE_PATH"] = str(tmp_path / "demo.sqlite3")
    manage = [sys.executable, str(REPO / "testproject" / "manage.py")]
    subprocess.run([*manage, "migrate", "--verbosity", "0"], env=env, check=True, timeout=120)
    declared = {**env, "TASKIQ_BEAT_DEMO": "1"}  # as the Makefile's demo target runs the sync and the engine
    synced = subprocess.run([*manage, "taskiq_beat", "sync"], env=declared, check=True, capture_output=True, text=True)
    created = ["settings:answer", "created", "TASKIQ_BEAT['SCHEDULE']['answer']"]
    assert created in [line.split() for line in synced.stdout.splitlines()], synced.stdout
    listing = subprocess.run([*manage, "demo_jobs"], env=env, check=True, capture_output=True, text=True).stdout
    assert "demo.heartbeat" in listing and "demo.greet" in listing and "settings:answer" in listing
    log = tmp_path / "engine.log"
    with open(log, "wb") as output:
        engine = subprocess.Popen([*manage, "run_taskiq_beat"], env=declared, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: log.read_text().count("[demo.heartbeat] tick") >= 2, timeout=30, what="two heartbeats")
        wait_until(lambda: "[demo.add] 20 + 22 = 42" in log.read_text(), timeout=30, what="the job declared in code")
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=30) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
        print(log.read_text())
    with sqlite3.connect(tmp_path / "demo.sqlite3") as database:
        (dispatched,) = database.execute(
            "SELECT count(*) FROM scheduler_run WHERE job_id = 'demo.heartbeat' AND status = 'dispatched'"
        ).fetchone()
    assert dispatched >= 2
