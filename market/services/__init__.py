"""Writes of the market: model import (model_import.py), providers coming and going (providers.py), jobs and their
placement on providers (jobs.py). Callers use `from market import services` and `services.<name>(...)`."""

from market.services.jobs import (
    job_cancel,
    job_claim,
    job_create,
    job_finish,
    job_progress,
    provider_claim_for_shard,
    provider_release,
)
from market.services.model_import import ImportReport, model_import, resolve_source
from market.services.providers import (
    provider_benchmark,
    provider_connect,
    provider_disconnect,
    provider_heartbeat,
    provider_record_failure,
    provider_record_success,
)

__all__ = [
    "ImportReport",
    "job_cancel",
    "job_claim",
    "job_create",
    "job_finish",
    "job_progress",
    "model_import",
    "provider_benchmark",
    "provider_claim_for_shard",
    "provider_connect",
    "provider_disconnect",
    "provider_heartbeat",
    "provider_record_failure",
    "provider_record_success",
    "provider_release",
    "resolve_source",
]
