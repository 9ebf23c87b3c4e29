"""What the throwaway database servers of the suite share: a free port, starting with retries, the runner.

``tests.pgserver`` and ``tests.mariadbserver`` each start a private server on a free
loopback port and run a command with ``DATABASE_URL`` pointing at it.
"""

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

_STARTS = 3  # a port taken between choosing it and binding it is worth another try


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_binary(name: str, search_dirs: list[Path]) -> str | None:
    """``name`` from PATH or from one of ``search_dirs``."""
    found = shutil.which(name)
    if found:
        return found
    for directory in search_dirs:
        if (directory / name).exists():
            return str(directory / name)
    return None


def as_server_user(command: list[str], user: str) -> list[str]:
    """Database servers refuse to run as root: run them as their own system user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", user, "--", *command]


@contextmanager
def running(start: Callable[[int], Callable[[], object]], log: Path, name: str) -> Iterator[int]:
    """``start(port)`` on a free port, yielding the port; ``start`` returns how to stop the server.

    A failed start prints the server's log and tries another port: the log is the only
    place that says why, and a port taken between choosing and binding it is worth a retry.
    """
    for attempt in range(1, _STARTS + 1):
        port = free_port()
        try:
            stop = start(port)
        except subprocess.CalledProcessError as exc:
            text = log.read_text(errors="replace") if log.exists() else "(no log written)\n"
            print(
                f"{name} did not start on port {port} (attempt {attempt} of {_STARTS}): {exc}\n"
                f"--- {log} ---\n{text}--- end of log ---",
                file=sys.stderr,
                flush=True,
            )
            if attempt == _STARTS:
                raise
            continue
        try:
            yield port
        finally:
            stop()
        return


def run_against(server: Callable[[], AbstractContextManager[str]], name: str, command: list[str]) -> int:
    """Run ``command`` with ``DATABASE_URL`` set to a fresh ``server()``; without its binaries, say so
    and succeed, except under ``CI=true``, where a missing server is an error."""
    try:
        with server() as url:
            print(f"{name} test server at {url}", flush=True)
            return subprocess.run(command, env={**os.environ, "DATABASE_URL": url}).returncode
    except FileNotFoundError as exc:
        if os.environ.get("CI") == "true":
            print(f"error: {exc}; CI must run the suite on {name}", file=sys.stderr)
            return 1
        print(f"note: {exc}; skipping the {name} run of the suite", file=sys.stderr)
        return 0
