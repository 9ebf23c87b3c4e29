"""The demo's broker and tasks. An in-process broker: tasks run inside the sending process."""

from datetime import datetime

from taskiq import InMemoryBroker

broker = InMemoryBroker()


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
