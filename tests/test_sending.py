"""Sending from sync and async code: loops, forks, broker startup, error texts."""

import asyncio
import multiprocessing
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from taskiq import InMemoryBroker

from django_taskiq_beat import logs, sending


def test_error_text_names_the_chain_and_drops_nul_bytes() -> None:
    try:
        try:
            raise ConnectionError("refused\x00")
        except ConnectionError as cause:
            raise RuntimeError("send failed") from cause
    except RuntimeError as error:
        text = logs.describe_error(error)
    assert text == "RuntimeError: send failed <- caused by ConnectionError: refused"


@pytest.mark.django_db
def test_error_text_is_storable_on_every_backend() -> None:
    from django.utils import timezone

    from django_taskiq_beat.models import SchedulerJob

    undecodable = b"caf\xe9".decode("utf-8", "surrogateescape")  # bytes that were not UTF-8, as an OS error carries
    text = logs.describe_error(OSError(f"cannot open {undecodable}\x00"))
    assert text == "OSError: cannot open caf\\udce9"
    now = timezone.now()
    job = SchedulerJob.objects.create(task_name="t", kind="one_off", strategy="one_off", created_at=now, updated_at=now)
    SchedulerJob.objects.filter(pk=job.pk).update(last_error=text)
    assert SchedulerJob.objects.get(pk=job.pk).last_error == text


def test_a_finished_async_caller_is_not_taken_for_a_running_one() -> None:
    async def caller() -> None:
        await sync_to_async(lambda: None)()  # leaves asgiref's thread-local behind

    async_to_sync(caller)()
    assert sending._caller_event_loop() is None
    first = sending.run_from_sync(_current_loop)
    assert sending.run_from_sync(_current_loop) is first  # one background loop, call after call


async def _current_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _send_in_child(queue: Any) -> None:
    queue.put(sending.run_from_sync(_answer))


async def _answer() -> int:
    return 42


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the point of the test
def test_sending_from_sync_code_works_in_a_forked_child() -> None:
    sending.run_from_sync(_answer)  # the parent has a background loop and its thread
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_send_in_child, args=(queue,))
    child.start()
    child.join(timeout=20)
    assert child.exitcode == 0 and queue.get(timeout=1) == 42


def test_concurrent_first_sends_start_the_broker_once() -> None:
    startups = []

    class CountingBroker(InMemoryBroker):
        async def startup(self) -> None:
            startups.append(1)
            await asyncio.sleep(0.05)
            await super().startup()

    broker = CountingBroker()

    async def two_first_sends() -> None:
        await asyncio.gather(sending.ensure_broker_started(broker), sending.ensure_broker_started(broker))
        await sending.ensure_broker_started(broker)

    async_to_sync(two_first_sends)()
    assert startups == [1]
