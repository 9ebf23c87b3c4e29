"""A broker module that sets Django up before it defines the broker: chains cannot work with it."""

import os

import django
from taskiq import InMemoryBroker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
django.setup()

broker = InMemoryBroker()
