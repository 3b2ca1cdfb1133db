"""Builders for the verification tests: the tiny model, a buyer, another buyer and two provider owners, and `serve`,
which leaves a job the way the orchestrator does after running it: bid and escrowed, served by two providers on the
tiny model's two shards, settled through the ledger at the prices of a recorded round, with its transcript and the
providers' per-step commitments. `lie_at=step` makes the first hop's provider cheat at that
step, as tests/verification/cheater.py does over a socket: a shift of one layer's states (`lie_layer`) carried on to
its output, or of its output only (`lie_layer` None).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from inference import commitment
from inference.tiny import write_tiny_gguf
from market import model_files
from market import selectors as market_selectors
from market import services as market_services
from market.models import Assignment, AuctionRound, Job, LanguageModel, Provider, Shard
from verification.models import Reveal
from verification.services import commitments, transcripts

MESSAGES = [{"role": "user", "content": "hello there"}]
MAX_PRICE = 100_000  # base units the buyer bids (and escrows)
ASK, UNIT_PRICE = 10, 20  # base units per layer-token: each hop's cleared terms
STEPS = 3  # the prompt, then two generated tokens


@dataclass(frozen=True)
class Lie:
    """How the first hop's provider cheats at `step`: `shift` added to layer `layer`'s states and every layer after
    (carried on into its output), or with `layer` None to its output only (its committed layers stay honest)."""

    step: int
    layer: int | None = None
    shift: float = 1.0


@dataclass
class Served:
    """A finished, settled job and what each hop's provider committed to (layer_hidden per step, as it sent it)."""

    job: Job
    providers: list[Provider]
    sessions: list[uuid.UUID]
    states: list[list[np.ndarray]]  # [hop][step] -> layer_hidden [n_layers, S, H] float32

    def answer(self, reveal: Reveal) -> tuple[dict[int, np.ndarray], list[Any]]:
        """What an honest agent (worker_web/agent/provider.py `_reveal`) sends for `reveal`: the layer's committed
        states per step and one proof per step, the proofs as they arrive after a trip through JSON."""
        hop = int(reveal.dispute.hop or 0)
        steps = range(reveal.first_step, reveal.last_step + 1)
        states = {s: self.states[hop][s][reveal.layer] for s in steps}
        proofs = [commitment.proof(commitment.leaves(self.states[hop][s]), reveal.layer) for s in steps]
        return states, json.loads(json.dumps(proofs))


Serve = Callable[..., Served]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def model(tmp_path: Path, settings: Any, tiny_gguf: Path) -> LanguageModel:
    """The tiny model imported as two shards of two layers (a chain that can run), under a temporary MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return market_services.model_import(source=str(tiny_gguf), plan="0-2,2-4", name="tiny").model


@pytest.fixture
def alice() -> User:
    """The buyer, with the signup grant."""
    return market_services.account_open(username="alice")[0]


@pytest.fixture
def bob() -> User:
    """Another buyer."""
    return market_services.account_open(username="bob")[0]


@pytest.fixture
def carol() -> User:
    """Owner of the first hop's provider."""
    return market_services.account_open(username="carol")[0]


@pytest.fixture
def dave() -> User:
    """Owner of the second hop's provider."""
    return market_services.account_open(username="dave")[0]


@pytest.fixture
def providers(carol: User, dave: User) -> list[Provider]:
    """One provider per hop, offline (a reveal asked of them is recorded, not sent)."""
    return [Provider.objects.create(user=carol, name="p0"), Provider.objects.create(user=dave, name="p1")]


