import logging
import sys

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

        A ``taskiq worker`` imports the broker module, which sets Django up: the module is
        then only partly imported, so the broker is taken from it as it stands (it must be
        defined before ``django.setup()``). Elsewhere the module is imported here.
        """
        from django_taskiq_beat.chains import register_chain_orchestrator
        from django_taskiq_beat.conf import broker_path, load_broker

        path = broker_path()
        if not path or ":" not in path:
            return  # nothing configured, or the system checks report the path
        module_name, attribute = path.split(":", 1)
        module = sys.modules.get(module_name)
        try:
            broker = getattr(module, attribute) if module is not None else load_broker(path)
        except Exception as exc:
            logger.warning(
                "The chain orchestrator is not registered on %s: %s. A worker using this broker cannot run task "
                "chains: define the broker before calling django.setup() in its module, or call "
                "django_taskiq_beat.chains.register_chain_orchestrator(broker).",
                path,
                exc,
            )
            return
        register_chain_orchestrator(broker)
