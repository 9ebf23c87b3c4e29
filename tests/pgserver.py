"""A throwaway PostgreSQL server for the test suite.

``python -m tests.pgserver COMMAND...`` starts a private cluster on a free loopback
port, runs COMMAND with ``DATABASE_URL`` pointing at it, then removes the cluster.
Without PostgreSQL binaries it says so and exits 0, except under ``CI=true``, where a
missing server is an error.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import as_server_user, find_binary, run_against, running

_SEARCH_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a cluster; yields its ``postgres://`` URL and removes it afterwards."""
    initdb, pg_ctl = find_binary("initdb", _SEARCH_DIRS), find_binary("pg_ctl", _SEARCH_DIRS)
    if not initdb or not pg_ctl:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="taskiq-beat-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")

    def start(port: int) -> Callable[[], object]:
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            as_server_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"], "postgres"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return lambda: subprocess.run(
            as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], "postgres"),
            check=False,
            stdout=subprocess.DEVNULL,
        )

    try:
        subprocess.run(
            as_server_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], "postgres"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with running(start, log, "PostgreSQL") as port:
            yield f"postgres://postgres@127.0.0.1:{port}/postgres"
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_against(postgres_server, "PostgreSQL", sys.argv[1:]))
