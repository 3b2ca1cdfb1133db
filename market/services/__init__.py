"""Writes of the market: model import (model_import.py), providers coming and going (providers.py), bids and jobs
and their slots on providers (jobs.py), runners' leases (runners.py), auction rounds (auction.py), settlement
(settlement.py). Callers use `from market import services` and `services.<name>(...)`."""

from market.services.accounts import (
    account_open,
    account_sign_up,
    api_token_create,
    api_token_revoke,
    default_token_create,
    default_token_revoke,
)
from market.services.auction import bids_expire, clear_market
from market.services.jobs import (
    job_cancel,
    job_claim,
    job_create,
    job_finish,
    job_progress,
    job_publish_end,
    job_requeue,
    provider_claim_for_shard,
    provider_release,
)
from market.services.model_import import ImportReport, model_import, resolve_source
from market.services.providers import (
    provider_benchmark,
    provider_benchmark_fail,
    provider_connect,
    provider_disconnect,
    provider_heartbeat,
    provider_post_ask,
    provider_record_failure,
    provider_record_speed,
    provider_record_success,
)
from market.services.runners import job_resume_claim, job_runner_beat, jobs_orphaned
from market.services.settlement import job_settle

__all__ = [
    "ImportReport",
    "account_open",
    "account_sign_up",
    "api_token_create",
    "api_token_revoke",
    "bids_expire",
    "clear_market",
    "default_token_create",
    "default_token_revoke",
    "job_cancel",
    "job_claim",
    "job_create",
    "job_finish",
    "job_progress",
    "job_publish_end",
    "job_requeue",
    "job_resume_claim",
    "job_runner_beat",
    "job_settle",
    "jobs_orphaned",
    "model_import",
    "provider_benchmark",
    "provider_benchmark_fail",
    "provider_claim_for_shard",
    "provider_connect",
    "provider_disconnect",
    "provider_heartbeat",
    "provider_post_ask",
    "provider_record_failure",
    "provider_record_speed",
    "provider_record_success",
    "provider_release",
    "resolve_source",
]
