"""Schedules declared in code, against real processes: ``run_taskiq_beat`` and ``manage.py`` commands.

Each engine is a real ``manage.py run_taskiq_beat`` process on the test database; its
``TASKIQ_BEAT["SCHEDULE"]`` comes in ``TASKIQ_BEAT_OPTIONS``, and its broker (also named as
``TASKIQ_BEAT["BROKER"]``, so that the system checks read the same tasks) writes every
message it receives, with its labels, to a sink file. The engines' logs are printed at the end.
"""

import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from django_taskiq_beat.models import JobSource, RunStatus, SchedulerJob, SchedulerRun
from tests import labelled_broker
from tests.processes import EngineProcess, child_env, manage, wait_until
from tests.test_processes import FAST, requires_row_locks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

PROCESS_BROKER = "tests.process_broker:broker"
LABELLED_BROKER = "tests.labelled_broker:broker"
SYNCED = re.compile(
    r"INFO django_taskiq_beat\.sync Synced declared jobs:"
    r" (\d+) created, (\d+) updated, (\d+) unchanged, (\d+) finished(?:, \d+ errors?)?\."
)


def every(seconds: int, **entry: Any) -> dict[str, Any]:
    return {"task": "test.record", "interval": seconds, **entry}


# -- engines and what their broker received -------------------------------------------------------------------


@dataclass
class Sinks:
    sends: Path  # a task id a line, as tests/test_processes.py counts them
    labels: Path  # a JSON line a message: task id, task name, labels

    def messages(self, job_id: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.labels.read_text().splitlines() if line]
        return [line for line in lines if job_id is None or line["labels"].get("scheduler_job_id") == job_id]


@pytest.fixture
def sinks(tmp_path: Path) -> Sinks:
    sinks = Sinks(tmp_path / "sink.txt", tmp_path / "labels.jsonl")
    sinks.sends.touch()
    sinks.labels.touch()
    return sinks


EngineFactory = Callable[..., EngineProcess]


@pytest.fixture
def engines(tmp_path: Path, sinks: Sinks) -> Iterator[EngineFactory]:
    made: list[EngineProcess] = []

    def make(
        name: str,
        schedule: dict[str, Any] | None = None,
        broker: str = PROCESS_BROKER,
        start: bool = True,
        **env: str,
    ) -> EngineProcess:
        options: dict[str, Any] = {**FAST, "BROKER": broker}
        if schedule is not None:
            options["SCHEDULE"] = schedule
        engine = EngineProcess(
            name,
            tmp_path,
            options,
            broker=broker,
            TEST_SINK=str(sinks.sends),
            TEST_LABEL_SINK=str(sinks.labels),
            **env,
        )
        made.append(engine)
        return engine.start() if start else engine

    yield make
    for engine in made:
        engine.stop()
        print(f"----- log of {engine.name} -----\n{engine.log()}")


def stop(engine: EngineProcess) -> None:
    engine.signal(signal.SIGTERM)
    assert engine.wait() == 0
    assert "run_taskiq_beat stopped." in engine.log()


def slot_of(message: dict[str, Any]) -> datetime:
    """The ``scheduler_slot`` label, checked to be ISO 8601 in UTC."""
    text = message["labels"]["scheduler_slot"]
    slot = datetime.fromisoformat(text)
    assert slot.utcoffset() == timedelta(0) and text.endswith("+00:00"), text
    return slot


def assert_on_the_grid(messages: list[dict[str, Any]], job: SchedulerJob, seconds: int) -> list[datetime]:
    """Each message is a run of ``job`` for its own slot; the slots are whole seconds on the job's interval grid."""
    slots = sorted(slot_of(message) for message in messages)
    assert len(set(slots)) == len(slots), f"a slot was sent twice: {slots}"
    anchor = job.created_at.replace(microsecond=0)
    assert all(slot.microsecond == 0 and (slot - anchor) % timedelta(seconds=seconds) == timedelta(0) for slot in slots)
    runs = dict(SchedulerRun.objects.filter(job_id=job.pk).values_list("id", "scheduled_for"))
    assert {message["task_id"]: slot_of(message) for message in messages}.items() <= runs.items()
    return slots


