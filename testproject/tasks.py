"""The demo's broker and tasks.

Without ``REDIS_URL`` the broker is taskiq's in-process one: tasks run inside the process
that sends them (``make demo``). With ``REDIS_URL`` it is a Redis stream broker with a
result backend, run by separate ``taskiq worker testproject.tasks:broker`` processes.
"""

import asyncio
import os
from datetime import datetime

from taskiq import AsyncBroker, InMemoryBroker

from django_taskiq_beat.middleware import RunOutcomeMiddleware
from django_taskiq_beat.worker import setup_django


def make_broker() -> AsyncBroker:
    """The in-process broker, or with ``REDIS_URL`` a Redis stream broker with a result backend."""
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        return InMemoryBroker()
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

    # Without retries, the first command after a Redis restart fails on a connection the
    # restart closed; retried, it reconnects.
    def retry() -> Retry:
        return Retry(ExponentialBackoff(cap=1), retries=3)

    return RedisStreamBroker(redis_url, retry=retry()).with_result_backend(
        RedisAsyncResultBackend(redis_url, result_ex_time=3600, retry=retry())
    )


broker = make_broker().with_middlewares(RunOutcomeMiddleware())
setup_django("testproject.settings")  # a worker process: the one line it needs


@broker.task(task_name="demo.heartbeat")
async def heartbeat() -> str:
    stamp = datetime.now().isoformat(timespec="seconds")
    print(f"[demo.heartbeat] tick at {stamp}", flush=True)
    return stamp


@broker.task(task_name="demo.greet")
async def greet(name: str, punctuation: str = "!") -> str:
    message = f"Hello, {name}{punctuation}"
    print(f"[demo.greet] {message}", flush=True)
    return message


@broker.task(task_name="demo.add")
def add(left: int, right: int) -> int:
    print(f"[demo.add] {left} + {right} = {left + right}", flush=True)
    return left + right


@broker.task(task_name="demo.sleep")
async def sleep(seconds: float) -> float:
    """A long task, to watch a run that is still going (or whose worker died)."""
    await asyncio.sleep(seconds)
    return seconds
