"""Errors raised by the inference layer, each with a stable machine code."""

from __future__ import annotations


class InferenceError(Exception):
    """Base class: `code` is stable and safe to show to a user or send over the wire."""

    code = "inference_error"


class ShardIntegrityError(InferenceError):
    """A shard's bytes do not hash to the SHA-256 it was registered under."""

    code = "shard_integrity"


class BadShardPlan(InferenceError):
    """A layer plan that does not cover the model with contiguous, non-empty ranges."""

    code = "bad_shard_plan"


class UnknownSession(InferenceError):
    """A step names a session the runtime does not hold (never opened, or already freed)."""

    code = "unknown_session"


class ContextOverflow(InferenceError):
    """A step would run past the model's maximum context length."""

    code = "context_overflow"


class BadInput(InferenceError):
    """Token ids or hidden states of the wrong shape, type or range for the shard they are sent to."""

    code = "bad_tensor"
