"""manage.py audit <job> [--wait]: open an audit of a finished job now (the operator's own check, besides the random
draw), and with --wait drive it to its verdict here, printing each turn."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from verification.models import Dispute
from verification.services import disputes


class Command(BaseCommand):
    help = "Audit a finished job: the referee re-runs it and, if a hop's output is off, asks its provider to reveal."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job", type=int, help="The job's id.")
        parser.add_argument("--wait", action="store_true", help="Advance it here until the verdict.")
        parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait for the verdict.")

    def handle(self, *args: Any, **options: Any) -> None:
        dispute = disputes.audit_open(job_id=options["job"])
        if dispute is None:
            raise CommandError(f"job {options['job']} has no transcript: it never finished a step, or it expired")
        self.stdout.write(f"audit {dispute.pk} of job {dispute.job_id}: {dispute.state}")
        if not options["wait"]:
            return
        until = time.monotonic() + options["timeout"]
        while dispute.state not in Dispute.CLOSED:
            if time.monotonic() > until:
                raise CommandError(f"no verdict within {options['timeout']:.0f} s (it is {dispute.state})")
            disputes.dispute_advance(dispute_id=dispute.pk)
            dispute.refresh_from_db()
            self.stdout.write(
                f"  {dispute.state} step={dispute.step} hop={dispute.hop} "
                f"layers={dispute.layer_low}-{dispute.layer_high}"
            )
            time.sleep(0.5)
        self.stdout.write(f"verdict: {dispute.state}: {dispute.reason}")
