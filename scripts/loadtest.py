"""Load tests of the beat engine. See scripts/README.md.

    python scripts/loadtest.py burst  --db sqlite --sizes 1000,10000
    python scripts/loadtest.py steady --db postgres --jobs 1000 --seconds 20
    python scripts/loadtest.py scale  --db sqlite --jobs 100000
    python scripts/loadtest.py multi  --db postgres --jobs 5000 --engines 3
    python scripts/loadtest.py cron   --db postgres --jobs 100000 --engines 3 [--top-of-minute]
    python scripts/loadtest.py burst  --db sqlite --sizes 1000 --policies   (every job with LOAD_POLICY)
    python scripts/loadtest.py dashboard --db postgres --jobs 100000 --runs 1000000

Each run uses a fresh database (a temp SQLite file, or a throwaway PostgreSQL server
started like the test suite's), prints a table and writes JSON to scripts/results/.
The broker drops every message (scripts/load_broker.py): what is measured is the
scheduler's pipeline, not a queue.
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "scripts" / "results"
sys.path.insert(0, str(REPO))


# -- environment ------------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str) -> Iterator[dict[str, str]]:
    """Environment variables that point Django at a fresh database of ``kind``."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="taskiq-beat-load-") as directory:
            yield {"SQLITE_PATH": str(Path(directory) / "load.sqlite3")}
    elif kind == "postgres":
        from tests.pgserver import postgres_server

        with postgres_server() as url:
            yield {"DATABASE_URL": url}
    else:
        from tests.mariadbserver import mariadb_server

        with mariadb_server() as url:
            yield {"DATABASE_URL": url}


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.pop("DATABASE_URL", None) if "SQLITE_PATH" in env else os.environ.pop("SQLITE_PATH", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
    os.environ["DJANGO_DEBUG"] = "off"  # as in production: DEBUG records and formats every query
    os.environ["TASKIQ_BEAT_OPTIONS"] = json.dumps({"BROKER": "scripts.load_broker:broker"})
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import logging

    logging.getLogger("django_taskiq_beat").setLevel(logging.WARNING)


def make_app(**config: Any) -> Any:
    from django_taskiq_beat import SchedulerApp, SchedulerConfig
    from scripts.load_broker import broker

    return SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="UTC", **config))


def load_policy() -> Any:
    """Every policy the claim applies, on every job: overlap (its read of unfinished runs), a misfire grace,
    catch-up of every slot, a run limit and auto-pause. Not jitter: it delays sends by design, and the
    lag measured here would be the jitter's."""
    from django_taskiq_beat import SchedulePolicy

    return SchedulePolicy(
        overlap="skip", misfire_grace_seconds=300, catch_up="all", max_runs=1_000_000, pause_after_failures=3
    )


def insert_jobs(
    count: int, kind: str, next_run_at: datetime, interval_seconds: int | None = None, policy: Any = None
) -> None:
    """Write job rows in bulk, as an application's startup sync or an import would; ``policy`` on each."""
    from django_taskiq_beat import IntervalTrigger, OneOffSchedule, PeriodicSchedule
    from django_taskiq_beat.models import SchedulerJob

    trigger = (
        PeriodicSchedule(interval=IntervalTrigger(seconds=interval_seconds))
        if kind == "periodic"
        else OneOffSchedule(run_at=next_run_at)
    )
    columns = {} if policy is None else {**policy.columns(), "remaining_runs": policy.max_runs}
    created_at = next_run_at - timedelta(seconds=interval_seconds) if interval_seconds else None

    def row(_index: int) -> SchedulerJob:
        return _job_row(trigger, next_run_at, created_at=created_at, **columns)

    _bulk_insert(count, row)


