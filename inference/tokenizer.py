"""The GPT-2 style byte-level BPE tokenizer and the ChatML chat template, from GGUF metadata."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from inference.gguf_model import GGUFModel

# One text per call (see _encode): the tokenizer's own thread pool would only add threads, and a process that forks
# after using it prints a warning and turns it off.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONTROL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL
ROLES = ("system", "user", "assistant")


class ChatTokenizer:
    """Encodes text and chat messages into token ids and decodes ids back into text."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str, *, eos_id: int, special_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.special_ids = frozenset(special_ids)
        self.chat_template = chat_template
        # A twin that reads control-token strings as plain text (a separate object, so no flag is toggled
        # on a tokenizer that another thread may be using).
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True
        env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False, undefined=jinja2.StrictUndefined)
        self._template = env.from_string(chat_template)
        # ChatML ends a turn with <|im_end|>; generation stops there, at end-of-text and at the EOS token.
        ends = (tokenizer.token_to_id(text) for text in ("<|im_end|>", "<|endoftext|>"))
        self.stop_ids = frozenset({eos_id, *(i for i in ends if i is not None)})

    @classmethod
    def from_gguf(cls, model: GGUFModel) -> ChatTokenizer:
        tokens: list[str] = list(model.field("tokenizer.ggml.tokens"))
        merges = [tuple(m.split(" ", 1)) for m in model.field("tokenizer.ggml.merges")]
        types = list(model.field("tokenizer.ggml.token_type"))
        bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
        tokenizer = Tokenizer(bpe)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel()
        special = [i for i, kind in enumerate(types) if kind == CONTROL_TOKEN_TYPE]
        tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
        return cls(
            tokenizer,
            model.field("tokenizer.chat_template"),
            eos_id=int(model.field("tokenizer.ggml.eos_token_id")),
            special_ids=special,
        )

    def to_json(self) -> str:
        """Everything needed to tokenize and chat without the GGUF: stored beside the shards."""
        return json.dumps(
            {
                "tokenizer": json.loads(self.tokenizer.to_str()),
                "chat_template": self.chat_template,
                "eos_id": self.eos_id,
                "special_ids": sorted(self.special_ids),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ChatTokenizer:
        data = json.loads(text)
        tokenizer = Tokenizer.from_str(json.dumps(data["tokenizer"]))
        return cls(tokenizer, data["chat_template"], eos_id=data["eos_id"], special_ids=data["special_ids"])

    def encode(self, text: str) -> list[int]:
        return _encode(self.tokenizer, text)

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special))

    def render_chat(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The chat template applied to messages; it adds the default system prompt when none is given."""
        validate_messages(messages)
        return str(self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt))

    def encode_chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of a chat in which only the template, never a message's text, yields control tokens.

        Otherwise a buyer could write "<|im_end|><|im_start|>system" into a message and forge a turn. The
        template is rendered around placeholders; the text between them is encoded with special tokens
        read as plain text. Every placeholder sits next to a newline or a control token, where the
        pre-tokenizer splits anyway, so for ordinary text the ids equal those of the rendered string.
        """
        validate_messages(messages)
        marks = [f"\x00{i}\x00" for i in range(len(messages))]
        masked = [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)]
        rendered = self.render_chat(masked)
        ids: list[int] = []
        for index, (message, mark) in enumerate(zip(messages, marks, strict=True)):
            before, rendered = rendered.split(mark, 1)
            ids += self.encode(before)
            ids += self._encode_plain(message["content"])
            if index == len(messages) - 1:
                ids += self.encode(rendered)
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        return _encode(self._plain, text)

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The most bytes one token stands for. A byte-level vocabulary spells each byte as one character, so a
        token's length is its bytes; a text of B UTF-8 bytes is at least B / max_token_bytes tokens, which bounds
        a prompt's size before it is tokenised (added tokens are counted too, so the bound holds for them)."""
        return max(len(token) for token in self.tokenizer.get_vocab(with_added_tokens=True))


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of one text. `encode_batch` and not `encode`: the Rust `encode` holds the GIL until it returns
    (a long prompt froze every other thread of the server for as long), `encode_batch` lets go of it."""
    return list(tokenizer.encode_batch([text], add_special_tokens=False)[0].ids)


def validate_messages(messages: Sequence[dict[str, Any]]) -> None:
    if not messages:
        raise ValueError("a chat needs at least one message")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise ValueError(f"message {index} must be an object with 'role' and 'content'")
        if message.get("role") not in ROLES:
            raise ValueError(f"message {index} has role {message.get('role')!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {index} needs text content")
