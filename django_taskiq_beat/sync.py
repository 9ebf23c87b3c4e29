"""The sync: make the jobs declared in code say what their declarations say.

It runs when ``run_taskiq_beat`` starts and on ``manage.py taskiq_beat sync``. A job is
upserted, so an operator's pause and an unchanged next slot are kept; a declaration's
``enabled`` is applied when it changes. A job no longer declared is finished, with its
history; declared again, it comes back. Syncs run one at a time (a database lock), so
engines starting together create each job once.
"""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, DataError, IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from django_taskiq_beat import bulk
from django_taskiq_beat.builders import UNSET, SingleScheduleBuilder
from django_taskiq_beat.conf import SETTINGS_NAME
from django_taskiq_beat.declarations import (
    TASKIQ_DJANGO_MISSING,
    Declaration,
    DeclarationError,
    Declared,
    from_settings,
    from_task_labels,
    from_taskiq_django,
)
from django_taskiq_beat.exceptions import SchedulerValidationError
from django_taskiq_beat.logs import describe_error
from django_taskiq_beat.models import DECLARED_SOURCES, JobKind, JobSource, SchedulerJob
from django_taskiq_beat.payloads import json_identity, text_problem
from django_taskiq_beat.triggers import PeriodicSchedule

if TYPE_CHECKING:
    from django_taskiq_beat.app import SchedulerApp

logger = logging.getLogger("django_taskiq_beat.sync")

CREATED, UPDATED, UNCHANGED, FINISHED = "created", "updated", "unchanged", "finished"


@dataclass(frozen=True)
class SyncChange:
    """What the sync did (or, in a dry run, would do) to one job."""

    job_id: str
    change: str  # created, updated, unchanged or finished
    origin: str  # where the declaration is (was) written


@dataclass
class SyncReport:
    changes: list[SyncChange] = field(default_factory=list)
    errors: list[DeclarationError] = field(default_factory=list)
    dry_run: bool = False

    def count(self, change: str) -> int:
        return sum(1 for item in self.changes if item.change == change)

    def summary(self) -> str:
        """``2 created, 1 updated, 5 unchanged, 0 finished, 1 error``."""
        counts = ", ".join(f"{self.count(change)} {change}" for change in (CREATED, UPDATED, UNCHANGED, FINISHED))
        errors = len(self.errors)
        return counts + (f", {errors} error{'s' if errors != 1 else ''}" if errors else "")


def declared_in_code(app: "SchedulerApp") -> list[Declared]:
    """The jobs declared in settings and in taskiq's task labels, checked as the API checks them."""
    return [_checked(app, from_settings()), _checked(app, from_task_labels(app.broker))]


def read_declarations(app: "SchedulerApp") -> list[Declared]:
    """Every source of declared jobs, checked as the API checks them.

    With ``IMPORT_TASKIQ_DJANGO`` off, taskiq-django declares nothing: jobs imported before are
    finished, like any job no longer declared.
    """
    taskiq_django = (
        _read_or_incomplete(JobSource.TASKIQ_DJANGO, lambda: from_taskiq_django(app.broker))
        if app.config.import_taskiq_django
        else Declared(JobSource.TASKIQ_DJANGO, [], [])
    )
    return [*declared_in_code(app), _checked(app, taskiq_django)]


def _builder(app: "SchedulerApp", declaration: Declaration) -> SingleScheduleBuilder:
    return app.single(
        task=declaration.task_name, args=declaration.args, kwargs=declaration.kwargs, labels=declaration.labels
    )


def _checked(app: "SchedulerApp", declared: Declared) -> Declared:
    """Move each declaration the API would refuse (an unknown task, arguments the task cannot take) to the errors."""
    accepted = []
    for declaration in declared.declarations:
        if isinstance(declaration.trigger, PeriodicSchedule):  # stored as applied: DEFAULT_TIMEZONE resolved
            assert app.config.default_timezone is not None  # SchedulerConfig resolved it (TIME_ZONE when None)
            declaration = replace(declaration, trigger=declaration.trigger.with_timezone(app.config.default_timezone))
        try:
            _builder(app, declaration).validate(
                declaration.trigger,
                declaration.job_id,
                declaration.name,
                declaration.description,
                source=declaration.source,
                policy=declaration.policy,
            )
        except (SchedulerValidationError, ImportError) as exc:  # ImportError: looking the task up imports task modules
            declared.errors.append(_job_error(declaration, exc))
        else:
            accepted.append(declaration)
    declared.declarations = accepted
    return declared


def _read_or_incomplete(source: JobSource, read: Callable[[], Declared]) -> Declared:
    """A source that cannot be read at all declares nothing this time, and loses none of its jobs."""
    try:
        return read()
    except LookupError:
        problem = TASKIQ_DJANGO_MISSING
    except ImportError as exc:  # a task module that does not import: the rows' tasks cannot be looked up
        problem = f"Its rows are not read: {exc}."
    except DatabaseError as exc:
        problem = f"Its table cannot be read: {type(exc).__name__}: {str(exc)[:200]}."
    error = DeclarationError(
        SETTINGS_NAME,
        "IMPORT_TASKIQ_DJANGO",
        SchedulerValidationError("IMPORT_TASKIQ_DJANGO", True, problem),
    )
    return Declared(source, [], [error], complete=False)


