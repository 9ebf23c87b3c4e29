"""The throwaway servers' start: a failed start shows the server's log and is tried again."""

import subprocess
from pathlib import Path

import pytest

from tests.servers import running


def test_a_failed_start_prints_the_servers_log_and_tries_again_on_another_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, ports, stopped = tmp_path / "server.log", [], []

    def start(port: int) -> object:
        ports.append(port)
        if len(ports) == 1:
            log.write_text(f"FATAL: could not bind to port {port}: Address already in use\n")
            raise subprocess.CalledProcessError(1, ["pg_ctl"])
        return lambda: stopped.append(port)

    with running(start, log, "PostgreSQL") as port:
        assert port == ports[-1] and len(ports) == 2 and not stopped
    assert stopped == [ports[-1]]
    printed = capsys.readouterr().err
    assert f"PostgreSQL did not start on port {ports[0]} (attempt 1 of 3)" in printed
    assert "Address already in use" in printed


def test_a_server_that_never_starts_fails_after_three_tries(tmp_path: Path) -> None:
    def start(port: int) -> object:
        raise subprocess.CalledProcessError(1, ["mariadbd"])

    with pytest.raises(subprocess.CalledProcessError), running(start, tmp_path / "missing.log", "MariaDB"):
        pass
