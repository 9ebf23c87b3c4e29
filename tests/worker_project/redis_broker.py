"""A real deployment's broker module: Redis stream broker, result backend, outcome middleware.

``taskiq worker tests.worker_project.redis_broker:broker`` runs it; ``REDIS_URL`` says where.
Laid out as the docs tell (docs/chains.md): broker first, then ``setup_django``, then the tasks.
"""

import os

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from django_taskiq_beat.middleware import RunOutcomeMiddleware
from django_taskiq_beat.worker import setup_django

REDIS_URL = os.environ["REDIS_URL"]

broker = (
    RedisStreamBroker(REDIS_URL, retry=Retry(ExponentialBackoff(cap=1), retries=3))
    .with_result_backend(
        RedisAsyncResultBackend(REDIS_URL, result_ex_time=600, retry=Retry(ExponentialBackoff(cap=1), retries=3))
    )
    .with_middlewares(RunOutcomeMiddleware())
)

setup_django("testproject.settings")


@broker.task(task_name="worker.ok")
async def ok() -> str:
    return "done"


@broker.task(task_name="worker.boom")
async def boom() -> None:
    raise ValueError("broken in the worker")


@broker.task(task_name="worker.sync")
def sync_task() -> int:
    return 42
