"""Jobs through real providers over the real server: exact output, failover with and without a spare."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from market.localstack import stream_tokens
from transport import accelerator

pytestmark = pytest.mark.slow

STORY = "Write a long story about a dragon."


def _indices(events: list[dict[str, Any]]) -> list[int]:
    snapshot = next(e for e in events if e["type"] == "snapshot")
    return list(range(len(snapshot["tokens"]))) + [e["index"] for e in events if e["type"] == "token"]


@pytest.mark.parametrize(
    ("prompt", "max_new_tokens"), [("What is the capital of France?", 32), ("Explain photosynthesis briefly.", 48)]
)
def test_greedy_output_equals_the_whole_model(
    market: Any, whole_model_tokens: Callable[[str, int], list[int]], prompt: str, max_new_tokens: int
) -> None:
    market.ensure_providers(3)
    job = market.submit(market.alice, model="smollm2-135m", prompt=prompt, max_new_tokens=max_new_tokens)
    events = market.stream(job["id"], market.alice)
    expected = whole_model_tokens(prompt, max_new_tokens)
    status, done = market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)
    assert status == 200 and done["state"] == "done", done
    assert done["tokens"] == expected
    assert list(stream_tokens(events)) == expected
    assert _indices(events) == list(range(len(expected)))
    assert [hop["hop"] for hop in done["pipeline"]] == [0, 1, 2]
    assert len({hop["provider"] for hop in done["pipeline"]}) == 3, "each shard runs on a different provider"
    # Every step input (the runner's to hop 0, each hop's output to the next) was counted, and on this server, where
    # the runner and every provider's consumer share the loop, none went through the channel layer
    # (transport/relay.py). With the fast path on (transport/daphne_fast.py), most went onto the socket in the callback
    # that had them; with it off (RELAY_FAST_PATH=off, or other library versions), none did.
    steps, relayed = done["timings"]["decode_steps"] + 1, done["timings"]["step_inputs_relayed"]
    assert sum(relayed.values()) == 3 * steps and "layer" not in relayed, relayed
    if accelerator.enabled("server"):  # the server runs with this process's environment and libraries
        assert relayed.get("now", 0) > 2 * steps, relayed
    else:
        assert relayed == {"queued": 3 * steps}, relayed
    if prompt.startswith("What is the capital"):
        assert done["text"] == "The capital of France is Paris."


def _kill_hop_provider_at(market: Any, job_id: int, hop: int, at_token: int) -> tuple[Callable[..., None], list[str]]:
    killed: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "token" and event["index"] >= at_token and not killed:
            _, job = market.api("GET", f"/api/jobs/{job_id}/", token=market.alice)
            name = next(h["provider_name"] for h in job["pipeline"] if h["hop"] == hop and h["until_step"] is None)
            market.kill(name, signal.SIGKILL)
            killed.append(name)

    return on_event, killed


@pytest.mark.parametrize("hop", [1, 0])  # hop 0 is where a greedy job's head sends each next token on to
def test_sigkilled_provider_is_replaced_by_the_spare_with_identical_output(
    market: Any, whole_model_tokens: Callable[[str, int], list[int]], hop: int
) -> None:
    market.ensure_providers(4)
    job = market.submit(market.alice, model="smollm2-135m", prompt=STORY, max_new_tokens=120)
    on_event, killed = _kill_hop_provider_at(market, job["id"], hop=hop, at_token=20)
    events = market.stream(job["id"], market.alice, on_event=on_event)
    _, done = market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)
    expected = whole_model_tokens(STORY, 120)
    assert killed, "the provider was never killed: the job ended before token 20"
    assert done["state"] == "done", done
    assert list(stream_tokens(events)) == expected == done["tokens"]
    assert _indices(events) == list(range(len(expected))), "a token was lost or repeated"
    served = [h for h in done["pipeline"] if h["hop"] == hop]
    assert len(served) == 2 and served[0]["provider_name"] == killed[0]
    assert served[0]["ended"].startswith("provider_lost") and served[1]["ended"] == "done"
    assert served[1]["from_step"] == served[0]["until_step"] > 0


def test_sigkilled_provider_without_a_spare_fails_the_job_with_its_reason(
    market: Any, whole_model_tokens: Callable[[str, int], list[int]]
) -> None:
    market.ensure_providers(3)
    job = market.submit(market.alice, model="smollm2-135m", prompt=STORY, max_new_tokens=120)
    on_event, killed = _kill_hop_provider_at(market, job["id"], hop=2, at_token=10)
    events = market.stream(job["id"], market.alice, on_event=on_event)
    _, failed = market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)
    assert killed
    assert failed["state"] == "failed" and failed["error_code"] == "no_replacement"
    assert killed[0] in failed["error"] and "smollm2-135m:q4:20-30" in failed["error"]
    assert events[-1]["type"] == "done" and events[-1]["state"] == "failed"
    streamed = list(stream_tokens(events))
    assert streamed == failed["tokens"] == whole_model_tokens(STORY, 120)[: len(streamed)]
    _, providers = market.api("GET", "/api/providers/", token=market.carol)
    assert all(p["busy_slots"] == 0 for p in providers), "the failed job still holds provider slots"


def test_two_jobs_run_at_once_and_each_gets_its_own_exact_output(
    market: Any, whole_model_tokens: Callable[[str, int], list[int]]
) -> None:
    """Every provider has two slots: both jobs are placed at once, and the worker drives them side by side."""
    from concurrent.futures import ThreadPoolExecutor

    market.ensure_providers(3)
    prompts = ["Write a long story about a dragon.", "Explain photosynthesis briefly."]
    jobs = [market.submit(market.alice, model="smollm2-135m", prompt=p, max_new_tokens=48) for p in prompts]
    with ThreadPoolExecutor(2) as pool:
        streams = list(pool.map(lambda job: market.stream(job["id"], market.alice), jobs))
    for prompt, job, events in zip(prompts, jobs, streams, strict=True):
        _, done = market.api("GET", f"/api/jobs/{job['id']}/", token=market.alice)
        assert done["state"] == "done", done
        assert done["tokens"] == list(stream_tokens(events)) == whole_model_tokens(prompt, 48)
    _, first = market.api("GET", f"/api/jobs/{jobs[0]['id']}/", token=market.alice)
    _, second = market.api("GET", f"/api/jobs/{jobs[1]['id']}/", token=market.alice)
    assert first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"], "not at once"