def sync_counts(log: str) -> tuple[int, int, int, int]:
    (counts,) = SYNCED.findall(log)  # one sync, at start
    return tuple(map(int, counts))  # type: ignore[return-value]


def assert_clean(engine: EngineProcess) -> None:
    log = engine.log()
    assert " ERROR " not in log and "Traceback" not in log, f"{engine.name} logged an error"


# -- 1. TASKIQ_BEAT["SCHEDULE"] ------------------------------------------------------------------------------


def test_one_bad_entry_costs_its_job_and_the_engine_starts_and_sends_the_others(
    engines: EngineFactory, sinks: Sinks
) -> None:
    engine = engines("engine-one-bad", {"good": every(1), "bad": {"task": "test.record", "cron": "0 25 * * *"}})
    wait_until(lambda: len(sinks.messages("settings:good")) >= 2, timeout=15, what="two sends of the good entry")
    log = engine.log()
    assert (
        "ERROR django_taskiq_beat.sync Declared job not synced: TASKIQ_BEAT['SCHEDULE']['bad']: cron: hour='25'" in log
    )
    assert sync_counts(log) == (1, 0, 0, 0)
    assert not SchedulerJob.objects.filter(pk="settings:bad").exists()


def test_a_settings_entry_is_created_by_the_engine_at_start_and_sent_on_its_slots(
    engines: EngineFactory, sinks: Sinks
) -> None:
    assert not SchedulerJob.objects.exists()
    engine = engines("engine-declared", {"every-second": every(1)})
    log = engine.log()
    created = "Declared job settings:every-second created (TASKIQ_BEAT['SCHEDULE']['every-second'])."
    assert created in log and log.index(created) < log.index("Scheduler engine started.")
    assert sync_counts(log) == (1, 0, 0, 0)
    job = SchedulerJob.objects.get(pk="settings:every-second")
    assert (job.source, job.task_name, job.trigger.interval.total_seconds, job.is_enabled) == (
        JobSource.SETTINGS,
        "test.record",
        1,
        True,
    )
    wait_until(lambda: len(sinks.messages("settings:every-second")) >= 3, timeout=15, what="three slots sent")
    sent = sinks.messages("settings:every-second")
    assert {message["task_name"] for message in sent} == {"test.record"}
    assert len(sinks.messages()) == len(sent), "only the declared job runs"
    slots = assert_on_the_grid(sent, job, 1)
    assert slots[-1] - slots[0] == timedelta(seconds=len(slots) - 1), f"a slot was skipped: {slots}"
    assert_clean(engine)


# -- 2. taskiq's schedule=[...] label ------------------------------------------------------------------------


def test_a_taskiq_schedule_label_of_the_engines_broker_becomes_a_job_sent_with_its_labels(
    engines: EngineFactory, sinks: Sinks
) -> None:
    job_id = labelled_broker.JOB_ID
    engine = engines("engine-labelled", broker=LABELLED_BROKER)
    assert f"Declared job {job_id} created (the schedule label of task 'test.labelled', entry 0)." in engine.log()
    assert sync_counts(engine.log()) == (1, 0, 0, 0)
    job = SchedulerJob.objects.get(pk=job_id)
    assert (job.source, job.task_name, job.task_labels, job.trigger.interval.total_seconds) == (
        JobSource.TASKIQ,
        "test.labelled",
        {"queue": "q1"},
        1,
    )
    wait_until(lambda: len(sinks.messages(job_id)) >= 2, timeout=15, what="two slots sent")
    sent = sinks.messages(job_id)
    assert {(message["task_name"], message["labels"]["queue"]) for message in sent} == {("test.labelled", "q1")}
    assert_on_the_grid(sent, job, 1)
    assert_clean(engine)


# -- 3. a declaration changed, removed and re-added between engine runs --------------------------------------


