"""A broker module laid out as the docs tell a worker's to be (docs/chains.md): broker first, then Django."""

from taskiq import InMemoryBroker

from django_taskiq_beat.worker import setup_django

broker = InMemoryBroker()
setup_django("testproject.settings")
