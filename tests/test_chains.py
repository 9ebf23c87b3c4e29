"""Task chains: the reference's 18 scenarios, then robustness and progress.

Steps run on an in-process broker that executes each task in the background, so the
orchestrator really waits for results through the result backend.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from taskiq import InMemoryBroker
from taskiq.result_backends.dummy import DummyResultBackend

from django_taskiq_beat import (
    CHAIN_ORCHESTRATOR_TASK_NAME,
    ChainAbortedError,
    ChainStep,
    ImmediateDispatch,
    IntervalTrigger,
    OneOffSchedule,
    PeriodicSchedule,
    SchedulerApp,
    SchedulerConfig,
    SchedulerValidationError,
    TaskChain,
)
from django_taskiq_beat.chains import run_chain
from django_taskiq_beat.models import SchedulerJob, SchedulerRun
from django_taskiq_beat.sending import run_from_sync

pytestmark = pytest.mark.django_db(transaction=True)


class Steps:
    """The step tasks of these tests, and what they did."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failures_left: dict[str, int] = {}


@pytest.fixture
def steps() -> Steps:
    return Steps()


@pytest.fixture
def broker(steps: Steps) -> InMemoryBroker:
    broker = InMemoryBroker()  # tasks run in the background: the orchestrator waits for results

    def step(name: str) -> Callable[..., Awaitable[str]]:
        async def run(*args: Any, **kwargs: Any) -> str:
            steps.calls.append(name)
            if steps.failures_left.get(name, 0) > 0:
                steps.failures_left[name] -= 1
                raise RuntimeError(f"{name} failed")
            if kwargs.get("sleep"):
                await asyncio.sleep(kwargs["sleep"])
            return name

        return run

    for name in ("a", "b", "c", "flaky", "slow"):
        broker.register_task(step(name), task_name=f"chain.{name}")
    return broker


@pytest.fixture
def app(broker: InMemoryBroker) -> SchedulerApp:
    return SchedulerApp(broker=broker, config=SchedulerConfig(default_timezone="UTC", sync_interval_seconds=30))


def payload(*chain_steps: ChainStep, **options: Any) -> dict[str, Any]:
    return TaskChain(steps=list(chain_steps), **{"wait_poll_interval_seconds": 0.01, **options}).to_payload()


