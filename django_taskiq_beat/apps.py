from django.apps import AppConfig


class DjangoTaskiqBeatConfig(AppConfig):
    name = "django_taskiq_beat"
    verbose_name = "Taskiq beat"

    def ready(self) -> None:
        from django_taskiq_beat import checks  # noqa: F401  (registers the system checks)
