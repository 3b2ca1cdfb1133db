from django.apps import AppConfig


class WorkerWebConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "worker_web"
    verbose_name = "Provider gateway"
