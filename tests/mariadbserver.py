"""A throwaway MariaDB (or MySQL) server for the test suite.

``python -m tests.mariadbserver COMMAND...`` creates a private data directory, starts
the server on a free loopback port, runs COMMAND with ``DATABASE_URL`` pointing at it,
then removes it. Without the server's binaries it says so and exits 0, except under
``CI=true``, where a missing server is an error. The server keeps its stock settings
(utf8mb4 with a case-insensitive collation, as Debian configures it), so the suite sees
what a project's database does, except its clock, which runs at +05:30.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import find_binary, run_against, running

_SEARCH_DIRS = [Path("/usr/sbin"), Path("/usr/bin")]
_READY_SECONDS = 60
DATABASE = "taskiq_beat"


def _client(port: int) -> list[str]:
    client = find_binary("mariadb", _SEARCH_DIRS) or find_binary("mysql", _SEARCH_DIRS) or "mariadb"
    return [client, "--no-defaults", "--protocol=tcp", "-h", "127.0.0.1", "-P", str(port), "-u", "root"]


def _load_time_zones(port: int) -> None:
    """What docs/deployment.md asks of a MariaDB/MySQL project whose TIME_ZONE is not UTC (Django's date lookups
    convert in the database): the server's time zone tables, from the system's zoneinfo."""
    to_sql = find_binary("mariadb-tzinfo-to-sql", _SEARCH_DIRS) or find_binary("mysql_tzinfo_to_sql", _SEARCH_DIRS)
    if not to_sql:
        raise FileNotFoundError("mariadb-tzinfo-to-sql not found")
    tables = subprocess.run([to_sql, "/usr/share/zoneinfo"], check=True, capture_output=True).stdout
    subprocess.run([*_client(port), "mysql"], input=tables, check=True, stdout=subprocess.DEVNULL)


@contextmanager
def mariadb_server() -> Iterator[str]:
    """Start a server; yields its ``mysql://`` URL and removes its data afterwards."""
    install_db = find_binary("mariadb-install-db", _SEARCH_DIRS) or find_binary("mysql_install_db", _SEARCH_DIRS)
    server = find_binary("mariadbd", _SEARCH_DIRS) or find_binary("mysqld", _SEARCH_DIRS)
    if not install_db or not server:
        raise FileNotFoundError("MariaDB binaries (mariadb-install-db, mariadbd) not found")
    root = Path(tempfile.mkdtemp(prefix="taskiq-beat-mariadb-"))
    data, log = root / "data", root / "server.log"
    user = "mysql" if os.geteuid() == 0 else os.environ.get("USER", "")
    if os.geteuid() == 0:
        shutil.chown(root, "mysql", "mysql")

    def start(port: int) -> Callable[[], object]:
        command = [
            server,
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={root / 'server.sock'}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={root / 'server.pid'}",
            f"--log-error={log}",
            "--character-set-server=utf8mb4",
            "--innodb-flush-log-at-trx-commit=0",
            "--skip-log-bin",
            "--max-connections=300",
            "--innodb-buffer-pool-size=256M",
            # Its clock runs at an offset that is not UTC (and not whole hours): SQL that takes the
            # session's local time for Django's UTC columns fails the suite instead of one region.
            "--default-time-zone=+05:30",
        ]
        if os.geteuid() == 0:
            command.append("--user=mysql")
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _READY_SECONDS
        while subprocess.run([*_client(port), "-e", "SELECT 1"], capture_output=True).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise subprocess.CalledProcessError(process.returncode, command[:1])
            time.sleep(0.2)

        def stop() -> None:
            process.terminate()
            process.wait(timeout=60)

        return stop

    try:
        subprocess.run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *([f"--user={user}"] if user else []),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with running(start, log, "MariaDB") as port:
            subprocess.run([*_client(port), "-e", f"CREATE DATABASE {DATABASE}"], check=True)
            _load_time_zones(port)
            yield f"mysql://root@127.0.0.1:{port}/{DATABASE}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_against(mariadb_server, "MariaDB", sys.argv[1:]))