def run(broker: InMemoryBroker, chain_payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return async_to_sync(run_chain)(broker, chain_payload, **kwargs)


def aborted(broker: InMemoryBroker, chain_payload: dict[str, Any]) -> ChainAbortedError:
    with pytest.raises(ChainAbortedError) as caught:
        run(broker, chain_payload)
    return caught.value


# -- the reference's test_chains.py ------------------------------------------------------------------


def test_task_chain_requires_at_least_one_step() -> None:
    with pytest.raises(SchedulerValidationError, match="at least one step"):
        TaskChain(steps=[])


def test_task_chain_rejects_invalid_failure_policy() -> None:
    with pytest.raises(SchedulerValidationError, match="on_failure") as caught:
        TaskChain(steps=[ChainStep(task="chain.a")], on_failure="skip")
    assert caught.value.value == "skip"


def test_chain_step_rejects_bad_attempts() -> None:
    with pytest.raises(SchedulerValidationError, match="max_attempts"):
        ChainStep(task="chain.a", max_attempts=0)


def test_chain_step_rejects_bad_post_delay() -> None:
    with pytest.raises(SchedulerValidationError, match="post_delay_ms"):
        ChainStep(task="chain.a", post_delay_ms=-1)


def test_scheduler_app_registers_chain_orchestrator_task(app: SchedulerApp, broker: InMemoryBroker) -> None:
    assert broker.find_task(CHAIN_ORCHESTRATOR_TASK_NAME) is not None


def test_chain_builder_persists_job(app: SchedulerApp) -> None:
    job = app.chain(
        steps=[ChainStep(task="chain.a", args=[1]), ChainStep(task="chain.b", post_delay_ms=250)],
        metadata={"owner": "reports"},
    ).schedule(OneOffSchedule(run_at=timezone.now() + timedelta(hours=1)))
    stored = SchedulerJob.objects.get(pk=job.pk)
    assert stored.task_name == CHAIN_ORCHESTRATOR_TASK_NAME and stored.task_args == []
    assert stored.metadata_payload == {"chain": True, "chain_step_count": 2, "owner": "reports"}
    assert stored.task_kwargs["on_failure"] == "stop"
    assert stored.task_kwargs["steps"][0]["task_name"] == "chain.a"
    assert stored.task_kwargs["steps"][1]["post_delay_ms"] == 250
    assert stored.task_kwargs["steps"][0] == {
        "task_name": "chain.a",
        "args": [1],
        "kwargs": {},
        "max_attempts": None,
        "retry_delay_seconds": None,
        "timeout_seconds": None,
        "post_delay_ms": None,
    }


def test_chain_builder_defaults_to_immediate_dispatch(app: SchedulerApp, broker: InMemoryBroker, steps: Steps) -> None:
    job = app.chain(steps=[ChainStep(task="chain.a")]).schedule()
    assert (job.kind, job.strategy, job.is_enabled, job.dispatch_count) == ("one_off", "immediate", False, 1)
    assert job.last_dispatched_task_id
    run_from_sync(broker.wait_all)  # sync code sends on the process's background loop: the chain runs there
    for _ in range(200):
        if steps.calls:
            break
        run_from_sync(asyncio.sleep, 0.01)
    assert steps.calls == ["a"]


def test_chain_builder_rejects_immediate_dispatch_upsert(app: SchedulerApp) -> None:
    with pytest.raises(SchedulerValidationError, match="ImmediateDispatch cannot be used with upsert"):
        app.chain(steps=[ChainStep(task="chain.a")]).upsert(ImmediateDispatch(), job_id="chain")


def test_chain_orchestrator_runs_steps_sequentially(broker: InMemoryBroker, steps: Steps) -> None:
    summary = run(broker, payload(ChainStep(task="chain.a"), ChainStep(task="chain.b")))
    assert summary == {"status": "completed", "chain_attempts": 1, "completed_steps": 2, "step_attempts": [1, 1]}
    assert steps.calls == ["a", "b"]


def test_chain_orchestrator_uses_post_delay_between_steps(broker: InMemoryBroker) -> None:
    slept: list[float] = []

    async def record_sleep(seconds: float) -> None:
        slept.append(seconds)

    chain_payload = payload(
        ChainStep(task="chain.a", post_delay_ms=100),
        ChainStep(task="chain.b", post_delay_ms=200),
        ChainStep(task="chain.c", post_delay_ms=300),
    )
    run(broker, chain_payload, sleep=record_sleep)
    assert slept == [0.1, 0.2]  # never after the last step


@pytest.mark.parametrize(("post_delay_ms", "expected"), [(250, [0.25]), (0, []), (None, [])])
def test_chain_orchestrator_sleep_after_step_converts_ms_to_seconds(
    broker: InMemoryBroker, post_delay_ms: int | None, expected: list[float]
) -> None:
    slept: list[float] = []

    async def record_sleep(seconds: float) -> None:
        slept.append(seconds)

    run(
        broker,
        payload(ChainStep(task="chain.a", post_delay_ms=post_delay_ms), ChainStep(task="chain.b")),
        sleep=record_sleep,
    )
    assert slept == expected


def test_chain_orchestrator_retries_step_until_success(broker: InMemoryBroker, steps: Steps) -> None:
    steps.failures_left["flaky"] = 2
    summary = run(broker, payload(ChainStep(task="chain.flaky", max_attempts=3)))
    assert summary["status"] == "completed" and summary["step_attempts"] == [3]


def test_chain_orchestrator_stops_on_failure(broker: InMemoryBroker, steps: Steps) -> None:
    steps.failures_left["flaky"] = 10
    error = aborted(
        broker,
        payload(
            ChainStep(task="chain.a"),
            ChainStep(task="chain.flaky", max_attempts=2),
            ChainStep(task="chain.b"),
            on_failure="stop",
            max_chain_attempts=3,
        ),
    )
    assert steps.calls == ["a", "flaky", "flaky"]
    assert (error.chain_attempts, error.last_error.step_index, error.last_error.attempts) == (1, 1, 2)
    assert "flaky failed" in error.last_error.reason


def test_chain_orchestrator_restarts_chain(broker: InMemoryBroker, steps: Steps) -> None:
    steps.failures_left["flaky"] = 1
    summary = run(
        broker,
        payload(
            ChainStep(task="chain.a"),
            ChainStep(task="chain.flaky"),
            on_failure="restart",
            max_chain_attempts=3,
        ),
    )
    assert steps.calls == ["a", "flaky", "a", "flaky"]
    assert summary["chain_attempts"] == 2


def test_chain_orchestrator_rejects_unknown_task(broker: InMemoryBroker) -> None:
    error = aborted(broker, payload(ChainStep(task="chain.gone")))
    assert "not registered" in error.last_error.reason and error.last_error.attempts == 0


def test_chain_builder_accepts_task_object_directly(app: SchedulerApp, broker: InMemoryBroker) -> None:
    first, second = broker.find_task("chain.a"), broker.find_task("chain.b")
    job = app.chain(steps=[ChainStep(task=first), ChainStep(task=second)]).schedule(
        OneOffSchedule(run_at=timezone.now() + timedelta(hours=1))
    )
    assert [step["task_name"] for step in job.task_kwargs["steps"]] == ["chain.a", "chain.b"]


def test_scheduler_dispatches_chain_end_to_end(app: SchedulerApp, steps: Steps) -> None:
    async def scenario() -> None:
        await app.start()
        await app.chain(steps=[ChainStep(task="chain.a"), ChainStep(task="chain.b")]).aupsert(
            OneOffSchedule(run_at=timezone.now()), job_id="chain.e2e"
        )
        for _ in range(500):
            if steps.calls == ["a", "b"]:
                break
            await asyncio.sleep(0.01)
        await app.stop()

    async_to_sync(scenario)()
    assert steps.calls == ["a", "b"]


def test_chain_builder_upsert_updates_existing_job(app: SchedulerApp) -> None:
    hourly = PeriodicSchedule(interval=IntervalTrigger(hours=1))
    first = app.chain(steps=[ChainStep(task="chain.a", args=[1])]).upsert(hourly, job_id="chain.sync")
    second = app.chain(steps=[ChainStep(task="chain.a", args=[2]), ChainStep(task="chain.b")]).upsert(
        hourly, job_id="chain.sync"
    )
    assert first.id == second.id and SchedulerJob.objects.count() == 1
    stored = SchedulerJob.objects.get()
    assert stored.task_kwargs["steps"][0]["args"] == [2] and len(stored.task_kwargs["steps"]) == 2


# -- validation at schedule time ------------------------------------------------------------------------


def test_a_step_task_the_broker_does_not_know_is_refused_when_scheduling(app: SchedulerApp) -> None:
    with pytest.raises(SchedulerValidationError, match="not registered") as caught:
        app.chain(steps=[ChainStep(task="chain.a"), ChainStep(task="chain.gone")]).schedule(
            OneOffSchedule(run_at=timezone.now())
        )
    assert caught.value.field == "steps[1].task"
    assert not SchedulerJob.objects.exists()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_chain_attempts": 0}, "max_chain_attempts"),
        ({"default_step_max_attempts": 0}, "default_step_max_attempts"),
        ({"default_step_retry_delay_seconds": -1}, "default_step_retry_delay_seconds"),
        ({"default_step_timeout_seconds": 0}, "default_step_timeout_seconds"),
        ({"wait_poll_interval_seconds": 0}, "wait_poll_interval_seconds"),
    ],
)
def test_chain_options_are_validated_by_name(options: dict[str, Any], field: str) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        TaskChain(steps=[ChainStep(task="chain.a")], **options)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"retry_delay_seconds": -0.5}, "retry_delay_seconds"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"args": [object()]}, "args"),
        ({"max_attempts": 1.5}, "max_attempts"),
    ],
)
def test_chain_step_options_are_validated_by_name(options: dict[str, Any], field: str) -> None:
    with pytest.raises(SchedulerValidationError) as caught:
        ChainStep(task="chain.a", **options)
    assert caught.value.field == field


