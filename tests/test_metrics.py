"""Prometheus metrics: ``run_taskiq_beat --metrics-port``, scraped over HTTP as Prometheus does.

A real engine process is scraped during a burst; the collector is scraped in-process while
the database fails; the command's errors (no prometheus-client, a port in use) are checked.
"""

import logging
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from django_taskiq_beat import (
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulerApp,
    SchedulerConfig,
    __version__,
)
from django_taskiq_beat.metrics import MetricsServer
from django_taskiq_beat.models import JobState, RunStatus, SchedulerJob, SchedulerRun
from tests.process_broker import broker as process_broker
from tests.processes import EngineProcess, manage, wait_until
from tests.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus's text exposition format
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, accept: str | None = None) -> tuple[str, Samples]:
    """The content type and every sample, as ``(name, labels) -> value``."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return content_type, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def database_states() -> dict[str, int]:
    return {state.value: SchedulerJob.objects.in_state(state).count() for state in JobState}


def scraped_states(samples: Samples) -> dict[str, int]:
    return {state.value: int(value(samples, "taskiq_beat_jobs", state=state.value)) for state in JobState}


# -- a real engine process, scraped during a burst ------------------------------------------------------


@pytest.fixture
def process_app() -> SchedulerApp:
    """Schedules the engine process's task (``test.record``, on the broker the process loads)."""
    return SchedulerApp(broker=process_broker, config=SchedulerConfig(default_timezone="UTC"))


def test_an_engine_process_serves_its_metrics_during_a_burst(tmp_path: Path, process_app: SchedulerApp) -> None:
    app = process_app
    burst = 200
    sink = tmp_path / "sink.txt"
    sink.touch()
    port = free_port()
    engine = EngineProcess(
        "engine-metrics",
        tmp_path,
        # Batches of 10, at most 8 claimed at once, sent 2 at a time at 20 ms each: two seconds of sending,
        # with slots left due and unclaimed while the first batches go out.
        {"SYNC_INTERVAL_SECONDS": 0.5, "DISPATCH_BATCH_SIZE": 10, "DISPATCH_CONCURRENCY": 2},
        arguments=("--metrics-host", "127.0.0.1", "--metrics-port", str(port)),
        TEST_SINK=str(sink),
        TEST_SEND_DELAY="0.02",
    )
    paused = app.single(task="test.record").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))
    app.pause(paused.id)
    failing = app.single(task="test.record").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))
    SchedulerJob.objects.filter(pk=failing.pk).update(consecutive_failures=2)
    app.single(task="test.record").schedule(PeriodicSchedule(interval=IntervalTrigger(hours=1)))  # active
    try:
        engine.start()
        url = f"http://127.0.0.1:{port}/metrics"
        content_type, before = scrape(url)
        assert content_type == TEXT_FORMAT
        assert value(before, "taskiq_beat_dispatched_total") == 0
        assert value(before, "taskiq_beat_dispatch_lag_seconds_count") == 0
        assert value(before, "taskiq_beat_due_jobs") == 0
        assert scraped_states(before) == database_states() == {"active": 1, "failing": 1, "paused": 1, "finished": 0}
        assert value(before, "taskiq_beat_engine_info", engine_id=engine.name, version=__version__) == 1

        due = OneOffSchedule(run_at=timezone.now())
        with transaction.atomic():
            for _ in range(burst):
                app.single(task="test.record").schedule(due)
        during: list[Samples] = []
        while not during or value(during[-1], "taskiq_beat_dispatched_total") < burst:
            assert len(during) < 400, "the burst did not end within 20 s"
            during.append(scrape(url)[1])
            time.sleep(0.05)
        wait_until(
            lambda: not SchedulerRun.objects.filter(status=RunStatus.PENDING).exists(),
            timeout=10,
            what="every send to be recorded",
        )
        _, after = scrape(url)
        engine.signal(signal.SIGTERM)
        assert engine.wait() == 0, "the metrics server held up a clean stop"
        with pytest.raises(urllib.error.URLError):
            scrape(url)
    finally:
        engine.stop()
        print(engine.log())

    dispatched = [value(samples, "taskiq_beat_dispatched_total") for samples in during]
    due_jobs = [value(samples, "taskiq_beat_due_jobs") for samples in during]
    assert dispatched == sorted(dispatched), "a counter went down"
    assert any(0 < count < burst for count in dispatched), "no scrape fell inside the burst"
    assert max(due_jobs) > 0 and due_jobs[-1] < max(due_jobs), "due_jobs did not drop as the burst went out"
    assert value(after, "taskiq_beat_due_jobs") == 0
    assert value(after, "taskiq_beat_dispatched_total") == burst
    assert value(after, "taskiq_beat_dispatch_failures_total") == 0
    assert value(after, "taskiq_beat_dispatch_lag_seconds_count") == burst
    assert value(after, "taskiq_beat_dispatch_lag_seconds_bucket", le="+Inf") == burst
    assert len(sink.read_text().splitlines()) == burst
    assert scraped_states(after) == database_states() == {"active": 1, "failing": 1, "paused": 1, "finished": burst}
    # The lags the engine observed are those it stored: the histogram's sum is the sum over the runs.
    stored = sum((run.dispatched_at - run.scheduled_for).total_seconds() for run in SchedulerRun.objects.all())
    assert value(after, "taskiq_beat_dispatch_lag_seconds_sum") == pytest.approx(stored, abs=1e-3)
    assert f"metrics  : http://127.0.0.1:{port}/metrics" in engine.log()


