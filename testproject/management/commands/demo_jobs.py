"""Create (or bring up to date) the demo's jobs, then list every job."""

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from django_taskiq_beat import CrontabTrigger, IntervalTrigger, OneOffSchedule, PeriodicSchedule, get_scheduler_app
from django_taskiq_beat.models import SchedulerJob


class Command(BaseCommand):
    help = "Upsert the demo jobs and print every scheduler job."

    def handle(self, *args: Any, **options: Any) -> None:
        app = get_scheduler_app()
        app.single(task="demo.heartbeat").upsert(
            PeriodicSchedule(interval=IntervalTrigger(seconds=5)), job_id="demo.heartbeat", name="Heartbeat every 5 s"
        )
        app.single(task="demo.greet", args=["Django"]).upsert(
            PeriodicSchedule(crontab=CrontabTrigger.from_expression("* * * * *")),
            job_id="demo.greet",
            name="Greeting every minute",
        )
        if not SchedulerJob.objects.filter(pk="demo.add.once").exists():
            app.single(task="demo.add", args=[2, 3]).schedule(
                OneOffSchedule(run_at=timezone.now() + timedelta(seconds=10)),
                job_id="demo.add.once",
                name="Add once, 10 s after the first start",
            )
        for job in SchedulerJob.objects.order_by("id"):
            next_run = job.next_run_at.isoformat(timespec="seconds") if job.next_run_at else "-"
            self.stdout.write(
                f"{job.id:<16} {job.task_name:<16} {job.strategy:<9} next: {next_run}  runs: {job.dispatch_count}"
            )