# -- robustness the reference lacks -------------------------------------------------------------------------


def test_chains_need_a_result_backend(app: SchedulerApp, broker: InMemoryBroker) -> None:
    broker.result_backend = DummyResultBackend()
    with pytest.raises(SchedulerValidationError, match="result backend"):
        app.chain(steps=[ChainStep(task="chain.a")]).schedule(OneOffSchedule(run_at=timezone.now()))
    with pytest.raises(SchedulerValidationError, match="result backend"):
        run(broker, payload(ChainStep(task="chain.a")))


def test_waiting_survives_a_passing_result_backend_error(
    broker: InMemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_is_ready = broker.result_backend.is_result_ready
    failures = [2]

    async def flaky_is_ready(task_id: str) -> bool:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("result backend restarting")
        return await real_is_ready(task_id)

    monkeypatch.setattr(broker.result_backend, "is_result_ready", flaky_is_ready)
    assert run(broker, payload(ChainStep(task="chain.a")))["status"] == "completed"
    assert failures == [0]


def test_a_step_that_times_out_is_reported_as_such(broker: InMemoryBroker) -> None:
    error = aborted(broker, payload(ChainStep(task="chain.slow", kwargs={"sleep": 0.3}, timeout_seconds=0.1)))
    assert "timed out after 0.1 s" in error.last_error.reason and "may still be running" in error.last_error.reason
    async_to_sync(broker.wait_all)()


def test_a_step_error_without_a_message_still_names_its_type(broker: InMemoryBroker) -> None:
    async def bare() -> None:
        raise RuntimeError()

    broker.register_task(bare, task_name="chain.bare")
    error = aborted(broker, payload(ChainStep(task="chain.bare")))
    assert error.last_error.reason == "RuntimeError: "
    assert str(error).endswith("failed after 1 attempt(s): RuntimeError: ")


@pytest.mark.parametrize("option", ["retry_delay_seconds", "timeout_seconds", "post_delay_ms"])
def test_non_finite_step_options_are_refused(option: str) -> None:
    with pytest.raises(SchedulerValidationError):
        ChainStep(task="chain.a", **{option: float("nan")})


def test_chain_errors_survive_pickling() -> None:
    import pickle

    from django_taskiq_beat import ChainStepFailedError

    error = ChainAbortedError(2, ChainStepFailedError(1, "chain.b", 3, "boom"))
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.chain_attempts, copy.last_error.step_index, str(copy)) == (2, 1, str(error))