def test_a_declaration_changed_removed_and_re_added_between_engine_runs(engines: EngineFactory, sinks: Sinks) -> None:
    job_id = "settings:tick"
    origin = "(TASKIQ_BEAT['SCHEDULE']['tick'])."

    def sent(version: str) -> list[dict[str, Any]]:
        return [message for message in sinks.messages(job_id) if message["labels"].get("version") == version]

    first = engines("engine-run-1", {"tick": every(1, labels={"version": "1"})})
    assert f"Declared job {job_id} created {origin}" in first.log()
    wait_until(lambda: len(sent("1")) >= 2, timeout=15, what="the first declaration's slots")
    stop(first)

    second = engines("engine-run-2", {"tick": every(2, labels={"version": "2"})})
    assert f"Declared job {job_id} updated {origin}" in second.log()
    assert sync_counts(second.log()) == (0, 1, 0, 0)
    job = SchedulerJob.objects.get(pk=job_id)
    assert (job.trigger.interval.total_seconds, job.task_labels, job.is_finished) == (2, {"version": "2"}, False)
    wait_until(lambda: len(sent("2")) >= 3, timeout=20, what="the changed declaration's slots")
    stop(second)
    slots = assert_on_the_grid(sent("2"), job, 2)
    assert all(later - earlier == timedelta(seconds=2) for earlier, later in pairwise(slots)), slots
    runs_before = set(SchedulerRun.objects.filter(job_id=job_id).values_list("id", flat=True))
    messages_before = len(sinks.messages(job_id))

    third = engines("engine-run-3", {})
    assert f"Declared job {job_id} finished {origin}" in third.log()
    assert sync_counts(third.log()) == (0, 0, 0, 1)
    job = SchedulerJob.objects.get(pk=job_id)
    assert (job.is_finished, job.is_enabled, job.next_run_at, job.declaration) == (True, False, None, None)
    time.sleep(2.5)  # more than one slot of the 2 s declaration: none is sent now
    stop(third)
    assert len(sinks.messages(job_id)) == messages_before
    assert set(SchedulerRun.objects.filter(job_id=job_id).values_list("id", flat=True)) == runs_before, "history kept"
    assert SchedulerRun.objects.filter(job_id=job_id, status=RunStatus.DISPATCHED).count() >= 5

    re_added_at = timezone.now()
    fourth = engines("engine-run-4", {"tick": every(1, labels={"version": "4"})})
    assert f"Declared job {job_id} updated {origin}" in fourth.log()
    job = SchedulerJob.objects.get(pk=job_id)
    assert (job.is_finished, job.is_enabled, job.trigger.interval.total_seconds) == (False, True, 1)
    wait_until(lambda: len(sent("4")) >= 2, timeout=15, what="the re-added declaration's slots")
    assert min(slot_of(message) for message in sent("4")) >= re_added_at.replace(microsecond=0), "a gap slot was sent"
    assert runs_before < set(SchedulerRun.objects.filter(job_id=job_id).values_list("id", flat=True))
    for engine in (first, second, third, fourth):
        assert_clean(engine)


# -- 4. engines starting together -----------------------------------------------------------------------------


@requires_row_locks
def test_engines_starting_together_create_each_declared_job_once_and_send_each_slot_once(
    engines: EngineFactory, sinks: Sinks, tmp_path: Path
) -> None:
    schedule = {f"job-{number:02d}": every(1) for number in range(20)}
    barrier = tmp_path / "go"  # the engines wait for it when they import their broker, before they sync
    trio = [engines(f"engine-together-{n}", schedule, start=False, TEST_START_BARRIER=str(barrier)) for n in range(3)]
    waiting = Path(f"{barrier}.waiting")
    with ThreadPoolExecutor(len(trio)) as pool:
        starts = [pool.submit(engine.start) for engine in trio]  # each waits for its "engine started" line
        try:
            wait_until(
                lambda: waiting.exists() and len(waiting.read_text().split()) == len(trio),
                timeout=30,
                what="the engines to wait at the start barrier",
            )
        finally:
            barrier.touch()
        for start in starts:
            start.result()
    assert SchedulerJob.objects.count() == 20
    assert set(SchedulerJob.objects.values_list("source", flat=True)) == {JobSource.SETTINGS}
    counts = [sync_counts(engine.log()) for engine in trio]
    assert sum(created for created, _, _, _ in counts) == 20, counts
    assert all(
        updated == finished == 0 and created + unchanged == 20 for created, updated, unchanged, finished in counts
    ), counts
    for key in schedule:
        line = f"Declared job settings:{key} created "
        assert sum(line in engine.log() for engine in trio) == 1, f"settings:{key} created by more than one sync"

    def sent_three_each() -> bool:
        per_job = Counter(message["labels"]["scheduler_job_id"] for message in sinks.messages())
        return len(per_job) == 20 and min(per_job.values()) >= 3

    wait_until(sent_three_each, timeout=30, what="three slots of each job")
    for engine in trio:
        stop(engine)
    messages = sinks.messages()
    per_slot = Counter((message["labels"]["scheduler_job_id"], slot_of(message)) for message in messages)
    assert set(per_slot.values()) == {1}, [key for key, count in per_slot.items() if count > 1]
    dispatched = set(SchedulerRun.objects.filter(status=RunStatus.DISPATCHED).values_list("job_id", "scheduled_for"))
    assert set(per_slot) == dispatched
    assert Counter(sinks.sends.read_text().split()) == Counter({message["task_id"]: 1 for message in messages})
    working = [engine.name for engine in trio if "INFO django_taskiq_beat.engine Sent job " in engine.log()]
    print(f"sync counts {counts}; engines that sent: {working}")
    for engine in trio:
        assert_clean(engine)


