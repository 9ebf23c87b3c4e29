"""The admin's engines screen and the job list's warning when no engine is alive."""

import pytest
from django.test import Client
from django.urls import reverse

from tests.test_admin import JOBS
from tests.test_admin_hardening import client_with
from tests.test_cli import engine_row

pytestmark = pytest.mark.django_db

ENGINES = reverse("admin:django_taskiq_beat_schedulerengine_changelist")
NO_ENGINE = "No scheduler engine is alive"


def test_the_job_list_warns_when_no_engine_is_alive(admin_client: Client) -> None:
    assert NO_ENGINE in admin_client.get(JOBS).content.decode()
    engine_row("engine-dead", heartbeat_age=60)
    assert NO_ENGINE in admin_client.get(JOBS).content.decode()
    engine_row("engine-live", heartbeat_age=1)
    assert NO_ENGINE not in admin_client.get(JOBS).content.decode()


def test_the_engines_screen_shows_each_engine_and_its_state(admin_client: Client) -> None:
    engine_row("engine-live", heartbeat_age=2, dispatched_count=1234, claim_conflict_count=7)
    engine_row("engine-dead", heartbeat_age=3600)
    engine_row("engine-stopped", heartbeat_age=10, stopped=True)
    page = admin_client.get(ENGINES).content.decode()
    for text in (
        "engine-live",
        "engine-dead",
        "engine-stopped",
        "host-a:4242",
        "0.1.0",
        "1234 sent",
        "7 conflicts",
        "2 s ago",
        ">alive</strong>",
        ">dead</strong>",
        ">stopped</strong>",
    ):
        assert text in page, text
    for state, shown in (("alive", "engine-live"), ("dead", "engine-dead"), ("stopped", "engine-stopped")):
        listed = admin_client.get(ENGINES, {"state": state}).context["cl"].result_list
        assert [engine.id for engine in listed] == [shown], state


def test_engines_are_read_only_and_need_their_own_view_permission(admin_client: Client) -> None:
    engine = engine_row("engine-live", heartbeat_age=1)
    change = reverse("admin:django_taskiq_beat_schedulerengine_change", args=[engine.pk])
    assert admin_client.get(reverse("admin:django_taskiq_beat_schedulerengine_add")).status_code == 403
    page = admin_client.get(change).content.decode()
    assert 'name="_save"' not in page and admin_client.post(change, {"hostname": "x"}).status_code == 403
    assert (
        admin_client.get(reverse("admin:django_taskiq_beat_schedulerengine_delete", args=[engine.pk])).status_code
        == 403
    )
    assert client_with("view_schedulerjob", "change_schedulerjob").get(ENGINES).status_code == 403
    assert client_with("view_schedulerengine").get(ENGINES).status_code == 200
