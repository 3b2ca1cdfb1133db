"""The provider tab's side of fraud proofs, in real Chromium: its commitments and proofs (commitment.js) are
inference/commitment.py's to the byte, its reveal frames decode in Python, its state store keeps closed sessions in
IndexedDB and prunes old ones; and a tab serving a real job on a real server (Daphne, the embedded profile) commits
to the states it computed, keeps them across a reload, and answers a referee's reveals from IndexedDB with proofs the
server accepts, or `no_states` when it lost them."""

from __future__ import annotations

import base64
import functools
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference import commitment, wire
from inference.gguf_model import GGUFModel, smollm2_path
from inference.runtime import ShardRuntime
from market.localstack import LocalMarket
from worker_web.testing.tab_driver import BrowserTab, launch, playwright_driver
from worker_web.testing.tab_parity import HIDDEN_ATOL, HIDDEN_RTOL, descriptors

STATIC = Path(__file__).resolve().parents[2] / "worker_web" / "static" / "worker_web"
PASSWORD = "tab-commitment-password"
PROMPT = "Name three colours."
PLAN = "0-15,15-30"


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with playwright_driver() as driver:
        yield driver


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # the base class's name
        pass


@pytest.fixture(scope="module")
def page(playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Chromium page on a plain HTTP server of the tab's static files: 127.0.0.1 is a secure context, so
    crypto.subtle and IndexedDB are there, and the modules import as the worker imports them."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(STATIC)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with launch(playwright, tmp_path_factory.mktemp("chromium-modules")) as context:
            tab = context.new_page()
            tab.goto(f"http://127.0.0.1:{server.server_port}/")
            yield tab
    finally:
        server.shutdown()


# --- the modules, against Python ----------------------------------------------------------------------------------

COMMIT_JS = """async ({states, layers}) => {
    const c = await import('/commitment.js');
    const data = new Float32Array(Uint8Array.from(atob(states), (ch) => ch.charCodeAt(0)).buffer);
    const nodes = await c.leaves(data, layers);
    const proofs = [];
    for (let i = 0; i < layers; i++) proofs.push(await c.proof(nodes, i));
    return {root: await c.commit(data, layers), proofs};
}"""


@pytest.mark.parametrize("layers", [1, 2, 3, 5, 30])
def test_the_tabs_roots_and_proofs_are_pythons_and_verify(page: Any, layers: int) -> None:
    rng = np.random.default_rng(layers)
    states = rng.standard_normal((layers, 3, 8)).astype(np.float32)
    # Signed zero, a subnormal, near the top: the leaf hashes bytes, not values.
    states[0, 0, :3] = np.array([-0.0, 1e-45, 3.4e38], dtype=np.float32)
    js = page.evaluate(COMMIT_JS, {"states": b64(states), "layers": layers})
    nodes = commitment.leaves(states)
    assert js["root"] == commitment.commit(states)
    assert js["proofs"] == [[list(item) for item in commitment.proof(nodes, i)] for i in range(layers)]
    for i in range(layers):
        assert commitment.verify(states[i], js["proofs"][i], js["root"])
        if layers > 1:  # a proof opens its own layer only
            assert not commitment.verify(states[(i + 1) % layers], js["proofs"][i], js["root"])


def test_a_reveal_frame_from_the_tab_decodes_in_python(page: Any) -> None:
    session = uuid.uuid4()
    states = np.random.default_rng(1).standard_normal((4, 576)).astype(np.float32)
    frame = page.evaluate(
        """async ({session, states}) => {
            const wire = await import('/wire.js');
            const data = new Float32Array(Uint8Array.from(atob(states), (ch) => ch.charCodeAt(0)).buffer);
            const bytes = new Uint8Array(wire.encodeReveal(session, 70000, 29, [4, 576], data));
            return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
        }""",
        {"session": str(session), "states": b64(states)},
    )
    decoded = wire.decode(bytes.fromhex(frame))
    assert (decoded.kind, decoded.session, decoded.step, decoded.shard) == (wire.MessageType.REVEAL, session, 70000, 29)
    assert decoded.tensor.dtype == np.float32 and np.array_equal(decoded.tensor, states)


def test_the_state_store_keeps_a_closed_session_in_indexeddb_and_prunes_it_after_the_keep_time(page: Any) -> None:
    result = page.evaluate(
        """async () => {
            const { StateStore } = await import('/state-store.js');
            const store = new StateStore({ keepSeconds: 60 });
            const session = crypto.randomUUID(), t0 = 1_000_000_000_000;
            for (let step = 0; step < 3; step++) {
                store.add(session, step, Float32Array.from({ length: 2 * 3 * 4 }, (_, i) => step * 100 + i), [2, 3, 4]);
            }
            const fromMemory = await store.layer(session, 1, 2);
            const hugeRange = await store.layer(session, 0, 2 ** 32 - 1); // a wide ask is refused, not enumerated
            await store.close(session, t0);
            const reopened = new StateStore({ keepSeconds: 60 }); // as after a reload: memory gone
            const stored = await reopened.layer(session, 0, 2);
            const step1 = Array.from(stored.get(1).data);
            return {
                memory: [...fromMemory.keys()], hugeRange, openAfterClose: store.open.size, stored: [...stored.keys()],
                step1, dims: [stored.get(1).layers, stored.get(1).tokens, stored.get(1).hidden],
                beyond: await reopened.layer(session, 0, 3), other: await reopened.layer(crypto.randomUUID(), 0, 0),
                prunedEarly: await reopened.prune(t0 + 59_000), prunedLate: await reopened.prune(t0 + 61_000),
                afterPrune: await reopened.layer(session, 0, 0),
            };
        }"""
    )
    assert result["memory"] == [1, 2] and result["hugeRange"] is None and result["openAfterClose"] == 0
    assert result["stored"] == [0, 1, 2] and result["dims"] == [2, 3, 4]
    assert result["step1"] == [100.0 + i for i in range(24)]
    assert result["beyond"] is None and result["other"] is None  # a missing step: no partial answer
    assert result["prunedEarly"] == 0 and result["prunedLate"] == 3 and result["afterPrune"] is None


# --- a tab on a real server --------------------------------------------------------------------------------------

INPUTS = """
import base64, json
import numpy as np
from market.models import Job
from verification.services import transcripts
works = transcripts.hop_works(transcripts.job_transcript(Job.objects.get(pk={job})))
print(json.dumps([[str(x.dtype), list(x.shape), base64.b64encode(np.ascontiguousarray(x).tobytes()).decode()]
                  for x in works[{hop}].inputs]))
"""

# What phase 1 of a dispute decides when it blames a hop (verification/services/disputes.py `_phase_one`), written
# at once: the referee's clock then asks the tab to reveal its layers, bisecting them.
ACCUSE = """
import json, uuid
from datetime import timedelta
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from verification.models import Dispute
from verification.services import disputes
with transaction.atomic():
    dispute = disputes.audit_open(job_id={job})
    Dispute.objects.filter(pk=dispute.pk).update(
        state=Dispute.State.REVEALING, step={step}, hop={hop}, provider_id={provider}, session=uuid.UUID("{session}"),
        layer_low=0, layer_high={layers}, referee={{}},
        deadline=timezone.now() + timedelta(seconds=settings.REVEAL_DEADLINE_SECONDS),
    )
print(json.dumps(dispute.pk))
"""

REVEALS = """
import json
from verification.models import Reveal
print(json.dumps([[r.layer, r.first_step, r.last_step, r.valid, r.problem]
                  for r in Reveal.objects.filter(dispute__job_id={job}).order_by("pk")]))
"""


class TabMarket(LocalMarket):
    buyer: str
    database: Path

    def shell(self, code: str) -> Any:
        """Run Python in the server's Django (its database); the JSON it printed last."""
        return json.loads(self.manage("shell", "-c", code).splitlines()[-1])

    def commitments(self, session: str) -> dict[int, str]:
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT step, root FROM verification_commitment WHERE session = ?", (uuid.UUID(session).hex,)
            )
            return dict(rows.fetchall())

    def job(self, max_new_tokens: int) -> dict[str, Any]:
        bid = self.submit(self.buyer, model="smollm2-135m", prompt=PROMPT, max_new_tokens=max_new_tokens)
        with ThreadPoolExecutor(1) as pool:  # Playwright's sync API keeps an event loop on this thread
            pool.submit(self.stream, bid["id"], self.buyer).result()
        status, job = self.api("GET", f"/api/jobs/{bid['id']}/", token=self.buyer)
        assert status == 200 and job["state"] == "done", job
        return dict(job)

    def verdict(self, job_id: int) -> dict[str, Any]:
        def view() -> dict[str, Any]:
            return dict(self.api("GET", f"/api/jobs/{job_id}/verification/", token=self.buyer)[1])

        def decided() -> bool:
            disputes = view()["disputes"]
            return bool(disputes) and all(d["state"] in ("fraud", "no_fraud") for d in disputes)

        self.wait(decided, 300, f"the verdict on job {job_id}")
        return dict(view()["disputes"][0])


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TabMarket]:
    """The embedded profile (SQLite, the referee on the server's own clock), the model in two shards, one headless
    provider: the tab serves the other hop of every job (whichever the auction gives it)."""
    work = tmp_path_factory.mktemp("tab-commitment")
    env = {
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "REDIS_URL": "",
        "MEDIA_ROOT": str(work / "media"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SIGNUP_GRANT": "1000000000",
        "AUDIT_FLOOR_PERMILLE": "0",  # no random audits: the test opens the one it means
        "AUDIT_NEW_PERMILLE": "0",
        "VERIFY_EVERY_SECONDS": "1",
    }
    stack = TabMarket(env=env, logs=work / "logs")
    stack.database = work / "db.sqlite3"
    stack.manage("migrate", "--noinput", "-v0")
    stack.manage("import_model", "smollm2-135m", "--plan", PLAN, "--quant", "q4")
    stack.buyer = stack.manage("issue_token", "alice", "--create")
    stack.manage("issue_token", "dave", "--create", "--password", PASSWORD)
    carol = stack.manage("issue_token", "carol", "--create")
    try:
        stack.start_server()
        stack.start_provider("headless", token=carol)
        yield stack
    finally:
        stack.stop()
        print(f"tab commitment logs: {work / 'logs'}")


@pytest.fixture(scope="module")
def tab(market: TabMarket, playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserTab]:
    with launch(playwright, tmp_path_factory.mktemp("chromium-profile")) as context:
        browser_tab = BrowserTab(context, market.url, log=market.logs / "tab-console.log")
        browser_tab.sign_in("dave", PASSWORD)
        yield browser_tab


def provide(market: TabMarket, tab: BrowserTab) -> None:
    tab.start()

    def both() -> bool:
        return sorted(p["kind"] for p in market.online_providers(market.buyer)) == ["browser", "headless"]

    market.wait(both, 180, "the tab and the headless provider online and benchmarked")


# The tab's state store, opened from the page (only after the worker created it, or it would be made without its
# object store); `steps` is the key range of one session's records.
STATES_JS = """async ({session, forget}) => {
    const db = await new Promise((ok, fail) => {
        const r = indexedDB.open('compute-market-states');
        r.onsuccess = () => ok(r.result);
        r.onerror = fail;
    });
    const steps = IDBKeyRange.bound([session, 0], [session, Infinity]);
    const tx = db.transaction('steps', forget ? 'readwrite' : 'readonly');
    const keys = await new Promise((ok) => {
        const r = tx.objectStore('steps').getAllKeys(steps);
        r.onsuccess = () => ok(r.result);
    });
    if (forget) tx.objectStore('steps').delete(steps);
    await new Promise((ok) => { tx.oncomplete = ok; });
    db.close();
    return keys.map((k) => k[1]);
}"""


def kept_steps(tab: BrowserTab, session: str, *, forget: bool = False) -> list[int]:
    """The steps of a session the tab keeps in IndexedDB (deleted after they are read, with `forget`)."""
    return list(tab.page.evaluate(STATES_JS, {"session": session, "forget": forget}))


def accuse(market: TabMarket, job: dict[str, Any], served: dict[str, Any], *, step: int) -> None:
    """The referee blames the tab's hop (all 15 layers of its shard) at `step` of its session."""
    fields = {"job": job["id"], "hop": served["hop"], "provider": served["provider"], "session": served["session"]}
    market.shell(ACCUSE.format(step=step, layers=15, **fields))


def served_and_kept(market: TabMarket, tab: BrowserTab, job: dict[str, Any]) -> tuple[dict[str, Any], dict[int, str]]:
    """The tab's pipeline entry, once the commitments of every step it served are stored and the closed session's
    states are in IndexedDB; the roots by step."""
    (served,) = [entry for entry in job["pipeline"] if entry["provider_name"] == "dave-browser"]
    assert served["ended"] == "done", served
    session, steps = served["session"], tab.number("stat-steps")  # every step it served, the last one included
    assert steps >= served["until_step"] > 0
    market.wait(lambda: len(market.commitments(session)) == steps, 30, "the tab's commitments stored")
    market.wait(lambda: kept_steps(tab, session) == list(range(steps)), 30, "the session's states in IndexedDB")
    return served, market.commitments(session)


def wait_proofs_line(tab: BrowserTab, *, commits: int, reveals: int) -> None:
    line = "document.getElementById('stat-proofs').dataset"
    tab.page.wait_for_function(f"{line}.commits === '{commits}' && {line}.reveals === '{reveals}'", timeout=15_000)
    assert tab.text("stat-proofs") == f"{commits} commitments sent, {reveals} reveals answered"


@pytest.mark.slow
def test_a_tab_commits_to_its_states_and_reveals_them_from_indexeddb_after_a_reload(
    market: TabMarket, tab: BrowserTab
) -> None:
    provide(market, tab)
    job = market.job(max_new_tokens=6)
    served, roots = served_and_kept(market, tab, job)
    session = served["session"]
    wait_proofs_line(tab, commits=len(roots), reveals=0)

    # The roots are those of the states the tab's runtime computes on the inputs it was given (the transcript's),
    # and those states are the reference shard's within the documented tolerance.
    config = GGUFModel(smollm2_path()).config
    shard = descriptors(market, market.buyer, "q4", config)[served["hop"]]
    inputs = [
        np.frombuffer(base64.b64decode(raw), dtype=dtype).reshape(shape)
        for dtype, shape, raw in market.shell(INPUTS.format(job=job["id"], hop=served["hop"]))
    ]
    steps = len(inputs)  # the steps the job delivered (the transcript's)
    assert steps == served["until_step"]
    # As the tab decodes them: token ids, or float16 hidden states widened exactly to float32.
    as_sent = [("int64", x) if x.dtype == np.int64 else ("float32", x.astype(np.float32)) for x in inputs]
    tab_states = tab.evaluate(shard, [(dtype, list(x.shape), x.tobytes()) for dtype, x in as_sent])
    reference = ShardRuntime(next(Path(market.env["MEDIA_ROOT"]).rglob(f"{shard['sha256']}*")), sha256=shard["sha256"])
    reference.open("reference")
    for step, (x, got) in enumerate(zip(inputs, tab_states, strict=True)):
        native = reference.step("reference", x).layer_hidden
        ours = np.frombuffer(got["layer_hidden"], dtype=np.float32).reshape(native.shape)
        assert roots[step] == commitment.commit(ours), f"step {step}"
        limit = HIDDEN_ATOL + HIDDEN_RTOL * float(np.abs(native).max())
        assert float(np.abs(ours - native).max()) <= limit, f"step {step}"

    # The session closed: its states are in IndexedDB, and still there after a reload empties the worker's memory.
    tab.reload()
    provide(market, tab)
    assert kept_steps(tab, session) == list(range(len(roots)))

    # A referee blames the tab's hop at its last step: it bisects the tab's 15 layers with reveals, each checked
    # against the commitments by `reveal_record`, and finds every layer honest.
    accuse(market, job, served, step=steps - 1)
    dispute = market.verdict(job["id"])
    reveals = market.shell(REVEALS.format(job=job["id"]))
    assert reveals and all(valid is True for _, _, _, valid, _ in reveals), reveals
    assert all((first, last) == (0, steps - 1) for _, first, last, _, _ in reveals)
    assert dispute["state"] == "no_fraud", dispute
    wait_proofs_line(tab, commits=0, reveals=len(reveals))  # counted since the reload


@pytest.mark.slow
def test_a_tab_that_lost_its_states_answers_no_states_and_loses_the_dispute(market: TabMarket, tab: BrowserTab) -> None:
    job = market.job(max_new_tokens=3)
    served, _ = served_and_kept(market, tab, job)
    session, steps = served["session"], served["until_step"]
    kept_steps(tab, session, forget=True)
    assert kept_steps(tab, session) == []
    accuse(market, job, served, step=steps - 1)
    dispute = market.verdict(job["id"])
    (reveal,) = market.shell(REVEALS.format(job=job["id"]))
    # no_states names the request: the server records an empty answer at once instead of waiting out the deadline.
    assert reveal[3] is False and "0 proofs" in reveal[4], reveal
    assert dispute["state"] == "fraud" and "does not open its commitments" in dispute["reason"], dispute
