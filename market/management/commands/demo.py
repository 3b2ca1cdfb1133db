"""manage.py demo: the main job. A whole market on this machine serving a sample job end to end.

Imports SmolLM2-135M as three shards, starts the ASGI server and three headless providers as child processes,
submits a chat job through the REST API as a buyer would, prints the tokens as they stream in over the job's
WebSocket and the pipeline of providers that served it, then keeps the market running until interrupted
(`--once` stops after the sample). `--provider-cpu-percent P` holds each provider to P % of one CPU with a cgroup of
its own: a machine several times slower, for real, whose providers benchmark slower and ask more.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from websockets.exceptions import ConnectionClosed

from ledger import selectors as ledger_selectors
from ledger import services as ledger_services
from ledger.chain import bridge
from ledger.chain import selectors as chain_selectors
from ledger.services import anchoring
from market import cpu_quota, selectors, services
from market.localstack import LocalMarket, free_port
from market.management.commands._chain import flush_until_done, stake, start_chain
from market.management.commands._common import SAMPLE_CHAT, import_with_progress, shard_table

DEMO_PLAN = "0-10,10-20,20-30"


DEMO_BUYER_FUNDS = 1_000_000  # base units the buyer holds before the sample bid (topped up when short)
DEMO_STREAM_SECONDS = 600  # a placed sample that has not finished after this is explained and the demo exits non-zero
DEMO_PLACE_SECONDS = 120  # a sample bid still in the book after this is explained and the demo exits non-zero
DEMO_STAKE = 2_000_000  # base units the demo providers' account stakes (the market's minimum is CHAIN_MIN_STAKE)
DEMO_PROVIDERS_SECONDS = 600  # providers not all benchmarked after this end the demo, with the missing ones named


def _token(username: str) -> str:
    return services.account_open(username=username)[1]


def _fund(username: str, at_least: int = DEMO_BUYER_FUNDS) -> int:
    """Top the demo buyer up to DEMO_BUYER_FUNDS (or more, for a quote above it on a slow machine), so that the demo
    runs again and again on one database."""
    user = User.objects.get(username=username)
    short = max(DEMO_BUYER_FUNDS, at_least) - ledger_selectors.balances_of(user=user).spendable
    if short > 0:
        ledger_services.mint_as_system(to_user=user, amount=short, key=f"demo:{uuid.uuid4()}", memo="demo top-up")
    return ledger_selectors.balances_of(user=user).spendable


def _port_free(port: int) -> bool:
    with socket.socket() as sock, contextlib.suppress(OSError):
        sock.bind(("127.0.0.1", port))
        return True
    return False


class Command(BaseCommand):
    help = "Run the market with three local providers and serve a sample chat job through it end to end."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quant", choices=["f32", "q4"], default="q4")
        parser.add_argument("--prompt", default=SAMPLE_CHAT[0]["content"])
        parser.add_argument("--max-new-tokens", type=int, default=64)
        parser.add_argument("--providers", type=int, default=3)
        parser.add_argument("--port", type=int, default=8000, help="Server port (another free one if taken).")
        parser.add_argument("--once", action="store_true", help="Stop after the sample job instead of serving on.")
        parser.add_argument(
            "--provider-cpu-percent",
            type=int,
            metavar="P",
            help="Hold each provider process to P %% (1-100) of one CPU with a cgroup of its own, a machine several "
            "times slower for real: its benchmark and so its ask show it (needs root and the cgroup cpu controller, "
            "v1 or v2; the groups are removed when the demo ends).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        percent = options["provider_cpu_percent"]
        if percent is not None:  # checked before anything starts
            if not 1 <= percent <= 100:
                raise CommandError("--provider-cpu-percent must be between 1 and 100 (% of one CPU)")
            if reason := cpu_quota.unavailable_reason():
                raise CommandError(f"--provider-cpu-percent: {reason}")
        report = import_with_progress(source="smollm2-135m", plan=DEMO_PLAN, quant=options["quant"])
        self.stdout.write(
            f"\nShards of {report.model}:\n{shard_table(selectors.shard_chain(model=report.model, plan=DEMO_PLAN))}\n"
        )
        work = Path(settings.VAR_DIR) / "demo"
        # A TERM (a supervisor, `timeout`) unwinds like Ctrl-C, so the chain, server and providers stop with us.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        node, chain = start_chain(work)
        with contextlib.ExitStack() as stack:
            stack.callback(node.stop)
            self.stdout.write(
                f"Chain: Anvil at {node.url}, contracts {chain.addresses.as_dict() if chain.addresses else {}}"
            )
            try:
                self._serve(work, options)
            except (TimeoutError, RuntimeError, OSError, ConnectionClosed) as exc:
                # What a market of child processes can raise (a process that exited, a wait that ran out, a server
                # that stopped answering, a cgroup that could not be made): explained, with where the logs are,
                # instead of a traceback.
                why = str(exc) or type(exc).__name__
                raise CommandError(f"{why}\n(the server's and the providers' logs: {work / 'logs'})") from None

    def _serve(self, work: Path, options: dict[str, Any]) -> None:
        buyer, provider = _token("demo-buyer"), _token("demo-provider")
        self.stdout.write(f"Buyer demo-buyer holds {_fund('demo-buyer'):,} base units.")
        wallet = stake("demo-provider", DEMO_STAKE)
        self.stdout.write(
            f"Providers' account demo-provider staked {wallet.stake_active:,} base units on chain from "
            f"{wallet.address} "
            f"(minimum {chain_selectors.min_stake():,}).\n"
        )
        port = options["port"] if _port_free(options["port"]) else free_port()
        with LocalMarket(env={"CHAIN_RPC_URL": settings.CHAIN_RPC_URL}, logs=work / "logs", port=port) as market:
            percent = options["provider_cpu_percent"]
            held = f", each held to {percent} % of one CPU by a cgroup" if percent is not None else ""
            self.stdout.write(f"Starting the server on {market.url} and {options['providers']} providers{held} …")
            market.start_server()
            for index in range(1, options["providers"] + 1):
                market.start_provider(f"demo-provider-{index}", token=provider, cpu_percent=percent)
            self._wait_providers(market, provider, options["providers"])
            self._providers(market, provider)
            self._sample(market, buyer, options)
            self._money(market, buyer, provider)
            self._anchor(market, buyer)
            if options["once"]:
                return
            self.stdout.write(
                f"\nThe market keeps serving at {market.url} (API docs: {market.url}/api/docs/; "
                f"buyer token: {buyer}). Ctrl-C stops it."
            )
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)

    def _wait_providers(self, market: LocalMarket, token: str, count: int) -> None:
        """Wait until `count` providers have benchmarked, naming each as it does (a slow machine takes a while)."""
        until, seen = time.monotonic() + DEMO_PROVIDERS_SECONDS, set[str]()
        while len(seen) < count:
            market.check_running()
            for p in market.online_providers(token):
                if p["name"] not in seen:
                    seen.add(p["name"])
                    self.stdout.write(f"  {p['name']} benchmarked ({len(seen)}/{count})")
            if time.monotonic() > until:
                raise CommandError(
                    f"only {len(seen)} of {count} providers connected and benchmarked within "
                    f"{DEMO_PROVIDERS_SECONDS} s; see their logs in {market.logs}"
                )
            time.sleep(0.5)

    def _providers(self, market: LocalMarket, token: str) -> None:
        self.stdout.write("Providers online (benchmarked on a real shard; the platform sets their asks from it):")
        for p in market.online_providers(token):
            self.stdout.write(
                f"  {p['name']:<20} {p['backend']:<5} {p['ns_per_layer_token'] / 1e6:7.3f} ms/layer-token"
                f"   ask {p['ask']} base units/layer-token"
            )

    def _anchor(self, market: LocalMarket, buyer: str) -> None:
        """Anchor the sample's settlement on chain now (the server would within CHAIN_ANCHOR_EVERY_SECONDS), fetch its
        proof as the buyer would, check it with the contract, and check the ledger against the chain."""
        anchoring.anchor_pending()
        flush_until_done()
        _, jobs = market.api("GET", "/api/jobs/", token=buyer)
        status, proof = market.api("GET", f"/api/jobs/{jobs[0]['id']}/proof/", token=buyer)
        if status != 200:
            raise CommandError(f"no settlement proof for job {jobs[0]['id']}: {proof}")
        chain = bridge.connect()
        assert chain is not None
        job_ref, escrow, paid, fee, refund, payouts = proof["values"]
        checked = chain.call(
            chain.anchor.functions.verifySettlement(
                proof["batch_id"],
                [bytes.fromhex(p[2:]) for p in proof["proof"]],
                job_ref,
                escrow,
                paid,
                fee,
                refund,
                bytes.fromhex(payouts[2:]),
            )
        )
        self.stdout.write(
            f"Anchored: settlement batch {proof['batch_id']} ({proof['count']} job(s), root {proof['root'][:18]}…) "
            f"in transaction {proof['anchor_tx'][:18]}…; the contract checks job {jobs[0]['id']}'s proof: {checked}."
        )
        self.stdout.write(market.manage("ledger_check"))

    def _wait_placed(self, market: LocalMarket, token: str, job_id: int) -> None:
        """Wait for a round to place the bid, showing why each round it lost did not place it (the job's `error`);
        one that keeps losing ends the demo with the last reason."""
        started = time.monotonic()
        shown = ""
        while time.monotonic() < started + DEMO_PLACE_SECONDS:
            _, job = market.api("GET", f"/api/jobs/{job_id}/", token=token)
            if job["state"] != "queued":
                return
            if job["error"] and job["error"] != shown:
                shown = job["error"]
                self.stdout.write(f"  [{time.monotonic() - started:3.0f} s, still in the book] {shown}")
                self.stdout.flush()
            time.sleep(0.5)
        # Withdrawn, so that its escrow goes back and it does not linger in the book of the next run.
        status, _ = market.api("POST", f"/api/jobs/{job_id}/cancel/", token=token)
        raise CommandError(
            f"\nthe sample bid was not placed within {DEMO_PLACE_SECONDS} s: {job['error'] or 'no round placed it'}"
            + ("\n(the bid is withdrawn and its escrow refunded)" if status == 200 else "")
        )

    def _money(self, market: LocalMarket, buyer: str, provider: str) -> None:
        """The job's settlement as the buyer and the provider see it through the API."""
        _, jobs = market.api("GET", "/api/jobs/", token=buyer)
        _, cost = market.api("GET", f"/api/jobs/{jobs[0]['id']}/cost/", token=buyer)
        self.stdout.write(
            f"\nSettled: the bid escrowed {cost['escrowed']:,} base units; the job cost {cost['paid']:,} "
            f"(platform fee {cost['fee']:,}) and {cost['refunded']:,} went back to the buyer."
        )
        for line in cost["lines"]:
            self.stdout.write(
                f"  hop {line['hop']}  {line['layer_tokens']:>6,} layer-tokens x {line['unit_price']} "
                f"= {line['payment']:>7,}  ({line['provider_name']} receives {line['provider_receipt']:,})"
            )
        _, account = market.api("GET", "/api/account/", token=buyer)
        _, earned = market.api("GET", "/api/provider/earnings/", token=provider)
        self.stdout.write(
            f"Buyer available now {account['available']:,}; provider earnings pending {earned['pending']:,} "
            f"(released when the challenge window closes)."
        )

    def _sample(self, market: LocalMarket, token: str, options: dict[str, Any]) -> None:
        query = urllib.parse.urlencode(
            {"model": "smollm2-135m", "quant": options["quant"], "prompt": options["prompt"],
             "max_new_tokens": options["max_new_tokens"]}
        )  # fmt: skip
        status, quote = market.api("GET", f"/api/quote/?{query}", token=token)
        if status != 200:
            raise CommandError(f"no quote for the sample job ({status}): {quote.get('message', quote)}")
        self.stdout.write(
            f"\nQuote: the cheapest pipeline free now asks {quote['price']:,} base units for {quote['tokens']} tokens; "
            f"the bid offers {quote['bid']:,} (a {quote['margin_bps'] / 100:.0f} % margin), "
            f"about {quote['ms_per_token']:.1f} ms of compute per token."
        )
        if quote["bid"] > DEMO_BUYER_FUNDS:
            self.stdout.write(f"Topping the buyer up to {_fund('demo-buyer', at_least=quote['bid']):,} base units.")
        job = market.submit(
            token,
            model="smollm2-135m",
            quant=options["quant"],
            prompt=options["prompt"],
            max_new_tokens=options["max_new_tokens"],
        )
        self.stdout.write(f"\nJob {job['id']} submitted through {market.url}/api/jobs/")
        self._wait_placed(market, token, job["id"])
        self.stdout.write(f"user> {options['prompt']}\nassistant> ", ending="")

        def show(event: dict[str, Any]) -> None:
            if event["type"] in ("token", "snapshot"):
                self.stdout.write(event["text"], ending="")
                self.stdout.flush()

        try:
            market.stream(job["id"], token, on_event=show, timeout=DEMO_STREAM_SECONDS)
        except TimeoutError:
            _, late = market.api("GET", f"/api/jobs/{job['id']}/", token=token)
            raise CommandError(
                f"\njob {job['id']} did not finish within {DEMO_STREAM_SECONDS} s of being placed: {late['state']}, "
                f"{len(late['tokens'])} tokens so far{'; ' + late['error'] if late['error'] else ''}"
            ) from None
        _, done = market.api("GET", f"/api/jobs/{job['id']}/", token=token)
        if done["state"] != "done":
            raise CommandError(f"job {done['id']} {done['state']}: {done['error_code']}: {done['error']}")
        timings = done["timings"]
        self.stdout.write(
            f"\n\n{len(done['tokens'])} tokens ({done['finish_reason']}); "
            f"prefill {timings['prefill_s'] * 1000:.0f} ms, "
            f"decode {timings['decode_tokens_per_s']:.1f} tokens/s over the network pipeline\nPipeline:"
        )
        for hop in done["pipeline"]:
            self.stdout.write(
                f"  hop {hop['hop']}  {hop['shard']:<24} on {hop['provider_name']:<18} "
                f"steps {hop['from_step']}-{hop['until_step']}  {hop['ended']}"
            )
