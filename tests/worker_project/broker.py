"""A broker module laid out as the README tells a worker's to be: broker first, then Django."""

from taskiq import InMemoryBroker

from django_taskiq_beat.worker import setup_django

broker = InMemoryBroker()
setup_django("testproject.settings")
