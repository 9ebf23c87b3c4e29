"""What a ``taskiq worker`` process needs: Django set up, once, from the broker module.

In the module the worker imports (``taskiq worker myproject.tasks:broker``), after the
broker is defined::

    from django_taskiq_beat.worker import setup_django
    setup_django("myproject.settings")

Django then registers the chain orchestrator on the broker (``AppConfig.ready``) and the
outcome middleware can write to the database. Inside a process that is already setting
Django up (``manage.py``, a web server), the call does nothing.

Django also applies ``settings.LOGGING`` here. ``taskiq worker`` has configured the root
logger already; a ``LOGGING`` that puts its handler on the root logger replaces taskiq's, and
one that puts a handler on ``django_taskiq_beat`` too prints each of our lines twice (give that
logger ``"propagate": False``, or only a level). This app adds no handler of its own.
"""

import os

import django
from django.apps import apps


def setup_django(settings_module: str) -> None:
    """Set Django up unless it is set up, or being set up, already."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
    if not apps.ready and not apps.loading:
        django.setup()
