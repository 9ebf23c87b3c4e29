"""The broker of the engine processes the tests start.

Its one task appends the taskiq ``task_id`` it ran under to the file named by
``TEST_SINK``, so a test can count sends across processes. ``TEST_SEND_DELAY``
(seconds) slows every send down, to have time to kill an engine mid-burst.
"""

import asyncio
import os

from taskiq import Context, InMemoryBroker, TaskiqDepends
from taskiq.message import BrokerMessage


class SlowInMemoryBroker(InMemoryBroker):
    async def kick(self, message: BrokerMessage) -> None:
        delay = float(os.environ.get("TEST_SEND_DELAY", "0"))
        if delay:
            await asyncio.sleep(delay)
        await super().kick(message)


broker = SlowInMemoryBroker(await_inplace=True)


@broker.task(task_name="test.record")
async def record(context: Context = TaskiqDepends()) -> None:
    with open(os.environ["TEST_SINK"], "a", encoding="utf-8") as sink:
        sink.write(context.message.task_id + "\n")