# -- 5. manage.py taskiq_beat sync [--dry-run] and manage.py check ------------------------------------------------


def test_sync_command_dry_run_writes_nothing_sync_creates_and_check_refuses_a_bad_entry() -> None:
    schedule = {
        "nightly": {"task": "demo.heartbeat", "cron": "0 3 * * *"},
        "often": {"task": "demo.add", "interval": 30, "args": [1, 2]},
    }

    def command(*arguments: str, declared: dict[str, Any]) -> Any:
        return manage(*arguments, env=child_env(TASKIQ_BEAT_OPTIONS=json.dumps({"SCHEDULE": declared})))

    def rows(output: str) -> set[tuple[str, ...]]:
        return {tuple(re.split(r"\s{2,}", line)) for line in output.splitlines() if line.startswith("settings:")}

    dry = command("taskiq_beat", "sync", "--dry-run", declared=schedule)
    assert dry.returncode == 0, dry.stderr
    assert rows(dry.stdout) == {
        ("settings:nightly", "would be created", "TASKIQ_BEAT['SCHEDULE']['nightly']"),
        ("settings:often", "would be created", "TASKIQ_BEAT['SCHEDULE']['often']"),
    }
    assert "Dry run, nothing written: 2 created, 0 updated, 0 unchanged, 0 finished." in dry.stdout
    assert not SchedulerJob.objects.exists()

    synced = command("taskiq_beat", "sync", declared=schedule)
    assert synced.returncode == 0, synced.stderr
    assert rows(synced.stdout) == {
        ("settings:nightly", "created", "TASKIQ_BEAT['SCHEDULE']['nightly']"),
        ("settings:often", "created", "TASKIQ_BEAT['SCHEDULE']['often']"),
    }
    jobs = {job.pk: job for job in SchedulerJob.objects.all()}
    assert set(jobs) == {"settings:nightly", "settings:often"}
    assert {(job.source, job.task_name) for job in jobs.values()} == {
        (JobSource.SETTINGS, "demo.heartbeat"),
        (JobSource.SETTINGS, "demo.add"),
    }
    assert jobs["settings:often"].task_args == [1, 2] and jobs["settings:nightly"].trigger.crontab.hour == "3"

    again = command("taskiq_beat", "sync", declared=schedule)
    assert "0 created, 0 updated, 2 unchanged, 0 finished." in again.stdout
    dry_removal = command("taskiq_beat", "sync", "--dry-run", declared={"nightly": schedule["nightly"]})
    assert ("settings:often", "would be finished", "TASKIQ_BEAT['SCHEDULE']['often']") in rows(dry_removal.stdout)
    assert {job.pk: (job.updated_at, job.is_finished) for job in SchedulerJob.objects.all()} == {
        pk: (job.updated_at, False) for pk, job in jobs.items()
    }, "a sync with nothing to change, or a dry run, wrote"

    checked = command("check", declared={**schedule, "broken": {"task": "demo.heartbeat", "cron": "0 25 * * *"}})
    assert checked.returncode != 0
    assert "django_taskiq_beat.E005" in checked.stderr and "TASKIQ_BEAT['SCHEDULE']['broken']" in checked.stderr
    assert "hour='25'" in checked.stderr
    assert "['nightly']" not in checked.stderr and "['often']" not in checked.stderr
    assert command("check", declared=schedule).returncode == 0