# -- progress on the chain's run row ------------------------------------------------------------------------


def _run_chain_job(app: SchedulerApp, steps_list: list[ChainStep], **options: Any) -> SchedulerRun:
    job = app.chain(steps=steps_list, wait_poll_interval_seconds=0.01, **options).schedule(
        OneOffSchedule(run_at=timezone.now())
    )

    async def scenario() -> None:
        await app.engine.run_once()
        await app.broker.wait_all()  # type: ignore[attr-defined]

    async_to_sync(scenario)()
    return SchedulerRun.objects.get(job=job)


def test_progress_of_a_completed_chain(app: SchedulerApp, steps: Steps) -> None:
    steps.failures_left["flaky"] = 1
    run_row = _run_chain_job(app, [ChainStep(task="chain.a"), ChainStep(task="chain.flaky", max_attempts=2)])
    progress = run_row.progress
    assert progress["status"] == "succeeded" and progress["chain_attempt"] == 1 and progress["current_step"] is None
    assert [(s["task_name"], s["status"], s["attempts"]) for s in progress["steps"]] == [
        ("chain.a", "succeeded", 1),
        ("chain.flaky", "succeeded", 2),
    ]
    assert progress["result"]["step_attempts"] == [1, 2] and progress["error"] is None


def test_progress_of_a_failed_chain(app: SchedulerApp, steps: Steps) -> None:
    steps.failures_left["flaky"] = 5
    run_row = _run_chain_job(app, [ChainStep(task="chain.flaky", max_attempts=2), ChainStep(task="chain.b")])
    progress = run_row.progress
    assert progress["status"] == "failed" and "Chain aborted after 1 attempt(s)" in progress["error"]
    assert [(s["status"], s["attempts"]) for s in progress["steps"]] == [("failed", 2), ("pending", 0)]
    assert "flaky failed" in progress["steps"][0]["error"]


