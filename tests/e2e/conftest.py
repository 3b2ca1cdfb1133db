"""A real market for end-to-end tests: Daphne, a Celery worker, the Redis channel layer, PostgreSQL, and headless
provider processes serving the real model (q4, three shards). Whatever profile pytest itself runs on, the stack
runs on the full one, in its own database (cm_e2e) and Redis database (5); E2E_DATABASE and E2E_REDIS_DB move it
elsewhere so that two checkouts can run their end-to-end tests at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from inference.config import ShardSpec
from inference.generate import LocalChain, SamplingParams, generate
from inference.gguf_model import GGUFModel, smollm2_path
from inference.runtime import ShardRuntime
from inference.shard_builder import build_shard
from inference.tokenizer import ChatTokenizer
from market.localstack import LocalMarket

PG = "postgres://postgres@127.0.0.1:5432"
DATABASE = os.environ.get("E2E_DATABASE", "cm_e2e")
REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('E2E_REDIS_DB', '5')}"
PLAN = "0-10,10-20,20-30"
SIGNUP_GRANT = 1_000_000_000


class E2EMarket(LocalMarket):
    """The stack plus the three accounts of the tests: alice and bob buy, carol provides."""

    alice: str
    bob: str
    carol: str
    serial = 0

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the stack's database directly (what the API does not show, like the platform's fee account)."""
        with psycopg.connect(f"{PG}/{DATABASE}") as conn:
            return conn.execute(query, args).fetchall()

    def alive(self) -> list[str]:
        return [n for n, p in self.processes.items() if n.startswith("p") and p.poll() is None]

    def ensure_providers(self, count: int) -> None:
        """Exactly `count` headless provider processes, each connected and benchmarked (a browser tab that is
        online besides them is not counted)."""
        for name in self.alive()[count:]:
            self.kill(name, signal.SIGTERM)
        while len(self.alive()) < count:
            self.serial += 1
            self.start_provider(f"p{self.serial}", token=self.carol, slots=2)
        self.wait(lambda: self.headless_online() == count, 120, f"{count} headless providers online")

    def headless_online(self) -> int:
        return len([p for p in self.online_providers(self.carol) if p["kind"] == "headless"])


def _fresh_database() -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")


@pytest.fixture(scope="session")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EMarket]:
    _fresh_database()
    redis.Redis.from_url(REDIS_URL).flushdb()
    work = tmp_path_factory.mktemp("e2e")
    env = {
        "DATABASE_URL": f"{PG}/{DATABASE}",
        "REDIS_URL": REDIS_URL,
        "MEDIA_ROOT": str(work / "media"),
        "STEP_DEADLINE_SECONDS": "15",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        # Money: enough for every test's bids; a short challenge window that beat closes while the tests watch (long
        # enough for an operator's audit of a job that just finished: its transcript is kept for the window).
        "SIGNUP_GRANT": str(SIGNUP_GRANT),
        "CHALLENGE_WINDOW_SECONDS": "20",
        "LEDGER_RELEASE_EVERY_SECONDS": "2",
    }
    stack = E2EMarket(env=env, logs=work / "logs")
    stack.manage("migrate", "--noinput", "-v0")
    stack.manage("import_model", "smollm2-135m", "--plan", PLAN, "--quant", "q4")
    stack.alice = stack.manage("issue_token", "alice", "--create")
    stack.bob = stack.manage("issue_token", "bob", "--create")
    stack.carol = stack.manage("issue_token", "carol", "--create")
    try:
        stack.start_server()
        stack.ensure_providers(3)
        yield stack
    finally:
        stack.stop()
        print(f"e2e logs: {work / 'logs'}")


@pytest.fixture(scope="session")
def whole_model_tokens() -> Callable[[str, int], list[int]]:
    """Greedy tokens of the whole model (one ONNX graph, q4, in this process) for a user prompt."""
    model = GGUFModel(smollm2_path())
    tokenizer = ChatTokenizer.from_gguf(model)
    spec = ShardSpec("smollm2-135m", "q4", 0, model.config.n_layers, model.config.n_layers)
    whole = LocalChain([ShardRuntime(build_shard(model, spec).SerializeToString())])
    cache: dict[tuple[str, int], list[int]] = {}

    def tokens(prompt: str, max_new_tokens: int) -> list[int]:
        if (prompt, max_new_tokens) not in cache:
            ids = tokenizer.encode_chat([{"role": "user", "content": prompt}])
            result = generate(
                whole, ids, max_new_tokens=max_new_tokens, stop_ids=tokenizer.stop_ids, sampling=SamplingParams()
            )
            cache[(prompt, max_new_tokens)] = result.tokens
        return cache[(prompt, max_new_tokens)]

    return tokens


@pytest.fixture(scope="session")
def logs_dir(market: E2EMarket) -> Path:
    return market.logs
