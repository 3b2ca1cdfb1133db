"""The relay's reading of a decode step's output straight from its bytes (`Route.plain_output`) against the full
reading (`wire.decode` and `Route.check_output`): it takes every usual frame, and never a frame the full reading
refuses or reads differently, whatever byte of it is wrong."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from inference import wire
from transport import protocol as p
from worker_web.consumers import Route

HIDDEN, VOCAB = 8, 50


def route(*, head: bool, argmax: bool = False) -> Route:
    made = Route(
        session=uuid.uuid4(),
        reply_to="runner",
        hop=2 if head else 1,
        has_head=head,
        hidden=HIDDEN,
        vocab=VOCAB,
        head_output=p.HEAD_ARGMAX if argmax else p.HEAD_LOGITS,
    )
    made.pending = {7: (1, True), 8: (3, True)}  # step 7 is a decode step, step 8 a three-token prefill
    return made


def full_reading(made: Route, data: bytes) -> tuple[int, int | None] | None:
    """What the relay's general path makes of a frame: (step, token) when it would pass it on, else None."""
    try:
        frame = wire.decode(data)
        if frame.kind != wire.MessageType.STEP_OUTPUT or frame.session != made.session:
            return None
        if frame.step not in made.pending:
            return None
        made.check_output(frame, made.pending[frame.step][0])
    except wire.BadFrame:
        return None
    return frame.step, int(frame.tensor[0, 0]) if frame.tensor.dtype == np.int64 else None


def variants(good: bytes) -> list[bytes]:
    """The frame with each byte changed in turn, cut short, and lengthened."""
    out = [good[:-1], good + b"\x00", good[:-2], good + b"\x00\x00"]
    for i in range(len(good)):
        for delta in (1, 0x40, 0x80):
            changed = bytearray(good)
            changed[i] = (changed[i] + delta) % 256
            out.append(bytes(changed))
    return out


def usual_output(made: Route, step: int) -> bytes:
    if made.has_head:
        return wire.encode(wire.MessageType.STEP_OUTPUT, made.session, step, made.hop, np.array([[42]], dtype=np.int64))
    hidden = np.linspace(-3, 3, HIDDEN, dtype=np.float16).reshape(1, 1, HIDDEN)
    return wire.encode(wire.MessageType.STEP_OUTPUT, made.session, step, made.hop, hidden)


@pytest.mark.parametrize("head", [False, True], ids=["hidden state", "greedy head's token"])
def test_the_usual_decode_output_is_read_from_its_bytes_and_nothing_the_full_reading_refuses(head: bool) -> None:
    made = route(head=head, argmax=head)
    good = usual_output(made, 7)
    assert made.plain_output(good) == full_reading(made, good) == (7, 42 if head else None)

    taken = 0
    for data in variants(good):
        plain = made.plain_output(data)
        if plain is not None:
            taken += 1
            assert plain == full_reading(made, data), data.hex()
    # Changed payload bytes that stay finite (or a token still in the vocabulary) are still usual frames.
    assert taken > 0


def test_what_the_bytes_reading_leaves_to_the_full_one() -> None:
    made = route(head=False)
    nan = np.full((1, 1, HIDDEN), np.nan, dtype=np.float16)
    inf = np.full((1, 1, HIDDEN), -np.inf, dtype=np.float16)
    as_f32 = np.zeros((1, 1, HIDDEN), dtype=np.float32)
    prefill = np.zeros((1, 3, HIDDEN), dtype=np.float16)
    left = [
        wire.encode(wire.MessageType.STEP_OUTPUT, made.session, 7, made.hop, nan),
        wire.encode(wire.MessageType.STEP_OUTPUT, made.session, 7, made.hop, inf),
        wire.encode(wire.MessageType.STEP_OUTPUT, made.session, 7, made.hop, as_f32),  # sound, but not the usual form
        wire.encode(wire.MessageType.STEP_OUTPUT, made.session, 8, made.hop, prefill),  # a prefill's output
        wire.encode(wire.MessageType.STEP_OUTPUT, made.session, 9, made.hop, prefill[:, :1]),  # not asked for
        wire.encode(wire.MessageType.STEP_OUTPUT, uuid.uuid4(), 7, made.hop, prefill[:, :1]),  # another session
        wire.encode(wire.MessageType.STEP_INPUT, made.session, 7, made.hop, prefill[:, :1]),
    ]
    assert [made.plain_output(data) for data in left] == [None] * len(left)
    assert full_reading(made, left[2]) == (7, None)

    head = route(head=True, argmax=True)
    for token in (-1, VOCAB):
        data = wire.encode(wire.MessageType.STEP_OUTPUT, head.session, 7, head.hop, np.array([[token]], dtype=np.int64))
        assert head.plain_output(data) is None and full_reading(head, data) is None
    logits = route(head=True)  # a sampled job's head returns logits: always read in full
    data = wire.encode(wire.MessageType.STEP_OUTPUT, logits.session, 7, logits.hop, np.zeros((1, VOCAB), np.float32))
    assert logits.plain_output(data) is None and full_reading(logits, data) == (7, None)


def test_float16_finiteness_from_the_bytes_agrees_with_numpy_for_every_value() -> None:
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    assert [wire.float16_finite(v.tobytes()) for v in values] == np.isfinite(values).tolist()
    assert wire.float16_finite(values[np.isfinite(values)].tobytes())
    assert not wire.float16_finite(values.tobytes())


def test_frames_built_from_header_parts_and_token_encoding_match_encode() -> None:
    session = uuid.uuid4()
    token = wire.encode(wire.MessageType.STEP_INPUT, session, 5, 0, np.array([[1234]], dtype=np.int64))
    assert wire.encode_token(wire.MessageType.STEP_INPUT, session, 5, 0, 1234) == token
    hidden = np.ones((1, 1, HIDDEN), dtype=np.float16)
    frame = wire.encode(wire.MessageType.STEP_OUTPUT, session, 5, 1, hidden)
    before, after = wire.header_around_step(wire.MessageType.STEP_OUTPUT, hidden.dtype, session, 1, hidden.shape)
    assert frame == before + (5).to_bytes(4, "little") + after + hidden.tobytes()