def test_progress_of_an_immediate_chain_is_not_overwritten_by_its_dispatch_record(
    broker: InMemoryBroker, steps: Steps
) -> None:
    inline = InMemoryBroker(await_inplace=True)  # the chain finishes inside the send
    inline.register_task(broker.find_task("chain.a").original_func, task_name="chain.a")  # type: ignore[union-attr]
    app = SchedulerApp(broker=inline, config=SchedulerConfig(default_timezone="UTC"))
    job = app.chain(steps=[ChainStep(task="chain.a")], wait_poll_interval_seconds=0.01).schedule()
    assert SchedulerRun.objects.get(job=job).progress["status"] == "succeeded"


def test_progress_keeps_the_attempt_before_a_restart(app: SchedulerApp, steps: Steps) -> None:
    steps.failures_left["flaky"] = 1
    run_row = _run_chain_job(
        app, [ChainStep(task="chain.a"), ChainStep(task="chain.flaky")], on_failure="restart", max_chain_attempts=2
    )
    progress = run_row.progress
    assert progress["status"] == "succeeded" and progress["chain_attempt"] == 2
    (earlier,) = progress["earlier_attempts"]
    assert [(s["status"], s["attempts"]) for s in earlier] == [("succeeded", 1), ("failed", 1)]
    assert "flaky failed" in earlier[1]["error"]


def test_progress_shows_a_step_waiting_to_retry(app: SchedulerApp, steps: Steps) -> None:
    from django_taskiq_beat.chains import ChainProgress

    saved: list[str] = []
    real_save = ChainProgress.save

    async def spy(progress: ChainProgress) -> None:
        saved.append(progress.state["steps"][0]["status"])
        await real_save(progress)

    steps.failures_left["flaky"] = 1
    original, ChainProgress.save = ChainProgress.save, spy  # type: ignore[method-assign]
    try:
        _run_chain_job(app, [ChainStep(task="chain.flaky", max_attempts=2)])
    finally:
        ChainProgress.save = original  # type: ignore[method-assign]
    assert saved[:3] == ["running", "retrying", "running"]


def test_progress_records_a_chain_that_could_not_start(app: SchedulerApp, broker: InMemoryBroker) -> None:
    job = app.chain(steps=[ChainStep(task="chain.a")]).schedule(OneOffSchedule(run_at=timezone.now()))
    broker.result_backend = DummyResultBackend()  # the worker's broker has no result backend

    async def scenario() -> None:
        await app.engine.run_once()
        await broker.wait_all()

    async_to_sync(scenario)()
    progress = SchedulerRun.objects.get(job=job).progress
    assert progress["status"] == "failed" and "result backend" in progress["error"]


