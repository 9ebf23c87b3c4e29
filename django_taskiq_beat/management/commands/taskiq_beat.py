"""``manage.py taskiq_beat SUBCOMMAND``: look after the scheduler from a shell or a probe.

A thin layer: it parses the arguments and calls the subcommand in ``django_taskiq_beat.cli``.
"""

import sys
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_taskiq_beat import cli
from django_taskiq_beat.app import get_scheduler_app
from django_taskiq_beat.checks import DeclaredSchedulesLeftToTheSync
from django_taskiq_beat.management import version_text
from django_taskiq_beat.models import JobState
from django_taskiq_beat.overview import OVERDUE_AFTER


def _days(value: str) -> float:
    days = float(value)
    if not 0 <= days <= 36500:
        raise ValueError(value)
    return days


def _seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds <= 10**7:
        raise ValueError(value)
    return seconds


class Command(DeclaredSchedulesLeftToTheSync, BaseCommand):
    help = "Look after the scheduler: status, health, list, show, pause, resume, run-now, delete, purge-runs, sync."

    def get_version(self) -> str:
        """``--version``: this package's version (Django's default is its own), then what it runs on."""
        return version_text()

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        def add(name: str, help_text: str, json_output: bool = True) -> CommandParser:
            sub: CommandParser = subcommands.add_parser(name, help=help_text, description=help_text)
            if json_output:
                sub.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
            return sub

        add("status", "Engines and their heartbeats, jobs by state, what is due and overdue.")
        health = add("health", "Exit 0 when healthy, 1 (saying why) otherwise: for Kubernetes and Docker probes.")
        overdue_after = OVERDUE_AFTER.total_seconds()
        health.add_argument(
            "--max-lag",
            type=_seconds,
            default=overdue_after,
            metavar="SECONDS",
            help=f"Unhealthy when an enabled job is overdue by more than this (default {overdue_after:g}).",
        )
        listing = add("list", "The jobs, soonest first.")
        listing.add_argument("--state", choices=JobState.values, help="Only jobs in this state.")
        listing.add_argument("--task", metavar="NAME", help="Only jobs of this task.")
        listing.add_argument("--limit", type=int, default=None, metavar="N", help="At most N jobs.")
        add("show", "One job: its columns, next fire times and latest runs.").add_argument("job_id", metavar="JOB_ID")
        pause = add("pause", "Pause jobs until they are resumed.", json_output=False)
        pause.add_argument("job_ids", nargs="+", metavar="JOB_ID")
        pause.add_argument("--note", help="Why; shown with the job until it is resumed.")
        for name, text in (
            ("resume", "Resume paused jobs on their next slot from now."),
            ("run-now", "Make jobs due at once; then they go on as before."),
        ):
            add(name, text, json_output=False).add_argument("job_ids", nargs="+", metavar="JOB_ID")
        delete = add("delete", "Delete jobs and their run history.", json_output=False)
        delete.add_argument("job_ids", nargs="+", metavar="JOB_ID")
        delete.add_argument("--yes", action="store_true", help="Confirm: nothing is deleted without it.")
        purge = add("purge-runs", "Delete the run history of runs that finished long enough ago.")
        purge.add_argument("--older-than", type=_days, required=True, metavar="DAYS")
        add("sync", "Bring declared schedules into the database.").add_argument(
            "--dry-run", action="store_true", help="Say what would change, change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            app = get_scheduler_app()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        out = cli.Output(self.stdout, self.stderr, options.get("json", False))
        status = cli.SUBCOMMANDS[options["subcommand"]](app, options, out)
        self.stdout.flush()
        if status != cli.OK:
            sys.exit(status)