def test_a_port_in_use_stops_the_command_with_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = manage(
            "run_taskiq_beat",
            "--broker",
            "tests.process_broker:broker",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(port),
        )
    assert result.returncode == 1
    assert f"CommandError: Cannot serve metrics on 127.0.0.1:{port}: Address already in use." in result.stderr
    assert "Scheduler engine started." not in result.stdout + result.stderr


# -- the command without prometheus-client, or with a bad port ------------------------------------------


def test_metrics_port_without_prometheus_client_asks_for_the_metrics_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what an environment without it imports
    monkeypatch.delitem(sys.modules, "django_taskiq_beat.metrics")
    with pytest.raises(CommandError, match=r"needs prometheus-client: install the 'metrics' extra"):
        call_command("run_taskiq_beat", "--metrics-port", "9464")


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_a_metrics_port_that_is_no_port_is_refused(port: str) -> None:
    with pytest.raises(CommandError, match=r"--metrics-port: .* is not a port number"):
        call_command("run_taskiq_beat", "--metrics-port", port)


# -- the collector in-process: each scrape's connection, and a database error ------------------------------


@pytest.fixture
def server(app: SchedulerApp) -> Iterator[str]:
    metrics = MetricsServer(app, "127.0.0.1", free_port()).start()
    try:
        yield metrics.url
    finally:
        metrics.stop()


@pytest.fixture
def opened() -> Iterator[list[BaseDatabaseWrapper]]:
    """The database connections other threads than the test's open while the test runs."""
    connections: list[BaseDatabaseWrapper] = []

    def track(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            connections.append(connection)

    connection_created.connect(track)
    yield connections
    connection_created.disconnect(track)


def rename_table(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {connection.ops.quote_name(old)} RENAME TO {connection.ops.quote_name(new)}")


def test_a_database_error_fails_that_scrape_only(
    server: str, app: SchedulerApp, opened: list[BaseDatabaseWrapper], caplog: pytest.LogCaptureFixture
) -> None:
    app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now()))
    assert value(scrape(server)[1], "taskiq_beat_due_jobs") == 1
    rename_table("scheduler_job", "scheduler_job_away")  # every query of the scrape fails, as with a lost table
    try:
        with (
            caplog.at_level(logging.WARNING, "django_taskiq_beat.metrics"),
            pytest.raises(urllib.error.HTTPError) as failed,
        ):
            scrape(server)
    finally:
        rename_table("scheduler_job_away", "scheduler_job")
    assert failed.value.code == 503
    assert failed.value.read().decode().startswith("metrics unavailable: ")
    (line,) = [record.getMessage() for record in caplog.records if record.name == "django_taskiq_beat.metrics"]
    assert line.startswith("Metrics scrape failed: ") and "scheduler_job" in line
    _, samples = scrape(server)  # the server goes on
    assert value(samples, "taskiq_beat_due_jobs") == 1
    assert len(opened) == 3, "each scrape opens one connection"
    assert all(item.connection is None for item in opened), "a scrape left its connection open"


def test_openmetrics_is_served_to_a_prometheus_that_asks_for_it(server: str) -> None:
    content_type, samples = scrape(server, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert value(samples, "taskiq_beat_dispatched_total") == 0


# -- the engine's hook ------------------------------------------------------------------------------------------


def test_the_engine_hands_each_sent_slots_lag_to_its_observer(app: SchedulerApp) -> None:
    lags: list[float] = []
    app.engine.send_lag_observer = lags.append
    app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now()))
    assert async_to_sync(app.engine.run_once)() == 1
    run = SchedulerRun.objects.get()
    assert lags == [(run.dispatched_at - run.scheduled_for).total_seconds()]


def test_a_failing_send_is_not_observed_and_a_failing_observer_costs_the_engine_nothing(
    app: SchedulerApp, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    lags: list[float] = []
    app.engine.send_lag_observer = lags.append

    async def refuse(message: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(app.broker, "kick", refuse)
    app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now()))
    assert async_to_sync(app.engine.run_once)() == 0
    assert lags == []
    monkeypatch.undo()

    def broken(lag: float) -> None:
        raise RuntimeError("observer bug")

    app.engine.send_lag_observer = broken
    app.single(task="system.echo").schedule(OneOffSchedule(run_at=timezone.now()))
    with caplog.at_level(logging.ERROR, "django_taskiq_beat.engine"):
        assert async_to_sync(app.engine.run_once)() == 1
    assert SchedulerRun.objects.filter(status=RunStatus.DISPATCHED).count() == 1
    assert "The send lag observer failed." in caplog.text
