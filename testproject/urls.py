from django.apps import apps
from django.contrib import admin
from django.urls import path

if apps.is_installed("taskiq_django"):
    # taskiq-django's admin reads request.scope (its ASGI scheduler and broker): under WSGI, as
    # runserver and the test client serve this project, its pages fail with a 500. Its rows are
    # seen here as the taskiq-django:<schedule_id> jobs they become (IMPORT_TASKIQ_DJANGO).
    from taskiq_django.models import TaskiqTaskSchedule

    admin.site.unregister(TaskiqTaskSchedule)

urlpatterns = [path("admin/", admin.site.urls)]
