"""A broker for engine processes whose one task declares its schedule in taskiq's ``schedule`` label.

It is the counting test broker of ``tests.process_broker`` (same class, same sink files),
with one task, ``test.labelled``, that taskiq's ``LabelScheduleSource`` would run every
second: the sync makes it the job ``taskiq:label-every-second``, sent with ``queue=q1``.
"""

from taskiq import Context, TaskiqDepends

from tests.process_broker import SlowInMemoryBroker, record_message

SCHEDULE_ID = "label-every-second"
JOB_ID = f"taskiq:{SCHEDULE_ID}"

broker = SlowInMemoryBroker(await_inplace=True)


@broker.task(
    task_name="test.labelled",
    schedule=[{"interval": 1, "schedule_id": SCHEDULE_ID, "labels": {"queue": "q1"}}],
)
async def labelled(context: Context = TaskiqDepends()) -> None:
    record_message(context)
