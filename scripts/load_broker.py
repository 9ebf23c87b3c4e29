"""The broker of the load tests: it accepts every message and drops it.

This measures the scheduler's own pipeline (claim, ``kiq``, record), not a queue.
With ``LOAD_SINK`` set, every task id sent is appended to that file, so a test with
several engine processes can count duplicates.
"""

import os

from taskiq import AsyncBroker
from taskiq.message import BrokerMessage


class NullBroker(AsyncBroker):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        sink = os.environ.get("LOAD_SINK")
        # One unbuffered append per send: nothing is lost if the process is killed, and no open() per send,
        # which took a sixth of an engine's time at 1,700 sends a second.
        self._sink = os.open(sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if sink else None

    async def kick(self, message: BrokerMessage) -> None:
        self.sent += 1
        if self._sink is not None:
            os.write(self._sink, f"{message.task_id}\n".encode())

    async def listen(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("The load-test broker only sends.")


broker = NullBroker()


@broker.task(task_name="load.noop")
async def noop() -> None:
    """Never runs: the broker drops the message."""
