"""manage.py chain_params: Staking's deployed parameters against the market's settings; --apply changes them."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ledger.chain import bridge, outbox
from ledger.chain.models import ChainOp
from ledger.chain.reconcile import staking_settings
from ledger.services import chain as chain_services


class Command(BaseCommand):
    help = (
        "Show Staking's parameters on chain (minStake, unbondingPeriod, challengerShareBps, treasury) next to the "
        "settings (CHAIN_MIN_STAKE, CHAIN_UNBONDING_SECONDS, CHAIN_CHALLENGER_SHARE_BPS, CHAIN_TREASURY); with "
        "--apply, send the operator's setter transactions through the outbox and wait until they are mined."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--apply", action="store_true", help="Change the contract to match the settings.")
        parser.add_argument("--timeout", type=float, default=60, help="Seconds to wait for the changes to be mined.")

    def handle(self, *args: Any, **options: Any) -> None:
        chain = bridge.connect()
        if chain is None:
            raise CommandError("no chain configured (CHAIN_RPC_URL is empty)")
        for name, wanted in staking_settings().items():
            deployed = chain.call(getattr(chain.staking.functions, name)())
            mark = "ok" if str(deployed).lower() == str(wanted).lower() else "differs"
            self.stdout.write(f"  {name:<20} on chain {deployed!s:<44} settings {wanted!s:<44} {mark}")
        if not options["apply"]:
            return
        ops = chain_services.staking_params_sync()
        until = time.monotonic() + options["timeout"]
        pending = [op.pk for op in ops]
        while ChainOp.objects.filter(pk__in=pending, state__in=[ChainOp.State.QUEUED, ChainOp.State.SENT]).exists():
            if time.monotonic() > until:
                raise CommandError(f"the changes are still queued after {options['timeout']:.0f} s (chain down?)")
            outbox.flush()
        failed = ChainOp.objects.filter(pk__in=pending, state=ChainOp.State.FAILED)
        if failed.exists():
            raise CommandError("; ".join(f"{op.args['function']}: {op.last_error}" for op in failed))
        chain_services.stakes_refresh_quietly()
        self.stdout.write(self.style.SUCCESS(f"{len(ops)} parameter(s) changed on chain"))
