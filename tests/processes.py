"""Engine processes for the tests: real ``manage.py run_taskiq_beat`` on the test database."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import connection

from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent


def child_env(database_user: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child process that uses the database the tests use (as ``database_user``)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings", "PYTHONPATH": str(REPO)}
    settings = connection.settings_dict
    for name in ("DATABASE_URL", "REDIS_URL"):  # the shell's, from "Run it for real", never reach a test's child
        env.pop(name, None)
    env.update(extra)
    if connection.vendor == "sqlite":
        env["SQLITE_PATH"] = str(settings["NAME"])
    else:
        user = database_user or settings["USER"]
        scheme = "postgres" if connection.vendor == "postgresql" else "mysql"
        env["DATABASE_URL"] = (
            f"{scheme}://{user}:{settings['PASSWORD']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
        )
    return env


def manage(*arguments: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "testproject" / "manage.py"), *arguments],
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class EngineProcess:
    """One ``run_taskiq_beat`` process on the test database; its output goes to a log file.

    The broker is the counting test broker unless another ``module:attribute`` is given;
    ``env`` adds variables (the test broker's ``TEST_SINK``, a ``REDIS_URL``). On PostgreSQL
    it logs in as ``database_user`` if given, a role a test can cut off alone.
    """

    def __init__(
        self,
        name: str,
        log_dir: Path,
        options: dict[str, Any],
        broker: str = "tests.process_broker:broker",
        arguments: tuple[str, ...] = (),
        database_user: str | None = None,
        **env: str,
    ) -> None:
        self.name = name
        self.arguments = ("--broker", broker, *arguments)
        self.log_path = log_dir / f"{name}.log"
        self.env = child_env(
            database_user,
            DB_APPLICATION_NAME=name,
            TASKIQ_BEAT_OPTIONS=json.dumps({"SCHEDULER_ID": name, **options}),
            **env,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "EngineProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "testproject" / "manage.py"), "run_taskiq_beat", *self.arguments],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )
        wait_until(lambda: "Scheduler engine started." in self.log(), timeout=30, what=f"{self.name} to start")
        return self

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, with an append-only file in ``data_dir``.

    The file lets the server be stopped and started again with its streams and consumer
    groups intact, as a production Redis with persistence comes back after a restart.
    """

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "RedisServer":
        with open(self.data_dir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.data_dir),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._answers_or_exited, timeout=20, what="redis-server")
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers_or_exited(self) -> bool:
        assert self.process is not None
        return self.process.poll() is not None or _answers(self.port)

    def stop(self) -> None:
        """Shut the server down as ``systemctl stop`` would: clients see their connections close."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextmanager
def redis_server(data_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(data_dir).start()
    try:
        yield server
    finally:
        server.stop()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection_:
            connection_.sendall(b"PING\r\n")
            return connection_.recv(16).startswith(b"+PONG")
    except OSError:
        return False
