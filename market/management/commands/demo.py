"""manage.py demo: the main job. Imports the real model and answers a sample chat through its shards."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from inference.generate import SamplingParams
from market import selectors
from market.management.commands._common import (
    SAMPLE_CHAT,
    import_with_progress,
    shard_table,
    stream_generation,
    timing_line,
)

DEMO_PLAN = "0-10,10-20,20-30"


class Command(BaseCommand):
    help = "Import SmolLM2-135M as three shards and generate an answer to a sample chat through them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quant", choices=["f32", "q4"], default="f32")
        parser.add_argument("--prompt", default=SAMPLE_CHAT[0]["content"])
        parser.add_argument("--max-new-tokens", type=int, default=64)

    def stream(self, text: str) -> None:
        self.stdout.write(text, ending="")
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        report = import_with_progress(source="smollm2-135m", plan=DEMO_PLAN, quant=options["quant"])
        shards = selectors.shard_chain(model=report.model, plan=DEMO_PLAN)
        self.stdout.write(f"\nShard plan of {report.model}:\n{shard_table(shards)}\n")
        chain = selectors.local_chain(shards)
        tokenizer = selectors.model_tokenizer(report.model)
        messages = [{"role": "user", "content": options["prompt"]}]
        self.stdout.write(f"user> {options['prompt']}\nassistant> ", ending="")
        result, _ = stream_generation(
            chain,
            tokenizer,
            messages,
            max_new_tokens=options["max_new_tokens"],
            sampling=SamplingParams(),
            write=self.stream,
        )
        self.stdout.write(timing_line(result))
