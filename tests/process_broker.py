"""The broker of the engine processes the tests start.

Its one task appends the taskiq ``task_id`` it ran under to the file named by
``TEST_SINK``, so a test can count sends across processes. With ``TEST_LABEL_SINK``
set it also appends one JSON line per message there: the task id, the task name and
the message's labels (the scheduler's ``scheduler_job_id`` and ``scheduler_slot``
among them). ``TEST_SEND_DELAY`` (seconds) slows every send down, to have time to
kill an engine mid-burst. With ``TEST_START_BARRIER`` the import of this module (which
``run_taskiq_beat`` does before it syncs declared jobs) waits until that file exists, so
that engines started together reach their sync together.
"""

import asyncio
import json
import os
import time

from taskiq import Context, InMemoryBroker, TaskiqDepends
from taskiq.message import BrokerMessage


class SlowInMemoryBroker(InMemoryBroker):
    async def kick(self, message: BrokerMessage) -> None:
        delay = float(os.environ.get("TEST_SEND_DELAY", "0"))
        if delay:
            await asyncio.sleep(delay)
        await super().kick(message)


def record_message(context: Context) -> None:
    """What the test tasks do: write the message to the sink files (one line each)."""
    message = context.message
    with open(os.environ["TEST_SINK"], "a", encoding="utf-8") as sink:
        sink.write(message.task_id + "\n")
    label_sink = os.environ.get("TEST_LABEL_SINK")
    if label_sink:
        line = json.dumps(
            {"task_id": message.task_id, "task_name": message.task_name, "labels": message.labels}, default=str
        )
        with open(label_sink, "a", encoding="utf-8") as sink:
            sink.write(line + "\n")


def _wait_for_start_barrier() -> None:
    """Say ``<barrier>.waiting`` (a line a process), then wait for the file ``TEST_START_BARRIER``."""
    barrier = os.environ.get("TEST_START_BARRIER")
    if not barrier:
        return
    with open(f"{barrier}.waiting", "a", encoding="utf-8") as waiting:
        waiting.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(barrier):
        if time.monotonic() > deadline:
            raise RuntimeError(f"TEST_START_BARRIER {barrier} did not appear within 60 s")
        time.sleep(0.002)


_wait_for_start_barrier()
broker = SlowInMemoryBroker(await_inplace=True)


@broker.task(task_name="test.record")
async def record(context: Context = TaskiqDepends()) -> None:
    record_message(context)
