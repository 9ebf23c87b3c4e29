"""A state machine (hypothesis) over the engine's storage: two engines claim, send and store, while an operator
pauses, resumes, runs now and backfills, and the worker finishes runs, in any order and on a clock that moves on.

After every step the job rows must agree with the runs: each send counted once on its job, no slot sent twice, no
send of a paused job, ``max_runs`` kept, the job's last send a run that went. Clock steps wait for the batches in
flight, so no lease lapses under an engine (the take-over races have tests of their own in test_send_accounting).
"""

import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from taskiq import InMemoryBroker

from django_taskiq_beat import (
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulePolicy,
    SchedulerApp,
    SchedulerConfig,
    claims,
)
from django_taskiq_beat.middleware import RunOutcomeMiddleware, _mark_finished
from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun

pytestmark = pytest.mark.django_db

RETRY = claims.RetryPolicy(5, 60)
LEASE = timedelta(minutes=1)
ENGINES = ("engine-a", "engine-b")
EVERY_10_S = PeriodicSchedule(interval=IntervalTrigger(seconds=10))
JOBS = {  # job id -> its schedule and policy
    "catch-up-all": (EVERY_10_S, SchedulePolicy(catch_up="all")),
    "capped": (EVERY_10_S, SchedulePolicy(max_runs=3)),
    "buffered": (EVERY_10_S, SchedulePolicy(overlap="buffer_one")),
    "skipping": (EVERY_10_S, SchedulePolicy(overlap="skip", misfire_grace_seconds=15)),
    "once": (None, None),  # a one-off, 15 s after the start
}
job_ids = st.sampled_from(sorted(JOBS))
HUNT = os.environ.get("ACCOUNTING_MACHINE_EXAMPLES")  # a longer search, locally (docs/development.md)


class Clock:
    """The one clock of the engines, the API and the worker, moved by the machine alone: a replay does what the
    first run did. Each write moves it on a millisecond, as a real clock would between two writers."""

    start = now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

    def read(self) -> datetime:
        return self.now

    def tick(self, by: timedelta = timedelta(milliseconds=1)) -> datetime:
        self.now += by
        return self.now


CLOCK = Clock()