def sync_declared(app: "SchedulerApp", *, dry_run: bool = False) -> SyncReport:
    """Bring the declared jobs in line with their declarations; ``dry_run`` writes nothing."""
    sources = read_declarations(app)
    report = SyncReport(dry_run=dry_run)
    for declared in sources:
        report.errors.extend(declared.errors)
    declarations = _unique(sources, report)
    # A job whose declaration has a mistake stays as it was: finishing it would punish a typo.
    kept = {declaration.job_id for declaration in declarations} | {
        error.job_id for error in report.errors if error.job_id and not text_problem(error.job_id)
    }  # an id that cannot be stored names no job
    with transaction.atomic() if dry_run else bulk.serialized_sync():
        stored = {
            row["id"]: row
            for row in SchedulerJob.objects.filter(pk__in=kept).values(
                "id", "source", "declaration", "finished_at", "kind", "last_run_at"
            )
        }
        for declaration in declarations:
            try:
                with transaction.atomic():  # a job that cannot be written costs that job alone
                    change = _apply(app, declaration, stored.get(declaration.job_id), dry_run, report)
            except (SchedulerValidationError, DataError, IntegrityError) as exc:
                report.errors.append(_job_error(declaration, exc))
                continue
            if change is not None:
                report.changes.append(SyncChange(declaration.job_id, change, declaration.origin))
        complete = [declared.source for declared in sources if declared.complete]
        report.changes.extend(_finish_undeclared(complete, kept, dry_run))
    for error in report.errors:
        logger.error("Declared job not synced: %s", error, extra={"job_id": error.job_id})
    for item in report.changes:
        if item.change != UNCHANGED:
            logger.info(
                "Declared job %s %s%s (%s).",
                item.job_id,
                "would be " if dry_run else "",
                item.change,
                item.origin,
                extra={"job_id": item.job_id, "sync_change": item.change},
            )
    logger.info("Synced declared jobs%s: %s.", " (dry run)" if dry_run else "", report.summary())
    return report


def _job_error(declaration: Declaration, error: Exception) -> DeclarationError:
    if isinstance(error, ImportError):
        error = SchedulerValidationError("task", declaration.task_name, f"{error}; the task cannot be looked up.")
    elif not isinstance(error, SchedulerValidationError):
        error = SchedulerValidationError(
            "job_id", declaration.job_id, f"The database refused it: {describe_error(error)}"
        )
    result = DeclarationError(declaration.origin, error.field, error)
    result.job_id = declaration.job_id
    return result


def _unique(sources: list[Declared], report: SyncReport) -> list[Declaration]:
    """Each job id once: a second declaration of the same id is an error, the first one wins."""
    seen: dict[str, Declaration] = {}
    for declared in sources:
        for declaration in declared.declarations:
            first = seen.setdefault(declaration.job_id, declaration)
            if first is not declaration:
                error = DeclarationError(
                    declaration.origin,
                    "schedule_id",
                    SchedulerValidationError(
                        "job_id",
                        declaration.job_id,
                        f"Also declared by {first.origin}; give each entry its own id.",
                    ),
                )
                report.errors.append(error)
    return list(seen.values())


def _apply(
    app: "SchedulerApp", declaration: Declaration, stored: Mapping[str, Any] | None, dry_run: bool, report: SyncReport
) -> str | None:
    """Upsert one declared job; returns its change, or None when the id belongs to another kind of job."""
    wanted = declaration.as_stored()
    if stored is not None and stored["source"] not in DECLARED_SOURCES:
        report.errors.append(
            DeclarationError(
                declaration.origin,
                "job_id",
                SchedulerValidationError(
                    "job_id",
                    declaration.job_id,
                    f"A job with this id was created by {stored['source']};"
                    " delete it to let the declaration take its id.",
                ),
            )
        )
        return None
    if stored is not None and json_identity(stored["declaration"]) == json_identity(wanted):
        return UNCHANGED
    if dry_run:
        return CREATED if stored is None else UPDATED
    returning = stored is not None and stored["declaration"] is None
    ran_once = stored is not None and stored["kind"] == JobKind.ONE_OFF and stored["last_run_at"] is not None
    # Finished when its declaration went away ("returning" says stored is not None).
    if returning and stored is not None and stored["finished_at"] is not None and not ran_once:
        SchedulerJob.objects.filter(pk=declaration.job_id).update(finished_at=None)
    if stored is None or returning or _enabled(stored["declaration"]) != declaration.enabled:
        is_enabled: bool | Any = declaration.enabled
    else:
        is_enabled = UNSET  # the declaration did not change it: an operator's pause stays
    _, change = _builder(app, declaration).upsert_as(
        declaration.source,
        declaration.trigger,
        declaration.job_id,
        declaration.name,
        declaration.description,
        is_enabled,
        declaration=wanted,
        policy=declaration.policy,
    )
    return change


def _enabled(declaration: Any) -> bool | None:
    return declaration.get("enabled") if isinstance(declaration, dict) else None


def _finish_undeclared(sources: list[JobSource], kept: set[str], dry_run: bool) -> list[SyncChange]:
    """Finish the jobs of fully read ``sources`` that are no longer declared; their history stays.

    That includes one that an operator ran again ("run now") after its declaration went away.
    """
    gone = SchedulerJob.objects.filter(
        Q(declaration__isnull=False) | Q(finished_at__isnull=True), source__in=sources
    ).exclude(pk__in=kept)
    changes = [
        SyncChange(job_id, FINISHED, (declaration or {}).get("origin", source))
        for job_id, source, declaration in gone.values_list("id", "source", "declaration")
    ]
    if changes and not dry_run:
        now = timezone.now()
        SchedulerJob.objects.filter(pk__in=[change.job_id for change in changes]).update(
            is_enabled=False,
            next_run_at=None,
            finished_at=Coalesce(F("finished_at"), Value(now)),
            declaration=None,
            claimed_by=None,
            claimed_at=None,
            claim_expires_at=None,
            updated_at=now,
        )
    return changes
