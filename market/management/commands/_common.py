"""Pieces shared by the model commands: progress bars, the shard table, streamed generation."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from django.core.management.base import CommandError
from tqdm import tqdm

from config.errors import MarketError
from inference.generate import Generation, Pipeline, SamplingParams, generate
from inference.tokenizer import ChatTokenizer
from market.models import Shard
from market.services import ImportReport, model_import

SAMPLE_CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def import_with_progress(*, source: str, plan: str, quant: str, name: str | None = None) -> ImportReport:
    """model_import with a progress bar over the layers of the plan (on stderr)."""
    bar = tqdm(desc=f"importing {source} ({quant})", unit="layer", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        return model_import(source=source, plan=plan, quant=quant, name=name, progress=progress)
    except MarketError as error:
        raise CommandError(f"{error.code}: {error.message}") from error
    finally:
        bar.close()


def shard_table(shards: Sequence[Shard]) -> str:
    lines = [f"{'shard':<28} {'layers':>7} {'embed':>5} {'head':>4} {'MB':>7}  sha256"]
    for s in shards:
        lines.append(
            f"{s.shard_id:<28} {f'{s.first_layer}-{s.end_layer}':>7} {'yes' if s.has_embedding else '':>5} "
            f"{'yes' if s.has_head else '':>4} {s.size_bytes / 1e6:>7.1f}  {s.sha256[:16]}…"
        )
    return "\n".join(lines)


def parse_messages(*, prompt: str | None, chat: str | None, system: str | None) -> list[dict[str, Any]]:
    if chat:
        try:
            messages = json.loads(chat)
        except json.JSONDecodeError as error:
            raise CommandError(f"--chat is not valid JSON: {error}") from error
        if not isinstance(messages, list):
            raise CommandError('--chat must be a JSON list such as [{"role": "user", "content": "Hi"}]')
        return messages
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}] if prompt else messages + list(SAMPLE_CHAT)


def stream_generation(
    pipeline: Pipeline,
    tokenizer: ChatTokenizer,
    messages: list[dict[str, Any]],
    *,
    max_new_tokens: int,
    sampling: SamplingParams,
    write: Callable[[str], None],
) -> tuple[Generation, str]:
    """Generate an answer to a chat, passing the text to `write` as it arrives (whole characters only)."""
    try:
        prompt_ids = tokenizer.encode_chat(messages)
    except ValueError as error:
        raise CommandError(str(error)) from error
    tokens: list[int] = []
    shown = ""

    def on_token(token: int) -> None:
        nonlocal shown
        tokens.append(token)
        text = tokenizer.decode(tokens)
        if not text.endswith("\ufffd"):  # a multi-byte character still incomplete: wait for its next token
            write(text[len(shown) :])
            shown = text

    result = generate(
        pipeline,
        prompt_ids,
        max_new_tokens=max_new_tokens,
        stop_ids=tokenizer.stop_ids,
        sampling=sampling,
        on_token=on_token,
    )
    text = tokenizer.decode(result.tokens)
    write(text[len(shown) :] + "\n")
    return result, text


def timing_line(result: Generation) -> str:
    return (
        f"{result.prompt_tokens} prompt tokens, prefill {result.prefill_seconds * 1000:.0f} ms; "
        f"{len(result.tokens)} new tokens ({result.finish_reason}), "
        f"decode {result.decode_tokens_per_second:.1f} tokens/s"
    )


def sampling_from(options: dict[str, Any]) -> SamplingParams:
    try:
        return SamplingParams(temperature=options["temperature"], top_p=options["top_p"], seed=options["seed"])
    except ValueError as error:
        raise CommandError(str(error)) from error


def add_generation_arguments(parser: Any) -> None:
    parser.add_argument("--prompt", help="a user message (the chat template adds the default system prompt)")
    parser.add_argument("--system", help="a system prompt to use instead of the default one")
    parser.add_argument("--chat", help='chat messages as JSON: [{"role": "user", "content": "..."}]')
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
