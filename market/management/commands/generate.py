"""manage.py generate: answer a prompt with an imported model, whole or through its chain of shards."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import MarketError
from inference.errors import InferenceError
from market import model_files, selectors
from market.management.commands._common import (
    add_generation_arguments,
    parse_messages,
    sampling_from,
    shard_table,
    stream_generation,
    timing_line,
)


class Command(BaseCommand):
    help = "Generate text with an imported model in this process, printing the text and tokens/s."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", default="smollm2-135m")
        parser.add_argument("--quant", choices=["f32", "q4"], default="f32")
        parser.add_argument(
            "--shards",
            nargs="?",
            const="",
            default=None,
            metavar="PLAN",
            help="run the chain of shards (optionally a plan such as 0-10,10-20,20-30) instead of the whole model",
        )
        add_generation_arguments(parser)

    def stream(self, text: str) -> None:
        self.stdout.write(text, ending="")
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        sampling = sampling_from(options)
        messages = parse_messages(prompt=options["prompt"], chat=options["chat"], system=options["system"])
        try:
            model = selectors.model_get(name=options["model"], quant=options["quant"])
            plan = "whole" if options["shards"] is None else (options["shards"] or None)
            shards = selectors.shard_chain(model=model, plan=plan)
            chain = model_files.local_chain(shards)
            tokenizer = model_files.model_tokenizer(model)
        except (MarketError, InferenceError) as error:
            raise CommandError(f"{error.code}: {error}") from error
        self.stdout.write(shard_table(shards))
        result, _ = stream_generation(
            chain, tokenizer, messages, max_new_tokens=options["max_new_tokens"], sampling=sampling, write=self.stream
        )
        self.stdout.write(timing_line(result))
