"""Settings of the demo and test project.

SQLite by default; set ``DATABASE_URL=postgres://user:password@host:port/name`` to
use PostgreSQL instead, or ``mysql://...`` for MariaDB or MySQL.
"""

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-insecure-demo-only"
DEBUG = os.environ.get("DJANGO_DEBUG", "on") == "on"  # the load tests turn it off
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_taskiq_beat",
    "testproject",
]
# taskiq-django (the 'taskiq-django' extra) installs only on Python 3.12+ with Django 6.0.5+:
# its app, and so its taskiq_schedules table, is there wherever it could be installed.
if importlib.util.find_spec("taskiq_django") is not None:
    INSTALLED_APPS.append("taskiq_django")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "testproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database(url: str | None) -> dict[str, object]:
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "testproject" / "demo.sqlite3")),
            # WAL: readers do not block the writer, and a commit needs no fsync of the database file.
            # The tests shorten how long a write waits for another writer's lock (Python's default: 5 s).
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "timeout": float(os.environ.get("SQLITE_TIMEOUT_SECONDS", "5")),
            },
            # A file, not memory: the tests start engine processes on the test database.
            "TEST": {"NAME": str(Path(tempfile.gettempdir()) / f"taskiq-beat-test-{os.getpid()}.sqlite3")},
        }
    parts = urlsplit(url)
    server = {
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": os.environ.get("DB_HEALTH_CHECKS", "on") == "on",
    }
    if parts.scheme in ("postgres", "postgresql"):
        return {
            **server,
            "ENGINE": "django.db.backends.postgresql",
            "OPTIONS": {"application_name": os.environ.get("DB_APPLICATION_NAME", "testproject")},
        }
    if parts.scheme in ("mysql", "mariadb"):
        return {**server, "ENGINE": "django.db.backends.mysql", "OPTIONS": {"charset": "utf8mb4"}}
    raise ValueError(f"DATABASE_URL={url!r}: only postgres:// and mysql:// URLs are supported here.")


DATABASES = {"default": _database(os.environ.get("DATABASE_URL"))}

USE_TZ = True
TIME_ZONE = "Europe/Berlin"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TASKIQ_BEAT = {
    "BROKER": "testproject.tasks:broker",
    "SYNC_INTERVAL_SECONDS": 1.0,
    # The tests tune engine processes through this variable, e.g. '{"CLAIM_TTL_SECONDS": 2}'.
    **json.loads(os.environ.get("TASKIQ_BEAT_OPTIONS", "{}")),
}
if os.environ.get("TASKIQ_BEAT_DEMO"):
    # `make demo` declares a job in code too (docs/declared.md), synced at each engine start: the job
    # settings:answer. Not in the tests, whose engines send only the jobs each test writes.
    TASKIQ_BEAT["SCHEDULE"] = {
        "answer": {"task": "demo.add", "interval": 10, "args": [20, 22], "name": "Sum every 10 s, declared in settings"}
    }

# One handler, on the root logger; the loggers only get levels. A `taskiq worker` configures the
# root logger itself (logging.basicConfig) before its broker module sets Django up: this config
# then replaces that handler, so every line prints once, in this format. A handler of its own on
# "django_taskiq_beat" would print each of its lines a second time through the root's. Django's
# "django" logger is handed to the root handler for the same reason.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"]},
    "loggers": {"django_taskiq_beat": {"level": "INFO"}, "django": {"handlers": [], "level": "INFO"}},
}
