"""The binary tensor frame: what encode writes decodes back exactly, and every malformed frame is a BadFrame."""

from __future__ import annotations

import re
import struct
import uuid

import numpy as np
import pytest

from inference import wire
from inference.wire import BadFrame, MessageType

SESSION = uuid.UUID("12345678-1234-5678-1234-567812345678")
HEADER = struct.Struct("<4sBBBB16sIHHI")


def raw(
    *,
    magic: bytes = b"CMTF",
    version: int = 1,
    kind: int = 2,
    dtype: int = 1,
    shape: tuple[int, ...] = (1, 2, 3),
    length: int | None = None,
    payload: bytes | None = None,
) -> bytes:
    """A frame built by hand, field by field, so each field can be wrong on its own."""
    itemsize = {1: 2, 2: 4, 3: 8}.get(dtype, 2)
    body = payload if payload is not None else bytes(int(np.prod(shape)) * itemsize)
    header = HEADER.pack(
        magic, version, kind, dtype, len(shape), SESSION.bytes, 7, 1, 0, len(body) if length is None else length
    )
    return header + struct.pack(f"<{len(shape)}I", *shape) + body


SHAPES = [(5,), (1, 4), (1, 3, 8), (2, 1, 3, 4)]


@pytest.mark.parametrize("dtype", ["float16", "float32", "int64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_encode_decode_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    tensor = (rng.standard_normal(shape) * 100).astype(dtype)
    data = wire.encode(MessageType.STEP_OUTPUT, SESSION, 2**32 - 1, 2**16 - 1, tensor)
    assert len(data) == 36 + 4 * len(shape) + tensor.nbytes
    frame = wire.decode(data)
    assert frame.kind is MessageType.STEP_OUTPUT
    assert (frame.session, frame.step, frame.shard) == (SESSION, 2**32 - 1, 2**16 - 1)
    assert frame.tensor.dtype == np.dtype(dtype) and frame.tensor.shape == shape
    np.testing.assert_array_equal(frame.tensor, tensor)
    assert not frame.tensor.flags.writeable


def test_header_layout_matches_the_documented_offsets() -> None:
    tensor = np.arange(6, dtype=np.int64).reshape(1, 6)
    data = wire.encode(MessageType.STEP_INPUT, SESSION, 3, 2, tensor)
    assert data[0:4] == b"CMTF" and data[4:8] == bytes([1, 1, 3, 2])
    assert data[8:24] == SESSION.bytes
    assert struct.unpack_from("<IHHI", data, 24) == (3, 2, 0, 48)
    assert struct.unpack_from("<2I", data, 36) == (1, 6)
    assert data[44:] == tensor.tobytes()


def test_big_endian_and_strided_tensors_are_sent_little_endian_and_contiguous() -> None:
    tensor = np.arange(24, dtype=">f4").reshape(2, 3, 4)[:, :, ::2]
    frame = wire.decode(wire.encode(MessageType.STEP_INPUT, SESSION, 0, 0, tensor))
    assert frame.tensor.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(frame.tensor, tensor)


def test_a_frame_built_by_hand_decodes() -> None:
    frame = wire.decode(raw(kind=1, dtype=3, shape=(1, 2), payload=struct.pack("<2q", 5, -1)))
    assert frame.kind is MessageType.STEP_INPUT and frame.step == 7 and frame.shard == 1
    assert frame.tensor.tolist() == [[5, -1]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(raw()[:35], "shorter than the 36-byte header", id="truncated-header"),
        pytest.param(b"", "0 bytes is shorter than the 36-byte header", id="empty"),
        pytest.param(raw(shape=(1, 2, 3))[:44], "truncated inside its dimensions", id="truncated-dims"),
        pytest.param(raw(magic=b"XXXX"), "bad magic", id="bad-magic"),
        pytest.param(raw(version=2), "protocol version 2 is not supported", id="version-2"),
        pytest.param(raw(version=0), "protocol version 0 is not supported", id="version-0"),
        pytest.param(raw(kind=0), "unknown message type 0", id="type-0"),
        pytest.param(raw(kind=4), "unknown message type 4", id="type-4"),
        pytest.param(raw(dtype=0), "unknown dtype code 0", id="dtype-0"),
        pytest.param(raw(dtype=4), "unknown dtype code 4", id="dtype-4"),
        pytest.param(raw(shape=()), "1 to 4 dimensions, not 0", id="ndim-0"),
        pytest.param(raw(shape=(1, 1, 1, 1, 1)), "1 to 4 dimensions, not 5", id="ndim-5"),
        pytest.param(raw(shape=(1, 2, 3), length=10), "header says 10", id="length-field-short"),
        pytest.param(raw(shape=(1, 2, 3), length=14), "header says 14", id="length-field-long"),
        pytest.param(raw(shape=(1, 2, 3))[:-2], "payload is 10 bytes (header says 12)", id="payload-short"),
        pytest.param(raw(shape=(1, 2, 3)) + b"\0\0", "payload is 14 bytes (header says 12)", id="payload-long"),
        pytest.param(
            raw(shape=(1, 2, 3), length=10, payload=bytes(10)), "payload is 10 bytes (header says 10)", id="both-short"
        ),
    ],
)
def test_malformed_frames_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(BadFrame, match=re.escape(message)) as caught:
        wire.decode(data)
    assert caught.value.code == "bad_tensor_frame"


def test_the_payload_check_names_the_shape_and_dtype() -> None:
    with pytest.raises(BadFrame, match=r"shape \[1, 2, 3\] of float16 needs 12"):
        wire.decode(raw(shape=(1, 2, 3))[:-2])


def test_an_oversize_frame_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(BadFrame, match=f"frame of {wire.MAX_FRAME_BYTES + 1} bytes is over the limit"):
        wire.decode(b"\0" * (wire.MAX_FRAME_BYTES + 1))
    small = raw(shape=(1, 8))
    assert wire.decode(small, max_bytes=len(small)).tensor.shape == (1, 8)
    with pytest.raises(BadFrame, match=f"frame of {len(small)} bytes is over the limit of {len(small) - 1}"):
        wire.decode(small, max_bytes=len(small) - 1)


def test_a_frame_exactly_at_the_limit_is_accepted() -> None:
    elements = (wire.MAX_FRAME_BYTES - 36 - 8) // 2
    tensor = np.zeros((1, elements), dtype=np.float16)
    data = wire.encode(MessageType.STEP_INPUT, SESSION, 0, 0, tensor)
    assert len(data) == wire.MAX_FRAME_BYTES
    assert wire.decode(data).tensor.shape == (1, elements)


@pytest.mark.parametrize("dtype", ["float64", "int32", "int8", "uint8", "bool", "complex64"])
def test_encode_refuses_dtypes_the_wire_does_not_carry(dtype: str) -> None:
    with pytest.raises(BadFrame, match="cannot be sent; use float16, float32 or int64"):
        wire.encode(MessageType.STEP_INPUT, SESSION, 0, 0, np.zeros((1, 2), dtype=dtype))


@pytest.mark.parametrize("shape", [(), (1, 1, 1, 1, 1)], ids=["0d", "5d"])
def test_encode_refuses_0_or_5_dimensions(shape: tuple[int, ...]) -> None:
    with pytest.raises(BadFrame, match=f"1 to 4 dimensions, not {len(shape)}"):
        wire.encode(MessageType.STEP_INPUT, SESSION, 0, 0, np.zeros(shape, dtype=np.float16))


def test_encode_refuses_an_oversize_tensor() -> None:
    tensor = np.zeros((1, wire.MAX_FRAME_BYTES // 4), dtype=np.float32)
    with pytest.raises(BadFrame, match=f"over the limit of {wire.MAX_FRAME_BYTES}"):
        wire.encode(MessageType.STEP_OUTPUT, SESSION, 0, 0, tensor)


def test_peek_tokens_reads_the_token_count_from_the_header() -> None:
    session = uuid.uuid4()
    ids = wire.encode(MessageType.STEP_INPUT, session, 0, 0, np.zeros((1, 37), dtype=np.int64))
    hidden = wire.encode(MessageType.STEP_INPUT, session, 3, 1, np.zeros((1, 1, 8), dtype=np.float16))
    assert wire.peek_tokens(ids) == 37
    assert wire.peek_tokens(hidden) == 1
    assert wire.peek_tokens(hidden[: wire.HEADER_BYTES + 4]) is None
