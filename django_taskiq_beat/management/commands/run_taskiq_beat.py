"""``manage.py run_taskiq_beat``: the scheduler process."""

import argparse
import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from django_taskiq_beat import __version__
from django_taskiq_beat.app import SchedulerApp, get_scheduler_app
from django_taskiq_beat.checks import DeclaredSchedulesLeftToTheSync
from django_taskiq_beat.conf import SchedulerConfig, broker_path, load_broker
from django_taskiq_beat.health import APP_LABEL, unapplied_migrations
from django_taskiq_beat.management import runtime_versions, version_text
from django_taskiq_beat.models import SchedulerJob
from django_taskiq_beat.sending import start_broker_until_up
from django_taskiq_beat.sync import sync_declared

if TYPE_CHECKING:
    from django_taskiq_beat.metrics import MetricsServer

_LOGGER = "django_taskiq_beat"
# All interfaces, as prometheus-client's own server: Prometheus scrapes from another host or pod, and
# what is served holds counts, the engine id and the version, no job names or arguments.
DEFAULT_METRICS_HOST = "0.0.0.0"
logger = logging.getLogger("django_taskiq_beat.engine")


class Command(DeclaredSchedulesLeftToTheSync, BaseCommand):
    help = "Run the taskiq beat engine: send due scheduler jobs to the broker until SIGINT/SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--broker", help="The broker as 'package.module:broker' (default: TASKIQ_BEAT['BROKER']).")
        parser.add_argument(
            "--log-level",
            default="INFO",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            help="Level of the django_taskiq_beat loggers (default INFO).",
        )
        parser.add_argument(
            "--metrics-port",
            type=_port,
            metavar="PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs the 'metrics' extra).",
        )
        parser.add_argument(
            "--metrics-host",
            default=DEFAULT_METRICS_HOST,
            metavar="HOST",
            help=f"The address --metrics-port listens on (default {DEFAULT_METRICS_HOST}: all interfaces).",
        )

    def get_version(self) -> str:
        """``--version``: this package's version (Django's default is its own), then what it runs on."""
        return version_text()

    def check(self, *args: Any, **kwargs: Any) -> None:
        """With the database checks (its version, its time zone tables): the engine is about to use it."""
        super().check(*args, **{**kwargs, "databases": [DEFAULT_DB_ALIAS]})

    def handle(self, *args: Any, **options: Any) -> None:
        self._configure_logging(options["log_level"])
        metrics_server = _metrics_server_class() if options["metrics_port"] is not None else None
        self._require_migrations()
        try:
            if options["broker"]:
                app = SchedulerApp(broker=load_broker(options["broker"]), config=SchedulerConfig.from_settings())
            else:
                app = get_scheduler_app()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        sync_declared(app)  # each line and any error is logged; a bad declaration stops nothing
        server = None
        if metrics_server is not None:
            server = _bind(metrics_server, app, options["metrics_host"], options["metrics_port"])
        try:
            self._print_banner(app, options["broker"] or broker_path(), server)
            asyncio.run(self._serve(app))
        finally:
            if server is not None:
                server.stop()
        self.stdout.write("run_taskiq_beat stopped.")

    async def _serve(self, app: SchedulerApp) -> None:
        """The engine first, then the broker's startup, retried until the broker answers.

        The engine needs only the database: it beats, takes over dead engines' runs and
        records a send that fails while the broker is down, to retry it as usual.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        broker_startup: asyncio.Task[None] | None = None
        try:
            await app.start()
            broker_startup = asyncio.create_task(start_broker_until_up(app.broker, app.config.dispatch_timeout_seconds))
            await stop.wait()
        finally:
            if broker_startup is not None:
                broker_startup.cancel()
            await app.stop()
            await app.broker.shutdown()

    def _require_migrations(self) -> None:
        """Refuse without this app's tables; another app's unapplied migration is normal during a rolling deploy."""
        pending = unapplied_migrations()
        own = [name for name in pending if name.startswith(f"{APP_LABEL}.")]
        if own:
            raise CommandError(f"Unapplied migrations ({', '.join(own)}): run 'manage.py migrate' first.")
        if pending:
            logger.warning("Unapplied migrations of other apps (%s); starting anyway.", ", ".join(pending))

    def _configure_logging(self, level: str) -> None:
        package_logger = logging.getLogger(_LOGGER)
        package_logger.setLevel(level)
        if not package_logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
            package_logger.addHandler(handler)

    def _print_banner(self, app: SchedulerApp, broker_spec: str | None, metrics: "MetricsServer | None") -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        jobs = SchedulerJob.objects
        config = app.config
        lines = [
            f"django-taskiq-beat {__version__} engine",
            f"  versions : {runtime_versions()}",
            f"  database : {connection.vendor} ({connection.settings_dict['NAME']})",
            f"  broker   : {type(app.broker).__name__} ({broker_spec or 'given in code'})",
            f"  jobs     : {jobs.count()} total, {jobs.filter(is_enabled=True).count()} enabled, "
            f"{jobs.due(timezone.now()).count()} due now",
            f"  config   : scheduler_id={config.scheduler_id} sync={config.sync_interval_seconds}s "
            f"batch={config.dispatch_batch_size} concurrency={config.dispatch_concurrency} "
            f"lease={config.claim_ttl_seconds}s timezone={config.default_timezone}",
        ]
        if metrics is not None:
            lines.append(f"  metrics  : {metrics.url}")
        self.stdout.write("\n".join(lines))
        self.stdout.flush()  # before the engine's log lines, also when stdout is a file


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)")
    return int(value)


def _metrics_server_class() -> "type[MetricsServer]":
    """``metrics.MetricsServer``, or a CommandError saying which extra to install."""
    try:
        from django_taskiq_beat.metrics import MetricsServer
    except ImportError as exc:
        if not (exc.name or "").startswith("prometheus_client"):
            raise
        raise CommandError(
            "--metrics-port needs prometheus-client: install the 'metrics' extra"
            " (pip install 'django-taskiq-beat[metrics]')."
        ) from exc
    return MetricsServer


def _bind(server_class: "type[MetricsServer]", app: SchedulerApp, host: str, port: int) -> "MetricsServer":
    """Bind before the engine starts, so a port in use stops the command at once."""
    try:
        server = server_class(app, host, port)
    except OSError as exc:
        raise CommandError(f"Cannot serve metrics on {host}:{port}: {exc.strerror or exc}.") from exc
    return server.start()