def insert_cron_jobs(count: int, first_minute: datetime, spread: bool) -> None:
    """Jobs on one-minute crons, first due in ``first_minute``: job i at second i % 60, or all at second 0."""
    from django_taskiq_beat import CrontabTrigger, PeriodicSchedule

    triggers = [PeriodicSchedule(crontab=CrontabTrigger(second=str(second), timezone="UTC")) for second in range(60)]

    def row(index: int) -> Any:
        second = index % 60 if spread else 0
        return _job_row(triggers[second], first_minute + timedelta(seconds=second))

    _bulk_insert(count, row)


def _job_row(trigger: Any, next_run_at: datetime, created_at: datetime | None = None, **columns: Any) -> Any:
    from django.utils import timezone

    from django_taskiq_beat.models import SchedulerJob
    from django_taskiq_beat.triggers import trigger_kind

    now = timezone.now()
    return SchedulerJob(
        task_name="load.noop",
        kind=trigger_kind(trigger),
        strategy=trigger.strategy,
        trigger_payload=trigger.to_payload(),
        next_run_at=next_run_at,
        created_at=created_at or now,
        updated_at=now,
        **columns,
    )


def _bulk_insert(count: int, row: Any) -> None:
    """``row(i)`` for i in range(count), 50,000 model instances at a time: a million would not fit in this process."""
    from django_taskiq_beat.models import SchedulerJob

    for chunk in range(0, count, 50_000):
        rows = [row(index) for index in range(chunk, min(chunk + 50_000, count))]
        SchedulerJob.objects.bulk_create(rows, batch_size=2000)


def clear() -> None:
    from django_taskiq_beat.models import SchedulerJob, SchedulerRun

    SchedulerRun.objects.all().delete()
    SchedulerJob.objects.all().delete()


def lags_ms(since: datetime | None = None) -> list[float]:
    from django_taskiq_beat.models import SchedulerRun

    runs = SchedulerRun.objects.filter(status="dispatched")
    if since is not None:
        runs = runs.filter(scheduled_for__gte=since)
    return [(d - s).total_seconds() * 1000 for s, d in runs.values_list("scheduled_for", "dispatched_at")]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    ordered = sorted(values)
    quantiles = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50": round(quantiles[49], 1), "p95": round(quantiles[94], 1), "max": round(ordered[-1], 1)}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    widths = [max(len(str(column)), *(len(str(row[column])) for row in rows)) for column in columns]
    line = lambda values: " | ".join(str(v).rjust(w) for v, w in zip(values, widths, strict=True))  # noqa: E731
    return "\n".join([line(columns), "-+-".join("-" * w for w in widths), *(line(row.values()) for row in rows)])


