"""A broker module laid out as the README tells a worker's to be: broker first, then Django."""

import os

import django
from django.apps import apps
from taskiq import InMemoryBroker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

broker = InMemoryBroker()

if not apps.ready and not apps.loading:  # a worker process: set Django up (inside Django it already is)
    django.setup()
