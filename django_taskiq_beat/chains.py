"""Task chains: steps run one after another by an orchestrator task in the worker.

A chain is stored as a job whose task is the orchestrator
(``taskiq_beat.chain_orchestrator``, the name taskiq-beat uses) and whose kwargs hold
the steps and options. When the job fires, the orchestrator sends each step with
``kiq``, waits for its result through the broker's result backend, retries it, and
writes its progress to the chain's run row.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import close_old_connections
from taskiq import AsyncBroker, Context, TaskiqDepends, TaskiqResult
from taskiq.result_backends.dummy import DummyResultBackend

from django_taskiq_beat import logs
from django_taskiq_beat.exceptions import SchedulerValidationError
from django_taskiq_beat.payloads import MAX_SECONDS, require_json, require_number, task_name_of
from django_taskiq_beat.sending import JOB_LABEL, RUN_LABEL

CHAIN_ORCHESTRATOR_TASK_NAME = "taskiq_beat.chain_orchestrator"
FAILURE_POLICIES = ("stop", "restart")
MAX_ATTEMPTS = 1000
_BACKEND_OUTAGE_TOLERATED_SECONDS = 60.0  # result-backend errors in a row for this long end a wait

logger = logging.getLogger("django_taskiq_beat.chains")


class ChainStepFailedError(RuntimeError):
    """A step used up its attempts."""

    def __init__(self, step_index: int, task_name: str, attempts: int, reason: str) -> None:
        self.step_index, self.task_name, self.attempts, self.reason = step_index, task_name, attempts, reason
        super().__init__(f"Chain step {step_index} ({task_name}) failed after {attempts} attempt(s): {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # result backends that pickle errors rebuild it
        return type(self), (self.step_index, self.task_name, self.attempts, self.reason)


class ChainAbortedError(RuntimeError):
    """The chain stopped without completing: ``last_error`` says which step and why."""

    def __init__(self, chain_attempts: int, last_error: ChainStepFailedError) -> None:
        self.chain_attempts, self.last_error = chain_attempts, last_error
        super().__init__(f"Chain aborted after {chain_attempts} attempt(s). Last error: {last_error}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.chain_attempts, self.last_error)


@dataclass(frozen=True)
class ChainStep:
    """One step: a task (object or name) with its args, kwargs and retry options."""

    task: Any
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_attempts: int | None = None
    retry_delay_seconds: float | None = None
    timeout_seconds: float | None = None
    post_delay_ms: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", task_name_of(self.task))
        object.__setattr__(self, "args", require_json(self.args, "args", list))
        object.__setattr__(self, "kwargs", require_json(self.kwargs, "kwargs", dict))
        for name, minimum, inclusive, integer, maximum in (
            ("max_attempts", 1, True, True, MAX_ATTEMPTS),
            ("retry_delay_seconds", 0, True, False, MAX_SECONDS),
            ("timeout_seconds", 0, False, False, MAX_SECONDS),
            ("post_delay_ms", 0, True, False, MAX_SECONDS * 1000),
        ):
            if getattr(self, name) is not None:  # unset: the chain's default applies
                require_number(
                    name, getattr(self, name), minimum=minimum, inclusive=inclusive, integer=integer, maximum=maximum
                )

    @property
    def task_name(self) -> str:
        return str(self.task)

    def to_payload(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["task_name"] = payload.pop("task")
        return payload


@dataclass(frozen=True)
class TaskChain:
    """Steps and the options that govern the whole chain."""

    steps: list[ChainStep]
    on_failure: str = "stop"
    max_chain_attempts: int = 1
    default_step_max_attempts: int = 1
    default_step_retry_delay_seconds: float = 0.0
    default_step_timeout_seconds: float | None = None
    wait_poll_interval_seconds: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.steps, list | tuple) or not self.steps:
            raise SchedulerValidationError("steps", self.steps, "Task chain must have at least one step.")
        for step in self.steps:
            if not isinstance(step, ChainStep):
                raise SchedulerValidationError("steps", step, "Every step must be a ChainStep.")
        object.__setattr__(self, "steps", list(self.steps))
        if self.on_failure not in FAILURE_POLICIES:
            raise SchedulerValidationError("on_failure", self.on_failure, "on_failure must be 'stop' or 'restart'.")
        for name in ("max_chain_attempts", "default_step_max_attempts"):
            require_number(name, getattr(self, name), minimum=1, inclusive=True, integer=True, maximum=MAX_ATTEMPTS)
        require_number(
            "default_step_retry_delay_seconds",
            self.default_step_retry_delay_seconds,
            minimum=0,
            inclusive=True,
            maximum=MAX_SECONDS,
        )
        if self.default_step_timeout_seconds is not None:
            require_number(
                "default_step_timeout_seconds",
                self.default_step_timeout_seconds,
                minimum=0,
                inclusive=False,
                maximum=MAX_SECONDS,
            )
        require_number(
            "wait_poll_interval_seconds",
            self.wait_poll_interval_seconds,
            minimum=0,
            inclusive=False,
            maximum=MAX_SECONDS,
        )

    def to_payload(self) -> dict[str, Any]:
        """The orchestrator's kwargs, as stored in the job's ``task_kwargs``."""
        return {
            "steps": [step.to_payload() for step in self.steps],
            "on_failure": self.on_failure,
            "max_chain_attempts": self.max_chain_attempts,
            "default_step_max_attempts": self.default_step_max_attempts,
            "default_step_retry_delay_seconds": self.default_step_retry_delay_seconds,
            "default_step_timeout_seconds": self.default_step_timeout_seconds,
            "wait_poll_interval_seconds": self.wait_poll_interval_seconds,
        }


def require_result_backend(broker: AsyncBroker) -> None:
    """Chains wait for step results: without a result backend taskiq returns nothing at once."""
    if isinstance(broker.result_backend, DummyResultBackend):
        raise SchedulerValidationError(
            "broker",
            type(broker).__name__,
            "Task chains need a result backend on the broker (for example "
            "broker.with_result_backend(RedisAsyncResultBackend(...))); this broker has none.",
        )


# -- the orchestrator ---------------------------------------------------------------------------


class _StepTimedOut(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:g} s waiting for the result")


class _Names:
    """How the orchestrator's lines name the chain (by its job, from the message's label) and a step."""

    def __init__(self, job_id: object, run_id: str | None) -> None:
        job_id = str(job_id) if job_id else None  # a label: a string, unless someone sent another scalar
        self.chain = f"Chain of job {logs.job(job_id)}" if job_id else "Chain"
        self.extra: dict[str, Any] = {"job_id": job_id, "run_id": run_id}

    def step(self, index: int, task_name: str) -> str:
        return f"{self.chain}: step {index} ({task_name})"


class ChainProgress:
    """The chain's state, written to its run row's ``progress`` after every change.

    Writes are best-effort: a failure is logged and the chain goes on.
    """

    def __init__(self, run_id: str | None, steps: list[dict[str, Any]], job_id: str | None = None) -> None:
        self.run_id = run_id
        self.names = _Names(job_id, run_id)
        self.state: dict[str, Any] = {
            "status": "running",
            "chain_attempt": 0,
            "current_step": None,
            "steps": [
                {"task_name": step.get("task_name"), "status": "pending", "attempts": 0, "error": None}
                for step in steps
            ],
            "earlier_attempts": [],
            "result": None,
            "error": None,
        }

    def start_attempt(self, chain_attempt: int) -> None:
        """A (re)start from the first step; the steps of the attempt before are kept."""
        if chain_attempt > 1:
            self.state["earlier_attempts"].append([dict(step) for step in self.state["steps"]])
        self.state["chain_attempt"] = chain_attempt
        for step in self.state["steps"]:
            step.update(status="pending", attempts=0, error=None)

    def step(self, index: int, **changes: Any) -> None:
        self.state["current_step"] = index
        self.state["steps"][index].update(changes)

    def finish(self, *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        self.state.update(status="failed" if error else "succeeded", current_step=None, result=result, error=error)

    async def save(self) -> None:
        if self.run_id is None or not apps.ready:
            return
        try:
            await sync_to_async(_save_progress)(self.run_id, self.state)
        except Exception as exc:
            logger.warning(
                "%s: recording its progress on run %s failed: %s; the chain goes on.",
                self.names.chain,
                self.run_id,
                logs.error_text(exc),
                exc_info=logs.traceback_at_debug(logger, exc),
                extra=self.names.extra,
            )


def _save_progress(run_id: str, state: dict[str, Any]) -> None:
    from django.utils import timezone

    from django_taskiq_beat.models import SchedulerRun

    close_old_connections()  # a worker has no request cycle: drop a connection the server closed
    SchedulerRun.objects.filter(pk=run_id).update(progress=state, updated_at=timezone.now())


async def _wait_for_result(
    sent: Any, timeout: float | None, poll_interval: float, step: str, extra: dict[str, Any]
) -> TaskiqResult[Any]:
    """Poll for the step's result.

    Result-backend errors do not end the wait until they have lasted
    ``_BACKEND_OUTAGE_TOLERATED_SECONDS``: the step may well have succeeded, and
    sending it again would run it twice. Such an outage is two lines, not one per poll:
    its first error and its end.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    failing_since: float | None = None
    while True:
        try:
            if await sent.is_ready():
                return await sent.get_result()
            if failing_since is not None:
                logger.info(
                    "%s: the result backend answers again after %s.",
                    step,
                    logs.seconds(time.monotonic() - failing_since),
                    extra=extra,
                )
            failing_since = None
        except Exception as exc:
            if failing_since is None:
                failing_since = time.monotonic()
                logger.warning(
                    "%s: the result backend failed: %s; still waiting for the result (up to %s).",
                    step,
                    logs.error_text(exc),
                    logs.seconds(_BACKEND_OUTAGE_TOLERATED_SECONDS),
                    exc_info=logs.traceback_at_debug(logger, exc),
                    extra=extra,
                )
            if time.monotonic() - failing_since >= _BACKEND_OUTAGE_TOLERATED_SECONDS:
                raise
        if deadline is not None and time.monotonic() >= deadline:
            raise _StepTimedOut(timeout or 0)
        await asyncio.sleep(poll_interval)


