"""The beat engine: an async loop that sends due slots to the broker.

Each tick asks the database for due slots through an index, claims them in batches
(``claims.claim_due``), sends them concurrently with ``kiq`` and records the
outcomes. Between ticks it sleeps until the next due slot or ``sync_interval_seconds``,
whichever comes first, and wakes at once when this process changes a job. A tick
that fails (broker down, database gone) is logged; the engine closes its database
connection, backs off and tries again. It never stops on its own.

What it has sent it keeps until the database has stored it, claiming nothing new
meanwhile, and a task of its own renews the lease of every run it holds each
``claim_ttl_seconds / 10``. So a database outage sends no slot twice: with one engine
whatever its length, with several if it is shorter than about 4/5 of a lease (the
lease left at its start, less a renewal interval after it).

Its heartbeat (``registry``) beats apart from all that; a pending run of an engine that
stopped or stopped beating is re-sent at once, without waiting for its lease.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.utils import timezone
from taskiq import AsyncBroker

from django_taskiq_beat import bulk, claims, logs, registry
from django_taskiq_beat.conf import SchedulerConfig
from django_taskiq_beat.dbthread import DatabaseThread, close_connection
from django_taskiq_beat.sending import send_task

logger = logging.getLogger("django_taskiq_beat.engine")

_P = ParamSpec("_P")
_R = TypeVar("_R")
_MAX_BACKOFF_SECONDS = 30.0
_MAX_BATCHES_IN_FLIGHT = 8


@dataclass(frozen=True)
class SchedulerHealthSnapshot:
    """What an engine has done so far, for health checks and dashboards.

    ``claim_conflict_count`` counts the slots this engine claimed and another engine had
    before it: a claimed slot whose run the unique key on (job, slot) refused because another
    writer had recorded it first (it is not sent again), and a run this engine held that
    another engine took over, having found this one dead or its lease expired (seen at the
    next lease renewal; both may send it). Slots another engine holds while this one looks are skipped unseen
    (``SKIP LOCKED``, SQLite's single writer) and are not counted: counting them would cost
    a query per claim.
    """

    scheduler_id: str
    is_running: bool
    sync_count: int
    claimed_job_count: int
    dispatched_job_count: int
    failed_dispatch_count: int
    recovered_run_count: int
    claim_conflict_count: int
    skipped_slot_count: int  # slots its claims did not send by their job's policy (skipped runs)
    cleaned_run_count: int
    cleaned_job_count: int
    failed_tick_count: int
    last_sync_at: datetime | None
    last_dispatch_started_at: datetime | None
    last_dispatch_finished_at: datetime | None
    last_cleanup_at: datetime | None
    last_job_cleanup_at: datetime | None
    next_due_at: datetime | None


class _Cleanup:
    """A retention rule: every ``interval_seconds``, delete what is older than ``retention_days``."""

    def __init__(
        self,
        retention_days: int | None,
        interval_seconds: float,
        delete: Callable[[datetime], int],
        message: str,
        count_key: str,
        cutoff_key: str,
    ) -> None:
        self.retention_days, self.interval_seconds, self.delete = retention_days, interval_seconds, delete
        self.message, self.count_key, self.cutoff_key = message, count_key, cutoff_key
        self.deleted_total = 0
        self.last_at: datetime | None = None
        self._next_at = 0.0

    def is_due(self) -> bool:
        return self.retention_days is not None and time.monotonic() >= self._next_at

    async def run(self) -> None:
        """Delete chunk after chunk (``self.delete`` deletes one and says how many) until none is left."""
        assert self.retention_days is not None
        self._next_at = time.monotonic() + self.interval_seconds
        cutoff = timezone.now() - timedelta(days=self.retention_days)
        deleted = 0
        while chunk := await _orm(self.delete, cutoff):
            deleted += chunk
        self.deleted_total += deleted
        self.last_at = timezone.now()
        if deleted:
            logger.info(
                self.message,
                deleted,
                logs.when(cutoff),
                extra={self.count_key: deleted, self.cutoff_key: cutoff.isoformat()},
            )


class _Counters:
    def __init__(self) -> None:
        self.sync_count = self.claimed_job_count = self.dispatched_job_count = 0
        self.failed_dispatch_count = self.recovered_run_count = self.failed_tick_count = 0
        self.claim_conflict_count = self.skipped_slot_count = 0
        self.last_sync_at: datetime | None = None
        self.last_dispatch_started_at: datetime | None = None
        self.last_dispatch_finished_at: datetime | None = None


async def _orm(function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """Run ORM code in Django's async ORM thread, never on the event loop."""
    return await sync_to_async(function)(*args, **kwargs)


class BeatEngine:
    """Claims due slots and sends them; any number of engines may share a database."""

    def __init__(self, broker: AsyncBroker, config: SchedulerConfig) -> None:
        self.broker = broker
        self.config = config
        self._retry = claims.RetryPolicy(config.dispatch_retry_seconds, config.dispatch_retry_max_seconds)
        self._lease = timedelta(seconds=config.claim_ttl_seconds)
        self._renew_seconds = config.claim_ttl_seconds / 10
        self._ahead = timedelta(seconds=config.claim_ahead_seconds)
        self._stale = timedelta(seconds=config.stale_run_seconds)
        self._counters = _Counters()
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop_signal: asyncio.Future[None] | None = None  # done once stop() begins
        self._delayed: set[asyncio.Task[int]] = set()  # sends waiting out their jitter, apart from the ticks
        # Claimed batches being sent and recorded. Within start() they outlive the tick that claimed them, so a
        # batch claimed ahead waits for its slot while the next ticks claim the next slots.
        self._in_flight: set[asyncio.Task[int]] = set()
        self._stopping = False
        self._next_due_at: datetime | None = None
        # Runs claimed by this engine whose outcome is not stored yet (claimed ahead, being sent, sent):
        # the keeper renews their leases. Memory is bounded: nothing new is claimed while outcomes wait.
        self._held: set[str] = set()
        # Every held run's lease holds until then, as far as this engine knows: the database's clock is not read,
        # so this is the wall clock its claims and renewals wrote (monotonic time stops while a host is suspended).
        self._leases_until = timezone.now()
        self._unrecorded: list[claims.Outcome] = []
        self._keeper: asyncio.Task[None] | None = None
        self._send_limit: asyncio.Semaphore | None = None
        self._run_cleanup = _Cleanup(
            config.run_history_retention_days,
            config.run_cleanup_interval_seconds,
            claims.delete_runs_finished_before,
            "Scheduler engine cleaned old run history: %d runs deleted (finished before %s).",
            "deleted_run_count",
            "finished_before",
        )
        self._job_cleanup = _Cleanup(
            config.completed_job_retention_days,
            config.job_cleanup_interval_seconds,
            claims.delete_jobs_finished_before,
            "Scheduler engine cleaned old completed jobs: %d one-offs deleted (finished before %s).",
            "deleted_job_count",
            "updated_before",
        )
        self._engine_cleanup = _Cleanup(
            registry.RETENTION_DAYS,
            config.run_cleanup_interval_seconds,
            registry.delete_engines_silent_since,
            "Scheduler engine cleaned old engine rows: %d deleted (silent since %s).",
            "deleted_engine_count",
            "heartbeat_before",
        )
        self._heartbeat = registry.Heartbeat(config, self._heartbeat_counts)
        # Stores outcomes and renews leases on a connection of its own while the tick's thread claims.
        self._writer = DatabaseThread(f"taskiq-beat-writer-{config.scheduler_id}")
        # Called with the lag (seconds from slot to send) of each slot the broker took; ``metrics`` sets it.
        self.send_lag_observer: Callable[[float], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    async def start(self) -> None:
        if self.is_running:
            logger.debug("Scheduler engine start skipped because it is already running.")
            return
        logger.info("Starting scheduler engine.")
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop_signal = self._loop.create_future()
        self._send_limit = asyncio.Semaphore(self.config.dispatch_concurrency)  # shared by batches of every tick
        if bulk.writes_side_by_side():
            self._writer.start()
        self._runner = asyncio.create_task(self._run(), name=f"taskiq-beat-engine-{self.config.scheduler_id}")
        self._runner.add_done_callback(self._report_crash)
        self._heartbeat.start()
        logger.info("Scheduler engine started.")

    async def stop(self) -> None:
        """Finish the batch in flight, then stop; nothing claimed is left unsent."""
        if self._runner is None:
            return
        logger.info("Stopping scheduler engine.")
        self._stopping = True
        if self._stop_signal is not None and not self._stop_signal.done():
            self._stop_signal.set_result(None)  # sends waiting out their jitter go now
        self.wake()
        try:
            await self._runner
        finally:
            # Batches a crashed runner left going: sent and stored before their leases and the heartbeat stop.
            await asyncio.gather(*self._delayed, *self._in_flight, return_exceptions=True)
            self._runner = self._stop_signal = None
            if self._keeper is not None:  # nothing is held any more: stored, or given up at stop
                self._keeper.cancel()
            await self._writer.close()
            await self._heartbeat.stop()  # beats until here: others leave what it holds alone
        logger.info("Scheduler engine stopped.")

    @property
    def _started(self) -> bool:
        """From ``start()`` to the end of ``stop()``: batches and jittered sends then go on apart from the ticks.
        Outside it (``run_once`` on its own) everything is sent and recorded within the call."""
        return self._stop_signal is not None

    def wake(self) -> None:
        """Re-check the database now (a job changed); safe from any thread."""
        if self._loop is None or self._wake is None or self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop closed between the check and the call
            pass

    def snapshot(self) -> SchedulerHealthSnapshot:
        counters = self._counters
        return SchedulerHealthSnapshot(
            scheduler_id=self.config.scheduler_id,
            is_running=self.is_running,
            sync_count=counters.sync_count,
            claimed_job_count=counters.claimed_job_count,
            dispatched_job_count=counters.dispatched_job_count,
            failed_dispatch_count=counters.failed_dispatch_count,
            recovered_run_count=counters.recovered_run_count,
            claim_conflict_count=counters.claim_conflict_count,
            skipped_slot_count=counters.skipped_slot_count,
            cleaned_run_count=self._run_cleanup.deleted_total,
            cleaned_job_count=self._job_cleanup.deleted_total,
            failed_tick_count=counters.failed_tick_count,
            last_sync_at=counters.last_sync_at,
            last_dispatch_started_at=counters.last_dispatch_started_at,
            last_dispatch_finished_at=counters.last_dispatch_finished_at,
            last_cleanup_at=self._run_cleanup.last_at,
            last_job_cleanup_at=self._job_cleanup.last_at,
            next_due_at=self._next_due_at,
        )

    def _heartbeat_counts(self) -> dict[str, int]:
        counters = self._counters
        return {
            "dispatched_count": counters.dispatched_job_count,
            "failed_dispatch_count": counters.failed_dispatch_count,
            "recovered_run_count": counters.recovered_run_count,
            "claim_conflict_count": counters.claim_conflict_count,
        }

    def _report_crash(self, task: "asyncio.Task[None]") -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("Scheduler engine runner stopped with an unhandled error.", exc_info=task.exception())

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        ticks = logs.Outage(logger, "Scheduler engine tick")
        while not self._stopping:
            try:
                await self.run_once()
                ticks.succeeded()
                timeout = self._sleep_seconds()
            except Exception as exc:
                self._counters.failed_tick_count += 1
                self._heartbeat.disconnected()
                timeout = self._backoff_seconds(ticks.failures + 1)
                ticks.failed(exc, timeout)
                await self._reset_connection()
            await self._sleep(timeout)
        # Batches claimed ahead wait for their slot; sends waiting out a jitter are cut short by the stop signal.
        while self._delayed or self._in_flight:
            await asyncio.gather(*self._delayed, *self._in_flight)
        await self._record_at_stop()
        await self._reset_connection()

    def _backoff_seconds(self, failures: int) -> float:
        """Exponential from ``idle_sleep_seconds``; while sent outcomes wait to be stored, at most a
        lease renewal interval, so they are stored soon after the database is back."""
        ceiling = self._renew_seconds if self._unrecorded else _MAX_BACKOFF_SECONDS
        return min(self.config.idle_sleep_seconds * 2 ** min(failures, 16), ceiling)

    async def _sleep(self, timeout: float) -> None:
        assert self._wake is not None
        if self._stopping:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    def _sleep_seconds(self) -> float:
        """Until the next slot can be claimed, at most ``sync_interval_seconds``.

        Slots are claimed ``claim_ahead_seconds`` early and sent on time. A slot
        already claimable that this engine could not take (another engine holds it)
        is re-checked after ``idle_sleep_seconds``.
        """
        if self._next_due_at is None:
            return self.config.sync_interval_seconds
        until_due = (self._next_due_at - self._ahead - timezone.now()).total_seconds()
        if until_due <= 0:
            return self.config.idle_sleep_seconds
        return min(until_due, self.config.sync_interval_seconds)

    async def _reset_connection(self) -> None:
        try:
            await _orm(close_connection)
        except Exception as exc:
            logger.warning(
                "Closing the database connection failed: %s",
                logs.error_text(exc),
                exc_info=logs.traceback_at_debug(logger, exc),
            )

    async def run_once(self) -> int:
        """One tick: re-send orphaned runs, send every due slot, clean up. Returns slots sent."""
        await _orm(close_old_connections)
        if not self._started:  # run_once on its own, maybe in an event loop of its own
            self._send_limit = asyncio.Semaphore(self.config.dispatch_concurrency)
        await self._record_leftovers()
        self._counters.sync_count += 1
        self._counters.last_sync_at = timezone.now()
        logger.debug("Scheduler engine synced jobs from storage.", extra={"next_due_at": self._next_due_at})
        sent = 0
        orphans = await self._take_over_expired()
        self._report_failures(orphans)
        recovered = len(orphans.dispatches) - orphans.backfills - orphans.released
        if recovered:
            self._counters.recovered_run_count += recovered
            logger.warning(
                "Re-sending runs left pending by a stopped or dead engine: %s (each may have been sent already).",
                logs.count(recovered, "run"),
                extra={"run_count": recovered},
            )
        first_sends = orphans.backfills - orphans.backfill_retries
        if first_sends:
            logger.info(
                "Sending backfilled runs: %s.", logs.count(first_sends, "run"), extra={"run_count": first_sends}
            )
        if orphans.backfill_retries:
            logger.info(
                "Retrying backfilled runs whose send failed: %s.",
                logs.count(orphans.backfill_retries, "run"),
                extra={"run_count": orphans.backfill_retries},
            )
        if orphans.released:
            logger.info(
                "Sending held slots whose previous run has finished: %s.",
                logs.count(orphans.released, "run"),
                extra={"run_count": orphans.released},
            )
        ready = self._send_jittered_later(orphans.dispatches)
        if ready or orphans.failures:
            sent += await self._send_and_record(ready, unsendable=orphans.failures)
        sent += await self._dispatch_due()
        await self._clean_up()
        self._next_due_at = await _orm(claims.next_due_at)
        return sent

    async def _take_over_expired(self) -> claims.Claim:
        """Claim runs of dead engines, runs whose lease expired, backfilled runs and held slots now free.

        Not while this engine's own held runs may be past their leases (its renewals failed, or fell
        behind, for half a lease: an outage): it would take them over too, and send them twice. The
        lease keeper renews them, and a later tick takes over.
        """
        if self._held and timezone.now() > self._leases_until - self._lease / 2:
            logger.debug("Taking over no expired run this tick: this engine's own leases are not renewed yet.")
            return claims.Claim([], 0, [])
        return await _orm(
            claims.claim_expired,
            self.config.scheduler_id,
            timezone.now(),
            self.config.dispatch_batch_size,
            self._lease,
            self._heartbeat.dead_after(),
            self._stale,
        )

    async def _dispatch_due(self) -> int:
        """Claim batch after batch without waiting for their sends.

        A batch claimed ahead of its slot waits for it in the background while the
        next batch is claimed, so a burst goes out on time; within ``start()`` the tick
        ends without waiting for it, so the next tick claims the next slots meanwhile.
        At most ``_MAX_BATCHES_IN_FLIGHT`` batches are claimed and not yet recorded, and
        none is claimed once a batch's outcomes could not be stored. ``run_once`` on its
        own returns once its batches are recorded, and raises their errors.
        """
        sent = 0
        try:
            while not self._stopping and not self._unrecorded:
                if len(self._in_flight) >= _MAX_BATCHES_IN_FLIGHT:
                    done, _ = await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
                    self._in_flight -= done
                    sent += _sent_or_raise(await asyncio.gather(*done, return_exceptions=True))
                    continue  # it may have failed to store its outcomes: claim nothing more then
                claim = await _orm(
                    claims.claim_due,
                    self.config.scheduler_id,
                    timezone.now(),
                    self.config.dispatch_batch_size,
                    self._lease,
                    self._retry,
                    self._ahead,
                    self._stale,
                )
                self._report_failures(claim)
                self._report_unsent(claim)
                self._counters.claim_conflict_count += claim.conflicts
                if claim.row_count:
                    logger.debug(
                        "Claimed scheduler jobs: %s, %d failed before sending, %d held by another engine.",
                        logs.count(len(claim.dispatches), "due slot"),
                        len(claim.failures),
                        claim.conflicts,
                        extra={"job_count": len(claim.dispatches), "conflict_count": claim.conflicts},
                    )
                ready = self._send_jittered_later(claim.dispatches)
                if ready:
                    self._start_batch(ready)
                if claim.row_count < self.config.dispatch_batch_size:
                    break
        finally:  # whatever happened to a claim, what was claimed is sent and recorded
            results = await asyncio.gather(*self._batches_to_await(), return_exceptions=True)
        return sent + _sent_or_raise(results)

    def _batches_to_await(self) -> set[asyncio.Task[int]]:
        """``run_once`` on its own waits for every batch it claimed; within ``start()`` they go on by themselves."""
        if self._started:
            return set()
        waiting, self._in_flight = self._in_flight, set()
        return waiting

    def _start_batch(self, dispatches: list[claims.Dispatch]) -> None:
        """Send and record a claimed batch in a task of its own: see ``_dispatch_due``."""
        if not self._started:  # awaited by _dispatch_due, which raises its error
            self._in_flight.add(asyncio.create_task(self._send_and_record(dispatches)))
            return
        self._send_apart(dispatches, self._in_flight)

    def _report_failures(self, claim: claims.Claim) -> None:
        """Rows that cannot be sent (unreadable, wrong types, a corrupt trigger): an operator must fix the data."""
        for outcome in claim.failures:
            self._counters.failed_dispatch_count += 1
            logger.error(
                "Job %s cannot be sent: %s; %s.",
                _job(outcome.dispatch),
                logs.one_line(outcome.error or ""),
                self._retry_text(outcome),
                extra=_job_extra(outcome.dispatch),
            )

    def _send_jittered_later(self, dispatches: list[claims.Dispatch]) -> list[claims.Dispatch]:
        """Start the sends that wait out a jitter on their own, so they hold up no tick; returns the others.

        Their runs are held (leases renewed) like any claimed run; a stop sends them at once.
        Outside ``start()`` (``run_once``) everything is sent within the call.
        """
        if not self._started:
            return dispatches
        ready: list[claims.Dispatch] = []
        later: list[claims.Dispatch] = []
        for dispatch in dispatches:  # a delay within the claim-ahead time is waited out as a claimed-ahead slot is
            waits = dispatch.send_at is not None and dispatch.send_at > dispatch.scheduled_for + self._ahead
            (later if waits else ready).append(dispatch)
        if later:
            self._send_apart(later, self._delayed)
        return ready

    def _send_apart(self, dispatches: list[claims.Dispatch], tasks: set[asyncio.Task[int]]) -> None:
        """Send and record in a task of its own, kept in ``tasks`` until done (a stop waits for it)."""
        task = asyncio.create_task(self._send_in_background(dispatches))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _send_in_background(self, dispatches: list[claims.Dispatch]) -> int:
        """Send and record apart from the ticks; a failure to store is said here, and left to the next tick,
        which comes at once and then backs off as any failed tick."""
        try:
            return await self._send_and_record(dispatches)
        except Exception as exc:  # their outcomes wait in _unrecorded: the next tick stores them, or says why not
            logger.warning(
                "Storing the outcomes of %s failed: %s; trying again at the next tick.",
                logs.count(len(dispatches), "send"),
                logs.error_text(exc),
                exc_info=logs.traceback_at_debug(logger, exc),
            )
            self.wake()
            return 0

    async def _wait_out_jitter(self, send_at: datetime) -> None:
        """Wait until the jittered send time; a stop cuts it short, so SIGTERM never waits out a jitter."""
        delay = (send_at - timezone.now()).total_seconds()
        if delay <= 0:
            return
        if self._stop_signal is None:  # run_once, outside start()/stop()
            await asyncio.sleep(delay)
        else:
            await asyncio.wait([self._stop_signal], timeout=delay)

    def _report_unsent(self, claim: claims.Claim) -> None:
        """Slots the job's policy did not send (skipped runs) or holds for its previous run, said once each."""
        self._counters.skipped_slot_count += len(claim.skips)
        for verb, slots in (("Skipped", claim.skips), ("Holding", claim.held)):
            for slot in slots:
                extra = logs.job_extra(slot.job_id, slot.job_name, slot.task_name, slot.scheduled_for)
                logger.info(
                    "%s job %s: %s.",
                    verb,
                    logs.job(slot.job_id, slot.job_name, slot.task_name, slot.scheduled_for),
                    slot.reason,
                    extra={**extra, "run_id": slot.run_id},
                )

    async def _send_and_record(
        self, dispatches: list[claims.Dispatch], unsendable: Sequence[claims.Outcome] = ()
    ) -> int:
        """Send a claimed batch and store its outcomes; returns how many went.

        ``unsendable``: runs a take-over claimed and found it cannot send (``claim_expired``'s failures), held and
        stored with the batch's outcomes, so that they too are kept until the database takes them.
        """
        self._hold([*dispatches, *(outcome.dispatch for outcome in unsendable)])
        outcomes = await self._send_counted(dispatches) if dispatches else []
        try:
            await self._store([*unsendable, *outcomes])
        except Exception:
            self._unrecorded.extend([*unsendable, *outcomes])  # kept until stored: see _record_leftovers
            raise
        return sum(outcome.error is None for outcome in outcomes)

    async def _send_counted(self, dispatches: list[claims.Dispatch]) -> list[claims.Outcome]:
        """Send a batch, counted in the health snapshot, its lags handed to ``send_lag_observer``."""
        self._counters.claimed_job_count += len(dispatches)
        self._counters.last_dispatch_started_at = timezone.now()
        logger.debug(
            "Dispatching scheduler jobs batch: %s.",
            logs.count(len(dispatches), "slot"),
            extra={"job_count": len(dispatches)},
        )
        outcomes = await self._send_all(dispatches)
        self._counters.last_dispatch_finished_at = timezone.now()
        sent = sum(outcome.error is None for outcome in outcomes)
        self._counters.dispatched_job_count += sent
        self._counters.failed_dispatch_count += len(outcomes) - sent
        self._observe_send_lags(outcomes)
        return outcomes

    def _observe_send_lags(self, outcomes: list[claims.Outcome]) -> None:
        """Hand each sent slot's lag to ``send_lag_observer``; its error is logged and costs the engine nothing."""
        observe = self.send_lag_observer
        if observe is None:
            return
        try:
            for outcome in outcomes:
                if outcome.error is None and outcome.dispatched_at is not None and not outcome.dispatch.late_on_purpose:
                    observe((outcome.dispatched_at - outcome.dispatch.scheduled_for).total_seconds())
        except Exception:
            logger.exception("The send lag observer failed.")

    async def _record_leftovers(self) -> None:
        """Store the outcomes an earlier store could not; raises while the database is away.

        They are kept, however many tries it takes, and their runs stay held, so their
        leases are renewed and no engine sends them again; meanwhile nothing new is
        claimed. Only a stop gives up on them (``_record_at_stop``).
        """
        if self._unrecorded:
            # Taken out first: a batch in the background may add its own while these are stored.
            waiting, self._unrecorded = self._unrecorded, []
            try:
                await self._store(waiting)
            except BaseException:
                self._unrecorded[:0] = waiting
                raise

    async def _record_at_stop(self) -> None:
        """Keep trying to store what was sent for one lease; after that other engines send those runs anyway."""
        deadline = time.monotonic() + self.config.claim_ttl_seconds
        tries = logs.Outage(logger, f"Storing the outcomes of {logs.count(len(self._unrecorded), 'send')} at stop")
        while self._unrecorded:
            try:
                await self._record_leftovers()
            except Exception as exc:
                await self._reset_connection()
                if time.monotonic() >= deadline:
                    logger.error(
                        "Giving up storing the outcomes of %s at stop (%s); their runs are sent again when"
                        " their leases expire.",
                        logs.count(len(self._unrecorded), "send"),
                        logs.error_text(exc),
                        extra={"run_count": len(self._unrecorded)},
                    )
                    self._release(self._unrecorded)
                    self._unrecorded = []
                    return
                tries.failed(exc, self._renew_seconds)
                await asyncio.sleep(self._renew_seconds)
        tries.succeeded()

    async def _store(self, outcomes: list[claims.Outcome]) -> None:
        """Store outcomes; a batch the database refuses for its values is stored one by one.

        Such a refusal is not an outage (storing again would fail alike), so it must not
        keep the engine from claiming: the outcomes it can store are stored, and those it
        cannot are logged and let go (their runs are sent again after their lease).
        """
        now = timezone.now()
        try:
            left = await self._write(
                claims.record, outcomes, now, self.config.record_runs, self._retry, self.config.scheduler_id
            )
            self._drop_lost({outcome.dispatch.run_id for outcome in left} & self._held)  # not seen by a renewal yet
        except claims.STORE_DATA_ERRORS:
            logger.warning(
                "The database refused a batch of send outcomes for its values; storing them one by one.", exc_info=True
            )
            stored_apart = await self._write(
                claims.record_each, outcomes, now, self.config.record_runs, self._retry, self.config.scheduler_id
            )
            for outcome in stored_apart:
                logger.error(
                    "The outcome of the send of job %s (run %s) cannot be stored; the run is sent again after its"
                    " lease.",
                    _job(outcome.dispatch),
                    outcome.dispatch.run_id,
                    extra={**_job_extra(outcome.dispatch), "run_id": outcome.dispatch.run_id},
                )
        self._release(outcomes)

    async def _write(self, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Outcomes and lease renewals go to the writer's thread where it runs, so they do not queue behind the
        tick's claims (a record that writes a job row still waits for a claim holding that row's lock).

        Where it does not run (SQLite, ``run_once`` on its own) they take the tick's thread.
        """
        if self._writer.is_running:
            return await self._writer(function, *args, **kwargs)
        return await _orm(function, *args, **kwargs)

    def _hold(self, dispatches: list[claims.Dispatch]) -> None:
        """Keep these runs' leases renewed until their outcomes are stored."""
        if dispatches:  # leased when this engine claimed them, or took them over: its clock, before now
            leased = min(dispatch.leased_at or dispatch.claimed_at for dispatch in dispatches) + self._lease
            self._leases_until = min(self._leases_until, leased) if self._held else leased
        self._held.update(dispatch.run_id for dispatch in dispatches)
        if self._keeper is None or self._keeper.done():
            name = f"taskiq-beat-leases-{self.config.scheduler_id}"
            self._keeper = asyncio.create_task(self._keep_leases(), name=name)

    def _release(self, outcomes: list[claims.Outcome]) -> None:
        self._held.difference_update(outcome.dispatch.run_id for outcome in outcomes)

    async def _keep_leases(self) -> None:
        """Renew the lease of every held run each ``claim_ttl_seconds / 10``, while any is held.

        One task for the engine, apart from the tick loop and its backoff: a slow broker,
        a claimed-ahead batch waiting for its slot or outcomes waiting for the database
        never let a lease of this engine lapse, unless the database stays away for most of
        a lease. A failed renewal is logged and tried again at the next interval.
        """
        renewals = logs.Outage(logger, "Renewing the leases of this engine's runs")
        while self._held:
            await asyncio.sleep(self._renew_seconds)
            try:
                await self._renew_leases()
            except Exception as exc:
                renewals.failed(exc, self._renew_seconds)
                self._heartbeat.disconnected()
                if not self._writer.is_running:  # the writer has closed its own connection already
                    await self._reset_connection()
                continue
            renewals.succeeded()

    async def _renew_leases(self) -> None:
        """Extend the lease of every held run; those no longer this engine's are dropped as claim conflicts."""
        until, renewing = timezone.now() + self._lease, set(self._held)
        missed = await self._write(claims.extend_leases, self.config.scheduler_id, list(renewing), until)
        # Runs held meanwhile kept their claim's lease (``_hold`` lowered the mark for them).
        self._leases_until = until if self._held <= renewing else min(until, self._leases_until)
        self._drop_lost(missed & self._held)  # not among them: runs recorded while the renewal ran

    def _drop_lost(self, lost: set[str]) -> None:
        """Runs another engine took over: claim conflicts, and no longer this engine's to renew."""
        if lost:
            self._held -= lost
            self._counters.claim_conflict_count += len(lost)
            logger.warning(
                "Another engine took over %s this engine holds (it found this engine dead, or their leases"
                " expired); they may be sent twice.",
                logs.count(len(lost), "run"),
                extra={"run_count": len(lost)},
            )

    async def _send_all(self, dispatches: list[claims.Dispatch]) -> list[claims.Outcome]:
        limit = self._send_limit
        assert limit is not None

        async def send(dispatch: claims.Dispatch) -> claims.Outcome:
            try:
                early = (dispatch.scheduled_for - timezone.now()).total_seconds()
                if early > 0:  # claimed ahead of its slot: at most CLAIM_AHEAD_SECONDS
                    await asyncio.sleep(early)
                if dispatch.send_at is not None:
                    await self._wait_out_jitter(dispatch.send_at)
                async with limit:
                    return await self._send(dispatch)
            except Exception as exc:  # a fault of the engine's own (a send's error is its outcome): this slot's alone
                logger.exception("Sending job %s failed unexpectedly.", _job(dispatch), extra=_send_extra(dispatch))
                return claims.Outcome(dispatch, None, timezone.now(), logs.describe_error(exc))

        return list(await asyncio.gather(*(send(dispatch) for dispatch in dispatches)))

    async def _send(self, dispatch: claims.Dispatch) -> claims.Outcome:
        dispatched_at = timezone.now()
        try:
            await send_task(
                self.broker,
                dispatch.task_name,
                dispatch.args,
                dispatch.kwargs,
                job_id=dispatch.job_id,
                run_id=dispatch.run_id,
                slot=dispatch.scheduled_for,
                labels=dispatch.labels,
                timeout=self.config.dispatch_timeout_seconds,
            )
        except Exception as exc:
            outcome = claims.Outcome(dispatch, dispatched_at, timezone.now(), logs.describe_error(exc))
            # One line per failed send, whatever the outage's length: the traceback only at DEBUG.
            logger.warning(
                "Send of job %s failed: %s; %s.",
                _job(dispatch),
                logs.error_text(exc),
                self._retry_text(outcome),
                exc_info=logs.traceback_at_debug(logger, exc),
                extra=_send_extra(dispatch),
            )
            return outcome
        if logger.isEnabledFor(logging.INFO):  # a burst sends thousands a second: no line built for nothing
            logger.info("Sent job %s, run %s.", _job(dispatch), dispatch.run_id, extra=_send_extra(dispatch))
        return claims.Outcome(dispatch, dispatched_at, timezone.now(), None)

    def _retry_text(self, outcome: claims.Outcome) -> str:
        """``retry at 14:03:05 UTC, attempt 3``: when ``claims.record`` retries the job (or the run), and which try
        in a row that is."""
        dispatch = outcome.dispatch
        retry_at = self._retry.send_again_at(outcome)
        its_slot = " (its next slot)" if retry_at == dispatch.next_slot and not dispatch.retried_in_its_run else ""
        return f"retry at {logs.when(retry_at)}{its_slot}, attempt {dispatch.failures + 2}"

    async def _clean_up(self) -> None:
        for cleanup in (self._run_cleanup, self._job_cleanup, self._engine_cleanup):
            if cleanup.is_due():
                await cleanup.run()


def _sent_or_raise(results: list[int | BaseException]) -> int:
    """The slots the finished batches sent, or the first error among them (each one read, so none goes unseen)."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return sum(result for result in results if isinstance(result, int))


def _job(dispatch: claims.Dispatch) -> str:
    return logs.job(dispatch.job_id, dispatch.job_name, dispatch.task_name, dispatch.scheduled_for)


def _job_extra(dispatch: claims.Dispatch) -> dict[str, Any]:
    return logs.job_extra(dispatch.job_id, dispatch.job_name, dispatch.task_name, dispatch.scheduled_for)


def _send_extra(dispatch: claims.Dispatch) -> dict[str, Any]:
    return {**_job_extra(dispatch), "broker_task_id": dispatch.run_id}
