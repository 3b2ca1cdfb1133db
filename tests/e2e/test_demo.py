"""README command one: `manage.py demo --once` on a database and media folder of its own imports the model, starts
the server and three provider processes, serves the sample chat job through the auction and the pipeline, and
prints a settlement whose figures add up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from market.localstack import ROOT, free_port

SETTLED = re.compile(
    r"Settled: the bid escrowed ([\d,]+) base units; the job cost ([\d,]+) \(platform fee ([\d,]+)\) "
    r"and ([\d,]+) went back to the buyer\."
)
HOP = re.compile(r"hop (\d)\s+smollm2-135m:q4:(\S+)\s+on (\S+)\s+steps 0-(\d+)\s+done")
LINE = re.compile(r"hop (\d)\s+([\d,]+) layer-tokens x (\d+) =\s+([\d,]+)\s+\((\S+) receives ([\d,]+)\)")
LEFT = re.compile(r"Buyer available now ([\d,]+); provider earnings pending ([\d,]+)")
STAKED = re.compile(r"demo-provider staked ([\d,]+) base units on chain from (0x[0-9a-fA-F]{40}) \(minimum ([\d,]+)\)")
ANCHORED = re.compile(r"Anchored: settlement batch (\d+) .* the contract checks job (\d+)'s proof: (True|False)\.")
CHAIN_OK = re.compile(r"chain ok: the vault holds (\d+) base units = ledger (\d+) ")


def number(text: str) -> int:
    return int(text.replace(",", ""))


def run_demo(tmp_path: Path, **extra_env: str) -> str:
    """`manage.py demo --once` on a database and media folder of its own; what it printed."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}", "MEDIA_ROOT": str(tmp_path / "media")}
    env |= extra_env

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    manage("migrate", "--noinput", "-v0")
    return manage("demo", "--once", "--port", str(free_port()))


def test_the_demo_serves_the_sample_job_end_to_end_and_its_settlement_adds_up(tmp_path: Path) -> None:
    out = run_demo(tmp_path)

    answer = out.split("assistant> ", 1)[1].split("\n\n", 1)[0]
    assert answer.strip(), out
    tokens = re.search(r"(\d+) tokens \((stop|length)\); prefill \d+ ms, decode [\d.]+ tokens/s", out)
    assert tokens is not None and int(tokens[1]) > 0, out

    hops = HOP.findall(out)
    assert [(h[0], h[1]) for h in hops] == [("0", "0-10"), ("1", "10-20"), ("2", "20-30")], out
    assert len({h[2] for h in hops}) == 3, "one provider per shard"

    settled = SETTLED.search(out)
    assert settled is not None, out
    escrowed, paid, fee, refunded = (number(x) for x in settled.groups())
    assert escrowed == paid + refunded and 0 < fee < paid
    lines = LINE.findall(out)
    assert [line[0] for line in lines] == ["0", "1", "2"], out
    payments = [number(line[3]) for line in lines]
    receipts = [number(line[5]) for line in lines]
    for layer_tokens, price, payment in ((number(x[1]), int(x[2]), number(x[3])) for x in lines):
        assert layer_tokens * price == payment
    assert sum(payments) == paid and sum(payments) - sum(receipts) == fee
    left = LEFT.search(out)
    assert left is not None, out
    # The demo tops its buyer up to 1,000,000 base units before the bid; the providers' earnings wait out the window.
    assert number(left[1]) == 1_000_000 - paid and number(left[2]) == sum(receipts)

    # The providers staked on the chain before they took work; the settlement was anchored there, its proof checks
    # with the contract, and the ledger and the chain agree to the base unit after the run.
    staked = STAKED.search(out)
    assert staked is not None and number(staked[1]) >= number(staked[3]) > 0, out
    anchored = ANCHORED.search(out)
    assert anchored is not None and anchored[3] == "True", out
    chain_ok = CHAIN_OK.search(out)
    assert chain_ok is not None and chain_ok[1] == chain_ok[2], out
    assert "ledger ok:" in out


def test_on_a_machine_whose_providers_ask_far_more_the_demo_bids_from_the_quote_and_is_served(tmp_path: Path) -> None:
    # Asks 40 times the default rate: what providers 40 times slower would ask, far above the constant default bid
    # (DEFAULT_BID_PER_LAYER_TOKEN) that the sample used to offer and lose with, round after round.
    out = run_demo(tmp_path, ASK_PER_COMPUTE_SECOND="400000")
    quote = re.search(
        r"Quote: the cheapest pipeline free now asks ([\d,]+) base units for (\d+) tokens; the bid offers ([\d,]+)", out
    )
    assert quote is not None, out
    price, tokens, offered = number(quote[1]), int(quote[2]), number(quote[3])
    assert price > 50 * 30 * tokens and offered > price  # above what the constant default would have offered
    settled = SETTLED.search(out)
    assert settled is not None and number(settled[1]) == offered, out
    assert "assistant> " in out and ANCHORED.search(out) is not None
