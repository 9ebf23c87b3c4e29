"""Models and migrations: no drift, the reference's indexes, our constraints."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from io import StringIO

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from django_taskiq_beat.models import RunStatus, SchedulerJob, SchedulerRun


def check_migrations(out: StringIO | None = None) -> str:
    """CI's guard: a model change without its migration fails here (``--check`` exits 1)."""
    out = out or StringIO()
    call_command("makemigrations", "django_taskiq_beat", "--check", "--dry-run", stdout=out)
    return out.getvalue()


@contextmanager
def field_without_migration(model: type[models.Model], name: str) -> Iterator[None]:
    """``model`` gains a field in this process only, as an edit to models.py would; removed on exit."""
    field = models.CharField(max_length=10, default="", blank=True)
    field.contribute_to_class(model, name)
    try:
        yield
    finally:
        model._meta.local_fields.remove(field)
        delattr(model, field.attname)
        apps.clear_cache()  # every model's _meta caches, the field lists among them


@pytest.mark.django_db
def test_models_and_migrations_do_not_drift() -> None:
    assert "No changes detected" in check_migrations()


@pytest.mark.django_db
def test_the_drift_check_fails_on_a_model_change_without_its_migration() -> None:
    out = StringIO()
    with field_without_migration(SchedulerJob, "drift_probe"), pytest.raises(SystemExit) as exit_:
        check_migrations(out)
    assert exit_.value.code == 1
    assert "Add field drift_probe to schedulerjob" in out.getvalue()
    assert "drift_probe" not in {field.name for field in SchedulerJob._meta.get_fields()}
    assert "No changes detected" in check_migrations()  # the model is as it was for the tests after this one


def indexed_columns(table: str) -> set[tuple[str, ...]]:
    """The column lists of a table's indexes, its primary key left out (PostgreSQL's ``_like`` twins counted once)."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return {tuple(c["columns"]) for c in constraints.values() if c["index"] or c["unique"]} - {("id",)}


@pytest.mark.django_db
def test_tables_keep_the_reference_names_and_only_the_indexes_a_query_reads() -> None:
    """Every index is written again by each claim and each run: one no query reads is a cost per slot.

    The reference's lease columns on the job (``claimed_by``, ``claim_expires_at``) are kept unindexed, as the
    leases live on the runs here; ``updated_at`` is compared by primary key only.
    """
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
    assert {"scheduler_job", "scheduler_run"} <= set(tables)
    assert indexed_columns("scheduler_job") == {
        ("is_enabled", "next_run_at"),  # the due jobs, in slot order: claims, the next due slot, health
        ("next_run_at",),  # every job by its next slot: the admin's list, the CLI's
        ("task_name",),  # the CLI's --task, the admin's filter
        ("source",),  # the admin's filter, the declared jobs' sync
    }
    assert indexed_columns("scheduler_run") == {
        ("job_id", "scheduled_for"),  # the unique (job, slot): a slot is claimed once; a job's runs
        ("job_id", "finished_at"),  # a job's history
        ("job_id", "status", "finished_at"),  # an overlap job's unfinished runs
        ("status", "finished_at"),  # the cleanup, the dashboard
        ("scheduled_for",),  # the run history's order and date drill-down
    }


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