def report(name: str, db: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    print(f"\n{name} on {db}\n{table(rows)}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{db}.json"
    path.write_text(json.dumps({"scenario": name, "db": db, "rows": rows, **(extra or {})}, indent=2, default=str))
    print(f"(written to {path.relative_to(REPO)})")


# -- scenarios ---------------------------------------------------------------------------------


def burst(arguments: argparse.Namespace) -> None:
    """N one-off jobs due at the same instant; one engine drains them."""
    from asgiref.sync import async_to_sync
    from django.utils import timezone

    rows = []
    for size in arguments.sizes:
        clear()
        app = make_app(dispatch_batch_size=arguments.batch_size, dispatch_concurrency=arguments.concurrency)
        due = timezone.now() + timedelta(milliseconds=arguments.lead_ms + size // 10)
        started = time.perf_counter()
        insert_jobs(size, "one_off", due, policy=load_policy() if arguments.policies else None)
        setup = time.perf_counter() - started
        time.sleep(max((due - timezone.now()).total_seconds(), 0))
        started = time.perf_counter()
        sent = async_to_sync(app.engine.run_once)()
        elapsed = time.perf_counter() - started
        lag = percentiles(lags_ms())
        raw = raw_sql_limit(size, arguments.batch_size) if not arguments.policies else None
        rows.append(
            {
                "jobs": size,
                "setup_s": round(setup, 2),
                "dispatch_s": round(elapsed, 3),
                "dispatches_per_s": round(sent / elapsed),
                "lag_p50_ms": lag["p50"],
                "lag_p95_ms": lag["p95"],
                "lag_max_ms": lag["max"],
                "sent": sent,
                "raw_sql_per_s": raw,
                "of_raw_sql": round(sent / elapsed / raw, 2) if raw else None,
            }
        )
    report(_named("burst", arguments), arguments.db, rows)


def raw_sql_limit(size: int, batch_size: int) -> int:
    """The database's own limit for a burst's work, measured right after the engine's: slots per second.

    The same rows and statements an engine needs at the least, in plain SQL and nothing else: per batch, one
    transaction that locks the due jobs, writes their runs and advances the jobs, then one that marks the
    runs sent. No triggers walked, no broker, no outcomes kept in Python: the machine's figure for the
    database, against which the engine's is read (a noisy machine moves both alike).
    """
    import uuid

    from django.db import connection, transaction
    from django.utils import timezone

    clear()
    insert_jobs(size, "one_off", timezone.now())
    at = connection.ops.adapt_datetimefield_value
    lock = " FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
    statements = _ArrayStatements() if connection.vendor == "postgresql" else _ListStatements()
    started, sent = time.perf_counter(), 0
    with statements.cursor() as cursor:
        while True:
            now = at(timezone.now())
            with transaction.atomic():
                cursor.execute(
                    "SELECT id FROM scheduler_job WHERE is_enabled = %s AND next_run_at <= %s ORDER BY next_run_at"
                    f" LIMIT {batch_size}{lock}",
                    [True, now],
                )
                job_ids = [row[0] for row in cursor.fetchall()]
                if not job_ids:
                    break
                run_ids = [str(uuid.uuid4()) for _ in job_ids]
                cursor.execute(*statements.insert_runs(run_ids, job_ids, now))
                cursor.execute(
                    "UPDATE scheduler_job SET next_run_at = NULL, is_enabled = %s, finished_at = %s, updated_at = %s,"
                    " dispatch_count = dispatch_count + 1, last_run_at = %s, last_dispatched_task_id = id"
                    f" WHERE {statements.among('id', job_ids)}",
                    [False, now, now, now, *statements.keys(job_ids)],
                )
            with transaction.atomic():
                cursor.execute(
                    "UPDATE scheduler_run SET status = %s, dispatched_at = %s, finished_at = %s, broker_task_id = id,"
                    " claimed_by = NULL, lease_expires_at = NULL, updated_at = %s"
                    f" WHERE {statements.among('id', run_ids)}",
                    ["dispatched", now, now, now, *statements.keys(run_ids)],
                )
            sent += len(job_ids)
    return round(sent / (time.perf_counter() - started))


class _ListStatements:
    """Plain SQL any database takes: rows as a VALUES list, keys as an IN list; Django's cursor."""

    def cursor(self) -> Any:
        from django.db import connection

        return connection.cursor()

    def insert_runs(self, run_ids: list[str], job_ids: list[str], now: Any) -> tuple[str, list[Any]]:
        rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(run_ids))
        values = [
            v
            for run, job in zip(run_ids, job_ids, strict=True)
            for v in (run, job, now, "pending", "raw", now, now, now)
        ]
        return f"INSERT INTO scheduler_run ({_RUN_COLUMNS}) VALUES {rows}", values

    def among(self, column: str, keys: list[str]) -> str:
        return f"{column} IN ({', '.join(['%s'] * len(keys))})"

    def keys(self, keys: list[str]) -> list[Any]:
        return list(keys)


class _ArrayStatements(_ListStatements):
    """PostgreSQL's fastest plain form: one array per column, bound on the server by psycopg's own cursor
    (Django's renders every parameter into the SQL text in Python, which is no database limit)."""

    def cursor(self) -> Any:
        import psycopg
        from django.db import connection

        connection.ensure_connection()
        return psycopg.Cursor(connection.connection)

    def insert_runs(self, run_ids: list[str], job_ids: list[str], now: Any) -> tuple[str, list[Any]]:
        return (
            f"INSERT INTO scheduler_run ({_RUN_COLUMNS}) SELECT r, j, %s, 'pending', 'raw', %s, %s, %s"
            " FROM unnest(%s::varchar[], %s::varchar[]) AS t(r, j)",
            [now, now, now, now, run_ids, job_ids],
        )

    def among(self, column: str, keys: list[str]) -> str:
        return f"{column} = ANY(%s)"

    def keys(self, keys: list[str]) -> list[Any]:
        return [keys]


_RUN_COLUMNS = "id, job_id, scheduled_for, status, claimed_by, lease_expires_at, created_at, updated_at"


def steady(arguments: argparse.Namespace) -> None:
    """N interval jobs every second, run by the real engine loop for a fixed time."""
    from asgiref.sync import async_to_sync
    from django.utils import timezone

    clear()
    app = make_app()
    start = timezone.now().replace(microsecond=0) + timedelta(seconds=2)
    insert_jobs(arguments.jobs, "periodic", start, interval_seconds=1)

    async def drive() -> tuple[float, float]:
        await app.start()
        await asyncio.sleep(max((start - timezone.now()).total_seconds(), 0))
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(arguments.seconds)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await app.stop()
        return cpu, wall

    cpu, wall = async_to_sync(drive)()
    window_end = start + timedelta(seconds=arguments.seconds)
    lags = lags_ms(since=start)
    from django_taskiq_beat.models import SchedulerRun

    dispatched = SchedulerRun.objects.filter(
        status="dispatched", scheduled_for__gte=start, scheduled_for__lt=window_end
    ).count()
    expected = arguments.jobs * arguments.seconds
    lag = percentiles(lags)
    report(
        "steady",
        arguments.db,
        [
            {
                "jobs": arguments.jobs,
                "seconds": arguments.seconds,
                "dispatched": dispatched,
                "expected": expected,
                "lag_p50_ms": lag["p50"],
                "lag_p95_ms": lag["p95"],
                "lag_max_ms": lag["max"],
                "cpu_percent_of_core": round(100 * cpu / wall, 1),
            }
        ],
    )


def scale(arguments: argparse.Namespace) -> None:
    """Many enabled jobs, none due: what does an idle engine cost, and how fast is a new job seen?"""
    from asgiref.sync import async_to_sync, sync_to_async
    from django.db import connection
    from django.utils import timezone

    from django_taskiq_beat.models import SchedulerRun

    clear()
    insert_jobs(
        arguments.jobs,
        "periodic",
        timezone.now() + timedelta(days=1),
        interval_seconds=86400,
        policy=load_policy() if arguments.policies else None,
    )
    app = make_app()
    queries = [0]

    def count_queries(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries[0] += 1
        return execute(sql, params, many, context)

    async def drive() -> dict[str, Any]:
        def install_counter() -> None:  # in the thread where the engine's ORM calls run
            connection.execute_wrappers.append(count_queries)

        await sync_to_async(install_counter)()
        await app.start()
        await asyncio.sleep(2)
        rss_before, ticks, queries_before = rss_mb(), app.get_health_snapshot().sync_count, queries[0]
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(arguments.seconds)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        ticks = app.get_health_snapshot().sync_count - ticks
        result = {
            "jobs": arguments.jobs,
            "idle_s": arguments.seconds,
            "cpu_percent_of_core": round(100 * cpu / wall, 2),
            "rss_mb_start": rss_before,
            "rss_mb_end": rss_mb(),
            "ticks": ticks,
            "queries_per_tick": round((queries[0] - queries_before) / max(ticks, 1), 2),
        }
        # A job created by another process, due at once: how long until this engine sends it?
        created = await asyncio.to_thread(_schedule_from_another_process)
        for _ in range(1000):
            sent = await SchedulerRun.objects.filter(job_id="scale.probe", status="dispatched").afirst()
            if sent is not None:
                break
            await asyncio.sleep(0.01)
        result["first_dispatch_s"] = round((sent.dispatched_at - created).total_seconds(), 3) if sent else None
        await app.stop()
        return result

    report(_named("scale", arguments), arguments.db, [async_to_sync(drive)()])


def idle(arguments: argparse.Namespace) -> None:
    """Many enabled jobs, none due, and a ``run_taskiq_beat`` process measured from outside: its own CPU and
    memory (``/proc``), not this script's, which holds the rows it inserted; then a job created here, due at once."""
    from django.db import connection
    from django.utils import timezone

    from django_taskiq_beat import OneOffSchedule, get_scheduler_app
    from django_taskiq_beat.models import SchedulerRun

    clear()
    started = time.perf_counter()
    insert_jobs(arguments.jobs, "periodic", timezone.now() + timedelta(days=1), interval_seconds=86400)
    setup = time.perf_counter() - started
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")  # as autovacuum would have, long before a million jobs idle
    with tempfile.TemporaryDirectory() as directory:
        engine = _start_engine("load-idle", Path(directory) / "sink.txt", CLAIM_AHEAD_SECONDS=0)
        try:
            time.sleep(10)  # startup: migrations check, declared jobs' sync, the first ticks
            rss_start, ticks_start, wall_start = _rss_mb(engine.pid), _cpu_ticks(engine.pid), time.monotonic()
            time.sleep(arguments.seconds)
            cpu = (_cpu_ticks(engine.pid) - ticks_start) / os.sysconf("SC_CLK_TCK")
            wall, rss_end = time.monotonic() - wall_start, _rss_mb(engine.pid)
            job = get_scheduler_app().single(task="load.noop").schedule(OneOffSchedule(run_at=timezone.now()))
            deadline, sent = time.monotonic() + 30, None
            while sent is None and time.monotonic() < deadline:
                sent = SchedulerRun.objects.filter(job=job, status="dispatched").first()
                time.sleep(0.01)
        finally:
            engine.send_signal(signal.SIGTERM)
            engine.wait(timeout=60)
    report(
        "idle",
        arguments.db,
        [
            {
                "jobs": arguments.jobs,
                "setup_s": round(setup),
                "idle_s": arguments.seconds,
                "cpu_percent_of_core": round(100 * cpu / wall, 2),
                "rss_mb_start": rss_start,
                "rss_mb_end": rss_end,
                "new_job_sent_s": round((sent.dispatched_at - job.created_at).total_seconds(), 3) if sent else None,
            }
        ],
    )


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _named(scenario: str, arguments: argparse.Namespace) -> str:
    return f"{scenario}-policies" if arguments.policies else scenario


def _schedule_from_another_process() -> datetime:
    code = (
        "import django, sys; django.setup()\n"
        "from django.utils import timezone\n"
        "from django_taskiq_beat import OneOffSchedule, get_scheduler_app\n"
        "job = get_scheduler_app().single(task='load.noop')"
        ".schedule(OneOffSchedule(run_at=timezone.now()), job_id='scale.probe')\n"
        "print(job.created_at.isoformat())\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return datetime.fromisoformat(output.strip().splitlines()[-1])


def multi(arguments: argparse.Namespace) -> None:
    """One engine, then several engine processes, on the same burst: duplicates, losses, throughput, lag.

    The engines are running before the jobs are written, and the jobs fall due a few seconds after the write ends, as
    jobs scheduled ahead do: each engine has seen them (``SYNC_INTERVAL_SECONDS``) by the time it may claim
    them. No claiming ahead unless ``--claim-ahead`` is given: it would hide the throughput, though it is
    what a running engine does by default (0.5 s), and what its lag then is."""
    from django.db import connection
    from django.utils import timezone

    from django_taskiq_beat.models import SchedulerJob, SchedulerRun

    ahead = arguments.claim_ahead or 0.0
    rows = []
    for engine_count in sorted({1, arguments.engines}):
        clear()
        with _engine_processes(engine_count, CLAIM_AHEAD_SECONDS=ahead) as (_, sends):
            # About 4,000 rows a second are written here; then a second for the engines' next look, and margin.
            due = timezone.now() + timedelta(seconds=arguments.jobs / 2000 + 2 + ahead)
            insert_jobs(arguments.jobs, "one_off", due)
            if connection.vendor == "postgresql":  # a table in use has statistics: plan the claim as it would be
                with connection.cursor() as cursor:
                    cursor.execute("ANALYZE")
            if timezone.now() + timedelta(seconds=1.2 + ahead) > due:
                raise SystemExit("The jobs were written too late for the engines to see them ahead: a slow machine.")
            deadline = time.monotonic() + 120
            while SchedulerRun.objects.filter(status="dispatched").count() < arguments.jobs:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        runs = list(
            SchedulerRun.objects.filter(status="dispatched").values_list("scheduled_for", "created_at", "dispatched_at")
        )
        # From the first claim to the last send; not with claiming ahead, where the engines wait for the slot.
        span = (max(sent for *_, sent in runs) - min(claimed for _, claimed, _ in runs)).total_seconds() if runs else 0
        lost = SchedulerJob.objects.exclude(runs__status="dispatched").count()
        lag = percentiles([(sent - slot).total_seconds() * 1000 for slot, _, sent in runs])
        rows.append(
            {
                "engines": engine_count,
                "jobs": arguments.jobs,
                "claim_ahead_s": ahead,
                "dispatched": len(runs),
                "duplicate_sends": sum(count - 1 for count in sends.values()),
                "lost_slots": lost,
                "dispatches_per_s": round(len(runs) / span) if span and not ahead else None,
                "lag_p50_ms": lag["p50"],
                "lag_p95_ms": lag["p95"],
                "lag_max_ms": lag["max"],
            }
        )
    report("multi", arguments.db, rows)


def cron(arguments: argparse.Namespace) -> None:
    """N jobs on one-minute crons, job i at second i % 60 (N/60 slots a second) or, with ``--top-of-minute``, all
    at second 0; run by one ``run_taskiq_beat`` process, then by ``--engines``, each with the default settings
    but ``--batch-size`` (claiming 0.5 s ahead unless ``--claim-ahead`` is given). Measured over ``--minutes``
    whole minutes after a minute of warm-up."""
    from django.db import connection
    from django.utils import timezone

    from django_taskiq_beat.models import SchedulerRun

    settings: dict[str, Any] = {"DISPATCH_BATCH_SIZE": arguments.batch_size}
    if arguments.claim_ahead is not None:
        settings["CLAIM_AHEAD_SECONDS"] = arguments.claim_ahead
    rows = []
    for engine_count in sorted({1, arguments.engines}):
        clear()
        # The first slots fall in the minute after the rows are written (about 5,000 rows a second here).
        first_minute = _whole_minute_after(timezone.now() + timedelta(seconds=arguments.jobs / 5000 + 10))
        insert_cron_jobs(arguments.jobs, first_minute, spread=not arguments.top_of_minute)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        window_start = first_minute + timedelta(minutes=1)
        window_end = window_start + timedelta(minutes=arguments.minutes)
        in_window = SchedulerRun.objects.filter(
            status="dispatched", scheduled_for__gte=window_start, scheduled_for__lt=window_end
        )
        expected = arguments.jobs * arguments.minutes
        with _engine_processes(engine_count, **settings) as (engines, sends):
            time.sleep(max((window_start - timezone.now()).total_seconds(), 0))
            engine_ticks, machine_ticks = _cpu_ticks_of(engines), _machine_busy_ticks()
            wall = time.monotonic()
            time.sleep(max((window_end - timezone.now()).total_seconds(), 0))
            wall = time.monotonic() - wall
            engine_cpu = _cpu_ticks_of(engines) - engine_ticks
            machine_cpu = _machine_busy_ticks() - machine_ticks
            deadline = time.monotonic() + 120  # the last minute's slots may still be going out
            while in_window.count() < expected and time.monotonic() < deadline:
                time.sleep(1)
        lag = percentiles(
            [(d - s).total_seconds() * 1000 for s, d in in_window.values_list("scheduled_for", "dispatched_at")]
        )
        per_core = 100 / os.sysconf("SC_CLK_TCK") / wall
        rows.append(
            {
                "engines": engine_count,
                "jobs": arguments.jobs,
                "slots_per_s": round(arguments.jobs / 60),
                "minutes": arguments.minutes,
                "dispatched": in_window.count(),
                "expected": expected,
                "duplicate_sends": sum(count - 1 for count in sends.values()),
                "lag_p50_ms": lag["p50"],
                "lag_p95_ms": lag["p95"],
                "lag_max_ms": lag["max"],
                "engines_cpu_percent": round(engine_cpu * per_core),
                "machine_cpu_percent": round(machine_cpu * per_core),  # of os.cpu_count() cores: the database, mostly
            }
        )
    report("cron-top-of-minute" if arguments.top_of_minute else "cron", arguments.db, rows)


def _whole_minute_after(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0) + timedelta(minutes=1)


def _cpu_ticks_of(processes: list[subprocess.Popen[bytes]]) -> int:
    return sum(_cpu_ticks(process.pid) for process in processes)


def _machine_busy_ticks() -> int:
    """CPU ticks all cores have spent busy since boot (``/proc/stat``): the engines, the database server, the rest."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(n) for n in Path("/proc/stat").read_text().split()[1:9]
    )
    return user + nice + system + irq + softirq + steal


def dashboard(arguments: argparse.Namespace) -> None:
    """The admin's dashboard over many jobs and a long run history: how long it takes, how many queries."""
    import random

    from django.contrib import admin
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from django_taskiq_beat.admin.dashboard import SchedulerDashboardAdmin
    from django_taskiq_beat.models import SchedulerDashboard, SchedulerJob, SchedulerRun

    clear()
    now = timezone.now()
    started = time.perf_counter()
    insert_jobs(arguments.jobs, "periodic", now + timedelta(minutes=30), interval_seconds=3600)
    job_ids = list(SchedulerJob.objects.values_list("pk", flat=True))
    SchedulerJob.objects.filter(pk__in=job_ids[:50]).update(next_run_at=now - timedelta(minutes=5))  # overdue
    rng = random.Random(7)
    outcomes = ["succeeded"] * 90 + ["failed"] * 5 + [""] * 5
    for start in range(0, arguments.runs, 20_000):  # over the last week, oldest first
        batch = []
        for index in range(start, min(start + 20_000, arguments.runs)):
            slot = now - timedelta(days=arguments.days) + timedelta(days=arguments.days) * index / arguments.runs
            skipped = index % 50 == 0
            batch.append(
                SchedulerRun(
                    job_id=job_ids[index % len(job_ids)],
                    scheduled_for=slot,
                    status="skipped" if skipped else "dispatched",
                    dispatched_at=None if skipped else slot + timedelta(milliseconds=rng.expovariate(1 / 40)),
                    finished_at=slot,
                    outcome="" if skipped else rng.choice(outcomes),
                    error="ValueError: load" if index % 20 == 0 else None,
                )
            )
        SchedulerRun.objects.bulk_create(batch, batch_size=5000)
    setup = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    user = User.objects.create_superuser("load", "load@example.com", "load")
    page = SchedulerDashboardAdmin(SchedulerDashboard, admin.site)

    def render() -> None:
        request = RequestFactory().get("/admin/django_taskiq_beat/schedulerdashboard/")
        request.user = user
        page.changelist_view(request).render()

    timings = []
    for _ in range(arguments.repeat):
        began = time.perf_counter()
        render()
        timings.append((time.perf_counter() - began) * 1000)
    with CaptureQueriesContext(connection) as captured:  # apart: capturing formats every query
        render()
    queries = len(captured.captured_queries)
    since = now - timedelta(hours=24)
    report(
        "dashboard",
        arguments.db,
        [
            {
                "jobs": arguments.jobs,
                "runs": arguments.runs,
                "runs_last_24h": SchedulerRun.objects.filter(scheduled_for__gte=since).count(),
                "setup_s": round(setup, 1),
                "render_ms_median": round(statistics.median(timings)),
                "render_ms_max": round(max(timings)),
                "queries": queries,
            }
        ],
    )


@contextlib.contextmanager
def _engine_processes(count: int, **settings: Any) -> Iterator[tuple[list[subprocess.Popen[bytes]], Counter[str]]]:
    """``count`` engine processes sharing one broker sink, stopped (SIGTERM) on leaving; the counter is then
    filled with the task ids sent, each as many times as it was sent."""
    sends: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as directory:
        sink = Path(directory) / "sink.txt"
        sink.touch()
        processes = [_start_engine(f"load-{n}", sink, **settings) for n in range(count)]
        try:
            _wait_until_running(processes)
            yield processes, sends
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=60)
            sends.update(sink.read_text().split())


def _wait_until_running(processes: list[subprocess.Popen[bytes]]) -> None:
    """Until each engine process has registered as running (three starting together take about 3 s here)."""
    from django_taskiq_beat.models import SchedulerEngine

    pids = [process.pid for process in processes]
    deadline = time.monotonic() + 60
    while SchedulerEngine.objects.filter(pid__in=pids, stopped_at__isnull=True).count() < len(pids):
        if time.monotonic() > deadline or any(process.poll() is not None for process in processes):
            raise SystemExit("An engine process did not start.")
        time.sleep(0.1)


def _start_engine(name: str, sink: Path, **settings: Any) -> subprocess.Popen[bytes]:
    """A ``run_taskiq_beat`` process with these ``TASKIQ_BEAT`` settings (the others default)."""
    options = {"BROKER": "scripts.load_broker:broker", "SCHEDULER_ID": name, **settings}
    env = {**os.environ, "PYTHONPATH": str(REPO), "LOAD_SINK": str(sink), "TASKIQ_BEAT_OPTIONS": json.dumps(options)}
    return subprocess.Popen(
        [sys.executable, str(REPO / "testproject" / "manage.py"), "run_taskiq_beat", "--log-level", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# -- command line --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["burst", "steady", "scale", "idle", "multi", "cron", "dashboard"])
    parser.add_argument("--db", choices=["sqlite", "postgres", "mariadb"], default="sqlite")
    parser.add_argument("--sizes", type=lambda text: [int(n) for n in text.split(",")], default=[1000, 10000])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--lead-ms", type=int, default=250)
    parser.add_argument("--policies", action="store_true", help="burst, scale: every job has load_policy()")
    parser.add_argument("--minutes", type=int, default=2, help="cron: whole minutes measured, after one of warm-up")
    parser.add_argument("--top-of-minute", action="store_true", help="cron: every job at second 0")
    parser.add_argument(
        "--claim-ahead", type=float, help="cron, multi: the engines' CLAIM_AHEAD_SECONDS (cron: theirs, multi: 0)"
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="dashboard: runs in the history")
    parser.add_argument("--days", type=float, default=7.0, help="dashboard: the history spans this many days")
    parser.add_argument("--repeat", type=int, default=7, help="dashboard: renders timed")
    arguments = parser.parse_args()
    with database(arguments.db) as env:
        setup_django(env)
        scenarios = {
            "burst": burst,
            "steady": steady,
            "scale": scale,
            "idle": idle,
            "multi": multi,
            "cron": cron,
            "dashboard": dashboard,
        }
        scenarios[arguments.scenario](arguments)


if __name__ == "__main__":
    main()