def test_a_running_chain_keeps_the_steps_it_started_with(
    app: SchedulerApp, broker: InMemoryBroker, steps: Steps
) -> None:
    hourly = PeriodicSchedule(interval=IntervalTrigger(hours=1))
    job = app.chain(
        steps=[ChainStep(task="chain.slow", kwargs={"sleep": 0.3}), ChainStep(task="chain.a")],
        wait_poll_interval_seconds=0.01,
    ).upsert(hourly, job_id="chain.changing")
    app.run_now(job.id)

    async def scenario() -> None:
        await app.engine.run_once()
        await asyncio.sleep(0.1)  # the chain is in its first step
        await app.chain(steps=[ChainStep(task="chain.b")]).aupsert(hourly, job_id="chain.changing")
        await broker.wait_all()

    async_to_sync(scenario)()
    assert steps.calls == ["slow", "a"]
    assert SchedulerJob.objects.get(pk=job.pk).task_kwargs["steps"][0]["task_name"] == "chain.b"


# -- log lines: each names the chain's job and the step ----------------------------------------------------------


def chain_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.name == "django_taskiq_beat.chains"
    ]


def test_chain_lines_name_the_job_and_the_step(
    broker: InMemoryBroker, steps: Steps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_taskiq_beat.chains")
    steps.failures_left["flaky"] = 1
    run(
        broker,
        payload(ChainStep(task="chain.a"), ChainStep(task="chain.flaky", max_attempts=2, retry_delay_seconds=0.01)),
        job_id="reports.nightly",
        run_id="run-1",
    )
    assert chain_lines(caplog) == [
        ("INFO", "Chain of job reports.nightly: step 0 (chain.a) completed, attempt 1 of 1."),
        (
            "WARNING",
            "Chain of job reports.nightly: step 1 (chain.flaky) failed, attempt 1 of 2: RuntimeError: flaky"
            " failed; retrying in 0.01 s.",
        ),
        ("INFO", "Chain of job reports.nightly: step 1 (chain.flaky) completed, attempt 2 of 2."),
        ("INFO", "Chain of job reports.nightly completed: 2 steps, chain attempt 1."),
    ]
    ours = [record for record in caplog.records if record.name == "django_taskiq_beat.chains"]
    assert {(record.job_id, record.run_id) for record in ours} == {  # type: ignore[attr-defined]
        ("reports.nightly", "run-1")
    }


def test_a_failed_step_says_what_the_chain_does_next(
    broker: InMemoryBroker, steps: Steps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="django_taskiq_beat.chains")
    steps.failures_left["flaky"] = 10
    with pytest.raises(ChainAbortedError):
        run(
            broker,
            payload(ChainStep(task="chain.flaky"), on_failure="restart", max_chain_attempts=2),
            job_id="reports.nightly",
        )
    assert chain_lines(caplog) == [
        (
            "WARNING",
            "Chain of job reports.nightly: step 0 (chain.flaky) failed after 1 attempt: RuntimeError: flaky"
            " failed; restarting the chain (attempt 2 of 2).",
        ),
        (
            "WARNING",
            "Chain of job reports.nightly: step 0 (chain.flaky) failed after 1 attempt: RuntimeError: flaky"
            " failed; no chain attempt left (2 made).",
        ),
    ]


def test_the_orchestrator_names_the_chain_by_the_job_label_it_was_sent_with(
    app: SchedulerApp, broker: InMemoryBroker, steps: Steps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_taskiq_beat.chains")
    job = app.chain(steps=[ChainStep(task="chain.a")]).schedule(job_id="reports.chain")
    run_from_sync(broker.wait_all)
    for _ in range(200):
        if len(chain_lines(caplog)) == 2:
            break
        run_from_sync(asyncio.sleep, 0.01)
    assert [message for _, message in chain_lines(caplog)] == [
        f"Chain of job {job.id}: step 0 (chain.a) completed, attempt 1 of 1.",
        f"Chain of job {job.id} completed: 1 step, chain attempt 1.",
    ]
