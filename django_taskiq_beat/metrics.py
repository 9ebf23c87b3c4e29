"""Prometheus metrics of one engine process: ``run_taskiq_beat --metrics-port``.

Needs the ``metrics`` extra (prometheus-client), whose exposition code writes every byte
served. Values are read when Prometheus scrapes, on the server's own thread: the engine's
counters from its snapshot, the job gauges from a few COUNT queries on a database
connection opened and closed by that scrape. Only the lag histogram is fed as the engine
sends, through ``BeatEngine.send_lag_observer``.

A scrape that fails (the database is away) answers 503 and logs one line; the server and
the engine go on, and Prometheus records the failed scrape (``up == 0``).
"""

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from django.db import connection
from django.utils import timezone
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from django_taskiq_beat import __version__
from django_taskiq_beat.app import SchedulerApp
from django_taskiq_beat.models import SchedulerJob

logger = logging.getLogger("django_taskiq_beat.metrics")

# From a send right on its slot (a few ms) to one retried after a broker outage (minutes).
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def job_counts() -> tuple[int, dict[str, int]]:
    """Enabled jobs due now, and jobs per state; on this thread's connection, closed before returning."""
    try:
        return SchedulerJob.objects.due(timezone.now()).count(), SchedulerJob.objects.count_by_state()
    finally:
        connection.close()


class EngineCollector(Collector):
    """The engine's counters and the database's job gauges, read at each scrape."""

    def __init__(self, app: SchedulerApp) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        snapshot = self._app.get_health_snapshot()
        yield CounterMetricFamily(
            "taskiq_beat_dispatched", "Slots this engine sent to the broker.", value=snapshot.dispatched_job_count
        )
        yield CounterMetricFamily(
            "taskiq_beat_dispatch_failures",
            "Slots this engine failed to send (each is retried with backoff).",
            value=snapshot.failed_dispatch_count,
        )
        yield CounterMetricFamily(
            "taskiq_beat_skipped_slots",
            "Slots this engine did not send by their job's policy (missed the grace, or overlapped the previous run).",
            value=snapshot.skipped_slot_count,
        )
        due, states = job_counts()
        yield GaugeMetricFamily(
            "taskiq_beat_due_jobs", "Enabled jobs whose slot is due and not yet claimed.", value=due
        )
        jobs = GaugeMetricFamily(
            "taskiq_beat_jobs", "Jobs by state, as the admin and the CLI show it.", labels=["state"]
        )
        for state, count in states.items():
            jobs.add_metric([state], count)
        yield jobs
        yield InfoMetricFamily(
            "taskiq_beat_engine",
            "This engine: its scheduler id and django-taskiq-beat version.",
            value={"engine_id": snapshot.scheduler_id, "version": __version__},
        )


def build_registry(app: SchedulerApp) -> CollectorRegistry:
    """The metrics of ``app``'s engine and of this process; sets the engine's lag observer."""
    registry = CollectorRegistry()
    lag = Histogram(
        "taskiq_beat_dispatch_lag_seconds",
        "Seconds from a slot to its send (dispatched_at - scheduled_for).",
        buckets=LAG_BUCKETS,
        registry=registry,
    )
    app.engine.send_lag_observer = lambda seconds: lag.observe(max(seconds, 0.0))
    registry.register(EngineCollector(app))
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def guarded(metrics_app: _WSGIApp) -> _WSGIApp:
    """``metrics_app`` whose failure is a 503 and one log line, not wsgiref's traceback on stderr."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return metrics_app(environ, start_response)
        except Exception as exc:
            logger.warning("Metrics scrape failed: %s: %s", type(exc).__name__, exc)
            logger.debug("The failed scrape's traceback.", exc_info=True)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"metrics unavailable: {type(exc).__name__}\n".encode()]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    """wsgiref's server, a thread per scrape; IPv4 or IPv6 as ``host`` is written."""

    daemon_threads = True  # a scrape stuck on the database never holds up the process's exit

    def __init__(self, host: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _QuietHandler)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a line per scrape would drown the engine's log
        pass


class MetricsServer:
    """``/metrics`` over HTTP on a thread of its own; building it binds the port (``OSError`` if taken)."""

    def __init__(self, app: SchedulerApp, host: str, port: int) -> None:
        self._server = _Server(host, port)
        self._server.set_app(guarded(make_wsgi_app(build_registry(app))))
        self._thread = threading.Thread(target=self._server.serve_forever, name="taskiq-beat-metrics", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
