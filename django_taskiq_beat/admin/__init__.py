"""Admin screens: the dashboard, jobs, runs and engines, one module each (``common`` holds what they share)."""

from django_taskiq_beat.admin import dashboard, engines, jobs, runs  # noqa: F401  (each registers its screen)
