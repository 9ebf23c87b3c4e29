"""``SchedulePolicy``: what a job does with a slot due while its previous run goes on, with slots
found late, with failures, and how it spreads its sends.

The engine applies it in its claims (``claims.claim_due``) from the job's columns: a policy costs
no query of its own, except ``overlap``, which probes each such job's unfinished runs in the
claim's query and reads those of the jobs it finds busy.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from django_taskiq_beat.exceptions import SchedulerValidationError
from django_taskiq_beat.logs import seconds
from django_taskiq_beat.payloads import MAX_COUNT, MAX_SECONDS, require_number

OVERLAP_ALLOW, OVERLAP_SKIP, OVERLAP_BUFFER_ONE = "allow", "skip", "buffer_one"
CATCH_UP_LATEST, CATCH_UP_ALL = "latest", "all"
MAX_CATCH_UP_SLOTS = 100
"""With ``catch_up="all"``, at most this many missed slots of a job are handled at once: the latest ones."""


@dataclass(frozen=True, kw_only=True)
class SchedulePolicy:
    """How a job treats its slots; every value is checked when the object is built.

    - ``overlap``: a slot due while the job's previous run is unfinished (not sent yet, or sent
      with no final outcome and younger than ``STALE_RUN_SECONDS``) is sent anyway (``"allow"``),
      recorded as a ``skipped`` run (``"skip"``), or held until that run finishes
      (``"buffer_one"``: one slot waits at most, later ones are skipped).
    - ``misfire_grace_seconds``: a slot found later than this is not sent but recorded as a
      ``skipped`` run ("missed by N s"); ``None`` sends it however late.
    - ``catch_up``: after an outage, ``"latest"`` sends one run for the latest missed slot;
      ``"all"`` sends each missed slot (within the grace), oldest first, each its own run, at
      most ``MAX_CATCH_UP_SLOTS``.
    - ``jitter_seconds``: each slot is sent at a delay in [0, jitter) that every engine computes
      the same for the job and the slot; the run keeps its slot (``scheduled_for``).
    - ``max_runs``: the job finishes after that many scheduled sends (a "run now" does not
      count); the job's ``remaining_runs`` says how many are left.
    - ``pause_after_failures``: after that many runs in a row that the worker reported failed,
      the job is paused with a note naming the last error (``resume`` counts them anew).

    ``overlap`` (other than allow) and ``pause_after_failures`` read the worker's outcomes: the
    broker needs ``RunOutcomeMiddleware``, and the run history must be kept (``RECORD_RUNS``).
    """

    overlap: str = OVERLAP_ALLOW
    misfire_grace_seconds: float | None = None
    catch_up: str = CATCH_UP_LATEST
    jitter_seconds: float = 0.0
    max_runs: int | None = None
    pause_after_failures: int | None = None

    def __post_init__(self) -> None:
        if self.overlap not in (OVERLAP_ALLOW, OVERLAP_SKIP, OVERLAP_BUFFER_ONE):
            raise SchedulerValidationError("overlap", self.overlap, "Must be 'allow', 'skip' or 'buffer_one'.")
        if self.misfire_grace_seconds is not None:
            require_number(
                "misfire_grace_seconds", self.misfire_grace_seconds, minimum=0, inclusive=True, maximum=MAX_SECONDS
            )
        if self.catch_up not in (CATCH_UP_LATEST, CATCH_UP_ALL):
            raise SchedulerValidationError("catch_up", self.catch_up, "Must be 'latest' or 'all'.")
        require_number("jitter_seconds", self.jitter_seconds, minimum=0, inclusive=True, maximum=MAX_SECONDS)
        if self.max_runs is not None:
            require_number("max_runs", self.max_runs, minimum=1, inclusive=True, integer=True, maximum=MAX_COUNT)
        if self.pause_after_failures is not None:
            require_number(
                "pause_after_failures",
                self.pause_after_failures,
                minimum=1,
                inclusive=True,
                integer=True,
                maximum=MAX_COUNT,
            )
        # Stored as floats: kept as floats, so a policy read back from its job compares equal to it.
        object.__setattr__(self, "jitter_seconds", float(self.jitter_seconds))
        if self.misfire_grace_seconds is not None:
            object.__setattr__(self, "misfire_grace_seconds", float(self.misfire_grace_seconds))

    @classmethod
    def from_mapping(cls, data: Any) -> "SchedulePolicy":
        """A policy from a dict of its fields by name (a declared entry's ``"policy"``)."""
        if not isinstance(data, Mapping):
            raise SchedulerValidationError("policy", data, "Must be a dict of SchedulePolicy fields.")
        known = {field.name for field in fields(cls)}
        unknown = sorted((key for key in data if key not in known), key=str)
        if unknown:
            raise SchedulerValidationError(
                f"policy[{unknown[0]!r}]",
                data[unknown[0]],
                f"Unknown policy field; the fields are {', '.join(sorted(known))}.",
            )
        return cls(**data)

    @classmethod
    def of(cls, job: Any) -> "SchedulePolicy":
        """The policy stored on a job's columns."""
        return cls(**{field.name: getattr(job, field.name) for field in fields(cls)})

    @property
    def outcome_readers(self) -> list[str]:
        """Its fields set to values that need the worker's outcomes (``RunOutcomeMiddleware`` on the broker)."""
        readers = ["overlap"] if self.overlap != OVERLAP_ALLOW else []
        return readers + (["pause_after_failures"] if self.pause_after_failures is not None else [])

    def columns(self) -> dict[str, Any]:
        """The job's columns that hold it."""
        return asdict(self)

    def describe(self, remaining_runs: int | None = None) -> str:
        """``skip if still running; missed after 300 s; jitter 30 s; 7 of 10 runs left`` (empty: the default)."""
        parts = []
        if self.overlap == OVERLAP_SKIP:
            parts.append("skip if still running")
        elif self.overlap == OVERLAP_BUFFER_ONE:
            parts.append("wait if still running (one slot waits)")
        if self.misfire_grace_seconds is not None:
            parts.append(f"missed after {seconds(self.misfire_grace_seconds)}")
        if self.catch_up == CATCH_UP_ALL:
            parts.append("every missed slot is sent")
        if self.jitter_seconds:
            parts.append(f"jitter {seconds(self.jitter_seconds)}")
        if self.max_runs is not None:
            left = self.max_runs if remaining_runs is None else remaining_runs
            parts.append(f"{left} of {self.max_runs} run{'s' if self.max_runs > 1 else ''} left")
        if self.pause_after_failures is not None:
            parts.append(
                f"paused after {self.pause_after_failures} failed run{'s' if self.pause_after_failures > 1 else ''}"
                " in a row"
            )
        return "; ".join(parts)


def jitter_delay(job_id: str, slot: datetime, jitter_seconds: float) -> timedelta:
    """The delay in [0, jitter) of this job's slot: the same in every engine, spread evenly over jobs."""
    if not jitter_seconds:
        return timedelta(0)
    digest = hashlib.sha256(f"{job_id}\x00{slot.isoformat()}".encode("utf-8", "surrogatepass")).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") / 2**64 * jitter_seconds)