@pytest.fixture
def serve(model: LanguageModel, providers: list[Provider]) -> Serve:
    """serve(buyer, *, lie_at=None, lie_layer=None, on=providers, steps=STEPS, transcript=True, commit=True)."""

    def build(
        buyer: User,
        *,
        lie_at: int | None = None,
        lie_layer: int | None = None,
        on: list[Provider] | None = None,
        steps: int = STEPS,
        transcript: bool = True,
        commit: bool = True,
    ) -> Served:
        hop_providers = on or providers
        shards = list(Shard.objects.filter(model=model).order_by("first_layer"))
        job = market_services.job_create(
            buyer=buyer,
            model=model,
            messages=MESSAGES,
            max_new_tokens=8,
            temperature=Decimal(0),
            top_p=Decimal(1),
            seed=None,
            max_price=MAX_PRICE,
        )
        prompt = model_files.model_tokenizer(model).encode_chat(MESSAGES)
        lie = None if lie_at is None else Lie(step=lie_at, layer=lie_layer)
        inputs, states, heads = _run(shards, prompt, steps=steps, lie=lie)
        sessions = [uuid.uuid4() for _ in shards]
        _place_and_settle(job, shards, hop_providers, sessions, steps=steps, heads=heads)
        if transcript:
            transcripts.transcript_record(
                job_id=job.pk,
                hops=[
                    transcripts.hop_descriptor(h, market_selectors.shard_descriptor(s)) for h, s in enumerate(shards)
                ],
                inputs=inputs,
                heads=heads,
            )
        if commit:
            for provider, session, hop_states in zip(hop_providers, sessions, states, strict=True):
                roots = [
                    (session, step, commitment.commit(layer_hidden)) for step, layer_hidden in enumerate(hop_states)
                ]
                commitments.commitments_record(provider_id=provider.pk, commits=roots)
        return Served(job=Job.objects.get(pk=job.pk), providers=hop_providers, sessions=sessions, states=states)

    return build


def _run(
    shards: list[Shard], prompt: list[int], *, steps: int, lie: Lie | None
) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]], list[np.ndarray]]:
    """The pipeline, greedy, on the real shards: per hop what it was fed and the states it committed to, and the
    head's answer per step (its argmax token, int64 [1, 1], as the orchestrator records it)."""
    runtimes = [model_files.shard_runtime(s) for s in shards]
    for runtime in runtimes:
        runtime.open("job")
    inputs: list[list[np.ndarray]] = [[] for _ in shards]
    states: list[list[np.ndarray]] = [[] for _ in shards]
    heads: list[np.ndarray] = []
    fed = np.array([prompt], dtype=np.int64)
    for step in range(steps):
        for hop, runtime in enumerate(runtimes):
            inputs[hop].append(fed)
            result = runtime.step("job", fed)
            output, layer_hidden = result.output, result.layer_hidden
            if lie is not None and hop == 0 and step == lie.step:
                shift = np.float32(lie.shift)
                if lie.layer is not None:
                    layer_hidden = layer_hidden.copy()
                    layer_hidden[lie.layer :] += shift
                output = output + shift
            states[hop].append(layer_hidden)
            if runtime.spec.has_head:
                fed = np.array([[int(np.argmax(output[-1]))]], dtype=np.int64)
                heads.append(fed)
            else:
                fed = output.astype(np.float16)  # what travels between hops
    return inputs, states, heads


def _place_and_settle(
    job: Job,
    shards: list[Shard],
    hop_providers: list[Provider],
    sessions: list[uuid.UUID],
    *,
    steps: int,
    heads: list[np.ndarray],
) -> None:
    """The round that placed the job, its pipeline record as the runner leaves it, and the settlement."""
    fields = {"requested": "auto", "solver": "greedy", "status": "heuristic", "wall_time_s": 0.01, "welfare": 0}
    counts = {"n_jobs": 1, "n_providers": 2, "n_winners": 1, "n_losers": 0, "n_placed": 1, "buyer_payments": 0}
    round_ = AuctionRound.objects.create(objective=0, fees=0, **fields, **counts)
    pipeline = []
    for hop, (shard, provider, session) in enumerate(zip(shards, hop_providers, sessions, strict=True)):
        Assignment.objects.create(
            job=job,
            auction_round=round_,
            hop=hop,
            shard=shard,
            provider=provider,
            channel_name=f"chan.{provider.pk}",
            work=shard.n_layers * (job.prompt_tokens + job.max_new_tokens),
            ask=ASK,
            unit_price=UNIT_PRICE,
        )
        pipeline.append(
            {
                "hop": hop,
                "shard": shard.shard_id,
                "provider": provider.pk,
                "provider_name": provider.name,
                "session": str(session),
                "from_step": 0,
                "until_step": steps,
                "ended": "done",
            }
        )
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(
        state=Job.State.DONE,
        auction_round=round_,
        pipeline=pipeline,
        tokens=[int(h[0, 0]) for h in heads],
        started_at=now,
        finished_at=now,
    )
    market_services.job_settle(job_id=job.pk)
