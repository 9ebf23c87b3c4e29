import logging

from django.apps import AppConfig

logger = logging.getLogger("django_taskiq_beat.app")


class DjangoTaskiqBeatConfig(AppConfig):
    name = "django_taskiq_beat"
    verbose_name = "Taskiq beat"

    def ready(self) -> None:
        from django_taskiq_beat import checks  # noqa: F401  (registers the system checks)

        self._register_orchestrator()

    def _register_orchestrator(self) -> None:
        """Put the chain orchestrator on the configured broker, in every process that sets Django up.

        A ``taskiq worker`` whose broker module sets Django up (see README) then knows the
        orchestrator with no call of its own. A broker that does not import is left to
        the system checks to report.
        """
        from django_taskiq_beat.chains import register_chain_orchestrator
        from django_taskiq_beat.conf import broker_path, load_broker

        try:
            path = broker_path()
            if path:
                register_chain_orchestrator(load_broker(path))
        except Exception:
            logger.debug("No chain orchestrator registered: TASKIQ_BEAT['BROKER'] does not load.", exc_info=True)