class EngineStorage(RuleBasedStateMachine):
    app: SchedulerApp  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        SchedulerRun.objects.all().delete()
        SchedulerJob.objects.all().delete()
        start = CLOCK.now = Clock.start
        for job_id, (trigger, policy) in JOBS.items():
            schedule = trigger or OneOffSchedule(run_at=start + timedelta(seconds=15))
            self.app.single(task="system.echo").upsert(schedule, job_id=job_id, policy=policy)
        # An hour of past grid to backfill: each job's slots are anchored at its creation.
        SchedulerJob.objects.update(created_at=start - timedelta(hours=1))
        self.in_flight: dict[str, list[claims.Dispatch]] = {engine: [] for engine in ENGINES}
        self.sends: Counter[str] = Counter()  # run id -> sends that went through
        self.runs_now: Counter[str] = Counter()  # job id -> run-now calls (each may add a send beyond max_runs)

    # -- the engines ---------------------------------------------------------------------------------------------

    @rule(engine=st.sampled_from(ENGINES))
    def claim(self, engine: str) -> None:
        now = CLOCK.tick()
        paused = set(
            SchedulerJob.objects.filter(is_enabled=False, finished_at__isnull=True).values_list("pk", flat=True)
        )
        taken = claims.claim_expired(engine, now, 1000, LEASE)
        due = claims.claim_due(engine, now, 1000, LEASE, RETRY)
        assert taken.failures == [] and due.failures == [], "no row here is unusable"
        claimed = [*taken.dispatches, *due.dispatches]
        assert not {dispatch.job_id for dispatch in claimed} & paused, "a paused job's slot was claimed"
        self.in_flight[engine].extend(sorted(claimed, key=lambda dispatch: (dispatch.job_id, dispatch.scheduled_for)))

    @precondition(lambda self: any(self.in_flight.values()))
    @rule(engine=st.sampled_from(ENGINES), data=st.data())
    def send_and_store(self, engine: str, data: st.DataObject) -> None:
        batch, self.in_flight[engine] = self.in_flight[engine], []
        went = data.draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)), label="went")
        now = CLOCK.tick()
        outcomes = [
            claims.Outcome(dispatch, now, now, None if ok else "ConnectionError: boom")
            for dispatch, ok in zip(batch, went, strict=True)
        ]
        assert claims.record(outcomes, now, True, RETRY, engine) == [], "no run was taken over"
        self.sends.update(dispatch.run_id for dispatch, ok in zip(batch, went, strict=True) if ok)

    @precondition(lambda self: not any(self.in_flight.values()))
    @rule(seconds=st.integers(1, 40))
    def clock_moves_on(self, seconds: int) -> None:
        CLOCK.tick(timedelta(seconds=seconds))

    @rule(data=st.data())
    def worker_finishes_a_run(self, data: st.DataObject) -> None:
        going = list(
            SchedulerRun.objects.filter(status=RunStatus.DISPATCHED, outcome="unknown")
            .order_by("job_id", "scheduled_for")
            .values_list("pk", flat=True)
        )
        if going:
            run_id = data.draw(st.sampled_from(going), label="finished run")
            _mark_finished(run_id, data.draw(st.sampled_from(["succeeded", "failed"])), CLOCK.tick(), None)

    # -- the operator ---------------------------------------------------------------------------------------------

    def _a_job(self, data: st.DataObject) -> str:
        """Any job, or as often one with a send in flight: the races worth finding act on those."""
        in_flight = sorted({dispatch.job_id for batch in self.in_flight.values() for dispatch in batch})
        return data.draw(job_ids | st.sampled_from(in_flight) if in_flight else job_ids, label="job")

    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        job_id = self._a_job(data)
        CLOCK.tick()
        self.app.pause(job_id)

    @rule(job_id=job_ids)
    def resume(self, job_id: str) -> None:
        CLOCK.tick()
        self.app.resume(job_id)

    @rule(data=st.data())
    def run_now(self, data: st.DataObject) -> None:
        job_id = self._a_job(data)
        CLOCK.tick()
        self.app.run_now(job_id)
        self.runs_now[job_id] += 1

    @rule(job_id=job_ids, minutes_ago=st.integers(1, 59), slots=st.integers(1, 4))
    def backfill(self, job_id: str, minutes_ago: int, slots: int) -> None:
        start = CLOCK.tick() - timedelta(minutes=minutes_ago)
        self.app.backfill(job_id, start, start + timedelta(seconds=10 * slots))

    # -- what must hold after every step -------------------------------------------------------------------------

    def _in_flight_counted(self, job_id: str) -> int:
        return sum(d.counted_as_sent for batch in self.in_flight.values() for d in batch if d.job_id == job_id)

    @invariant()
    def each_send_is_counted_once_on_its_job(self) -> None:
        for job_id, count in SchedulerJob.objects.values_list("pk", "dispatch_count"):
            dispatched = SchedulerRun.objects.filter(job_id=job_id, status=RunStatus.DISPATCHED).count()
            assert count == dispatched + self._in_flight_counted(job_id), job_id

    @invariant()
    def no_slot_is_sent_twice_and_each_send_is_stored(self) -> None:
        assert all(times == 1 for times in self.sends.values()), self.sends.most_common(3)
        stored = dict(SchedulerRun.objects.filter(pk__in=list(self.sends)).values_list("pk", "status"))
        assert set(stored.values()) <= {RunStatus.DISPATCHED} and len(stored) == len(self.sends)

    @invariant()
    def max_runs_is_kept(self) -> None:
        capped = SchedulerJob.objects.get(pk="capped")
        scheduled_sends = SchedulerRun.objects.filter(job=capped, status=RunStatus.DISPATCHED).exclude(
            reason="backfilled"
        )
        assert scheduled_sends.count() <= 3 + self.runs_now["capped"]
        assert capped.remaining_runs is not None and 0 <= capped.remaining_runs <= 3

    @invariant()
    def a_job_shows_a_send_that_went_or_is_going_as_its_last(self) -> None:
        """And, with nothing in flight, it shows one exactly when one of its runs went."""
        going = {d.run_id for batch in self.in_flight.values() for d in batch}
        for job_id, last in SchedulerJob.objects.values_list("pk", "last_dispatched_task_id"):
            went = SchedulerRun.objects.filter(job_id=job_id, status=RunStatus.DISPATCHED)
            if last is None:
                assert going or not went.exists(), (job_id, "shows no send, yet one went")
            else:
                assert last in going or went.filter(pk=last).exists(), (job_id, last, "shows a send that did not go")


def test_the_job_rows_agree_with_the_runs_whatever_the_engines_and_the_operator_do() -> None:
    broker = InMemoryBroker().with_middlewares(RunOutcomeMiddleware())  # overlap policies read the outcomes
    broker.register_task(lambda *args: None, task_name="system.echo")
    EngineStorage.app = SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="UTC"))
    with mock.patch.object(timezone, "now", CLOCK.read):
        run_state_machine_as_test(
            EngineStorage,
            settings=settings(
                max_examples=int(HUNT or 40),
                stateful_step_count=50 if HUNT else 30,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            ),
        )
