"""A throwaway PostgreSQL server for the test suite.

``python -m tests.pgserver COMMAND...`` starts a private cluster on a free loopback
port, runs COMMAND with ``DATABASE_URL`` pointing at it, then removes the cluster.
Without PostgreSQL binaries it says so and exits 0, except under ``CI=true``, where a
missing server is an error.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SEARCH_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def find_binary(name: str) -> str | None:
    """``name`` from PATH or from Debian's versioned PostgreSQL directories."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SEARCH_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as ``postgres`` then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a cluster; yields its ``postgres://`` URL and removes it afterwards."""
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="taskiq-beat-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    try:
        subprocess.run(
            _as_server_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
            check=True, stdout=subprocess.DEVNULL,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
            check=True, stdout=subprocess.DEVNULL,
        )
        try:
            yield f"postgres://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                _as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                check=False, stdout=subprocess.DEVNULL,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(command: list[str]) -> int:
    try:
        with postgres_server() as url:
            print(f"PostgreSQL test server at {url}", flush=True)
            return subprocess.run(command, env={**os.environ, "DATABASE_URL": url}).returncode
    except FileNotFoundError as exc:
        if os.environ.get("CI") == "true":
            print(f"error: {exc}; CI must run the suite on PostgreSQL", file=sys.stderr)
            return 1
        print(f"note: {exc}; skipping the PostgreSQL run of the suite", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
