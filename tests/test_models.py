"""Models and migrations: no drift, the reference's indexes, our constraints."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun


@pytest.mark.django_db
def test_models_and_migrations_do_not_drift() -> None:
    out = StringIO()
    call_command("makemigrations", "django_taskiq_beat", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_tables_and_indexes_match_the_reference() -> None:
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        job_constraints = connection.introspection.get_constraints(cursor, "scheduler_job")
        run_constraints = connection.introspection.get_constraints(cursor, "scheduler_run")
    assert {"scheduler_job", "scheduler_run"} <= set(tables)
    assert job_constraints["ix_scheduler_job_ready_lookup"]["columns"] == [
        "is_enabled",
        "next_run_at",
        "claim_expires_at",
    ]
    assert job_constraints["ix_scheduler_job_claim_owner"]["columns"] == ["claimed_by", "claim_expires_at"]
    assert run_constraints["ix_scheduler_run_job_finished"]["columns"] == ["job_id", "finished_at"]
    assert run_constraints["uq_scheduler_run_job_slot"]["unique"]
    indexed = {tuple(c["columns"]) for c in job_constraints.values() if c["index"]}
    assert {("task_name",), ("is_enabled",), ("next_run_at",), ("updated_at",)} <= indexed


@pytest.mark.django_db
def test_a_slot_of_a_job_has_at_most_one_run() -> None:
    now = timezone.now()
    job = SchedulerJob.objects.create(task_name="system.echo", kind="periodic", strategy="interval")
    SchedulerRun.objects.create(job=job, scheduled_for=now)
    with pytest.raises(IntegrityError), transaction.atomic():
        SchedulerRun.objects.create(job=job, scheduled_for=now)
    SchedulerRun.objects.create(job=job, scheduled_for=now + timedelta(seconds=1))
    assert SchedulerRun.objects.count() == 2


@pytest.mark.django_db
def test_deleting_a_job_row_deletes_its_runs() -> None:
    job = SchedulerJob.objects.create(task_name="system.echo", kind="one_off", strategy="one_off")
    SchedulerRun.objects.create(job=job, scheduled_for=timezone.now(), status=RunStatus.DISPATCHED)
    SchedulerJob.objects.filter(pk=job.pk).delete()
    assert not SchedulerRun.objects.exists()


def test_new_run_is_pending_and_json_defaults_are_fresh() -> None:
    first, second = SchedulerJob(), SchedulerJob()
    assert first.task_args == [] and first.task_args is not second.task_args
    assert SchedulerRun().status == RunStatus.PENDING