async def run_chain(
    broker: AsyncBroker,
    payload: dict[str, Any],
    *,
    run_id: str | None = None,
    job_id: str | None = None,
    step_labels: dict[str, Any] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """Run the chain described by ``payload`` (the job's kwargs); raises ``ChainAbortedError``.

    ``step_labels`` go with every step's message.

    Whatever ends it (an aborted chain, no result backend, a bad payload, the worker
    shutting down), the run row's progress says so. ``job_id`` names the chain in log lines.
    """
    progress = ChainProgress(run_id, payload.get("steps") or [], job_id)
    try:
        require_result_backend(broker)
        return await _run_chain(broker, payload, progress, step_labels or {}, sleep)
    except BaseException as error:
        if progress.state["status"] == "running":
            progress.finish(
                error=logs.describe_error(error) if not isinstance(error, ChainAbortedError) else str(error)
            )
            await asyncio.shield(progress.save())
        raise


async def _run_chain(
    broker: AsyncBroker,
    payload: dict[str, Any],
    progress: ChainProgress,
    step_labels: dict[str, Any],
    sleep: Callable[[float], Awaitable[None]],
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = payload["steps"]
    chain_attempts = 0
    last_error: ChainStepFailedError | None = None
    while chain_attempts < payload["max_chain_attempts"]:
        chain_attempts += 1
        progress.start_attempt(chain_attempts)
        try:
            step_attempts = await _run_steps(broker, payload, progress, step_labels, sleep)
        except ChainStepFailedError as error:
            last_error = error
            if payload["on_failure"] == "stop":
                then = "stopping the chain"
            elif chain_attempts < payload["max_chain_attempts"]:
                then = f"restarting the chain (attempt {chain_attempts + 1} of {payload['max_chain_attempts']})"
            else:
                then = f"no chain attempt left ({chain_attempts} made)"
            logger.warning(
                "%s failed after %s: %s; %s.",
                progress.names.step(error.step_index, error.task_name),
                logs.count(error.attempts, "attempt"),
                logs.one_line(error.reason),
                then,
                extra={
                    **progress.names.extra,
                    "chain_attempts": chain_attempts,
                    "step_index": error.step_index,
                    "task_name": error.task_name,
                    "reason": error.reason,
                    "on_failure": payload["on_failure"],
                },
            )
            if payload["on_failure"] == "stop":
                break
            continue
        summary = {
            "status": "completed",
            "chain_attempts": chain_attempts,
            "completed_steps": len(steps),
            "step_attempts": step_attempts,
        }
        progress.finish(result=summary)
        await progress.save()
        logger.info(
            "%s completed: %s, chain attempt %d.",
            progress.names.chain,
            logs.count(len(steps), "step"),
            chain_attempts,
            extra={
                **progress.names.extra,
                "chain_attempts": chain_attempts,
                "completed_steps": len(steps),
                "step_attempts": step_attempts,
            },
        )
        return summary
    assert last_error is not None
    raise ChainAbortedError(chain_attempts, last_error)


async def _run_steps(
    broker: AsyncBroker,
    payload: dict[str, Any],
    progress: ChainProgress,
    step_labels: dict[str, Any],
    sleep: Callable[[float], Awaitable[None]],
) -> list[int]:
    step_attempts: list[int] = []
    steps = payload["steps"]
    for index, step in enumerate(steps):
        attempts = await _run_step(broker, payload, index, step, progress, step_labels, sleep)
        step_attempts.append(attempts)
        if index < len(steps) - 1 and step.get("post_delay_ms"):
            await sleep(step["post_delay_ms"] / 1000)
    return step_attempts


async def _run_step(
    broker: AsyncBroker,
    payload: dict[str, Any],
    index: int,
    step: dict[str, Any],
    progress: ChainProgress,
    step_labels: dict[str, Any],
    sleep: Callable[[float], Awaitable[None]],
) -> int:
    """Run one step until it succeeds; returns the attempts it took or raises ``ChainStepFailedError``."""
    name = step["task_name"]
    names = progress.names
    task = broker.find_task(name)
    if task is None:
        reason = "task is not registered in the broker"
        progress.step(index, status="failed", error=reason)
        await progress.save()
        raise ChainStepFailedError(index, name, 0, reason)
    max_attempts = step.get("max_attempts") or payload["default_step_max_attempts"]
    retry_delay = _first_set(step.get("retry_delay_seconds"), payload["default_step_retry_delay_seconds"])
    timeout = _first_set(step.get("timeout_seconds"), payload["default_step_timeout_seconds"])
    reason = ""
    for attempt in range(1, max_attempts + 1):
        progress.step(index, status="running", attempts=attempt)
        await progress.save()
        extra = {
            **names.extra,
            "step_index": index,
            "task_name": name,
            "attempt": attempt,
            "max_attempts": max_attempts,
        }
        try:
            sent = await task.kicker().with_labels(**step_labels).kiq(*step.get("args", []), **step.get("kwargs", {}))
            result = await _wait_for_result(
                sent, timeout, payload["wait_poll_interval_seconds"], names.step(index, name), extra
            )
        except _StepTimedOut as timed_out:
            reason = f"{timed_out} (task {sent.task_id} may still be running)"
        except Exception as exc:
            reason = logs.describe_error(exc)
        else:
            if not result.is_err:
                progress.step(index, status="succeeded", error=None)
                await progress.save()
                logger.info(
                    "%s completed, attempt %d of %d.", names.step(index, name), attempt, max_attempts, extra=extra
                )
                return attempt
            reason = logs.describe_error(result.error) if result.error is not None else "the task returned an error"
        if attempt < max_attempts:
            progress.step(index, status="retrying", error=reason)
            await progress.save()
            logger.warning(
                "%s failed, attempt %d of %d: %s; retrying%s.",
                names.step(index, name),
                attempt,
                max_attempts,
                logs.one_line(reason),
                f" in {logs.seconds(retry_delay)}" if retry_delay else "",
                extra={**extra, "reason": reason},
            )
            if retry_delay:
                await sleep(retry_delay)
    progress.step(index, status="failed", error=reason)
    await progress.save()
    raise ChainStepFailedError(index, name, max_attempts, reason)


def _first_set(value: Any, default: Any) -> Any:
    return default if value is None else value


def register_chain_orchestrator(broker: AsyncBroker) -> None:
    """Register the orchestrator task on ``broker`` (once); a worker then knows it by name."""
    if broker.find_task(CHAIN_ORCHESTRATOR_TASK_NAME) is not None:
        return

    async def chain_orchestrator(context: Context = TaskiqDepends(), **payload: Any) -> dict[str, Any]:
        labels = context.message.labels
        # The steps carry the job's labels (routing, priority) and the slot, not the run's ids: their
        # outcomes are the chain's business, not the run's.
        step_labels = {key: value for key, value in labels.items() if key not in (RUN_LABEL, JOB_LABEL, "schedule")}
        return await run_chain(
            context.broker, payload, run_id=labels.get(RUN_LABEL), job_id=labels.get(JOB_LABEL), step_labels=step_labels
        )

    broker.register_task(chain_orchestrator, task_name=CHAIN_ORCHESTRATOR_TASK_NAME)
