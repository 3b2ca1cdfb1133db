"""The binary tensor frame that carries token ids, hidden states and logits between server and providers.

Layout (little-endian), 36 bytes of header then the raw tensor bytes:

    offset size  field
    0      4     magic b"CMTF"
    4      1     protocol version (1)
    5      1     message type (1 = step input, 2 = step output, 3 = revealed layer states)
    6      1     dtype code (1 = float16, 2 = float32, 3 = int64)
    7      1     number of dimensions (1..4)
    8      16    session id (UUID bytes)
    24     4     step number (uint32)
    28     2     shard index in the job's pipeline (uint16)
    30     2     reserved (0)
    32     4     payload length in bytes (uint32)
    36     4*n   dimensions (uint32 each)
    ...          payload: the tensor, C order, little-endian

No base64 and no JSON arrays of numbers: a decode step of SmolLM2 is 1,152 bytes of float16 plus 48 of header.
"""

from __future__ import annotations

import enum
import math
import struct
import uuid
from typing import NamedTuple

import numpy as np

from inference.errors import InferenceError

MAGIC = b"CMTF"
VERSION = 1
MAX_FRAME_BYTES = 8 * 1024 * 1024  # 8 MiB: a 4,096-token prefill of 576 float16 values is 4.7 MB
_HEADER = struct.Struct("<4sBBBB16sIHHI")
HEADER_BYTES = _HEADER.size  # 36; the dimensions (4 bytes each) and the payload follow


class MessageType(enum.IntEnum):
    STEP_INPUT = 1
    STEP_OUTPUT = 2
    REVEAL = 3  # one layer's committed states for one step, answering a reveal (the shard field holds the layer)


DTYPES: dict[int, np.dtype[np.generic]] = {
    1: np.dtype("<f2"),
    2: np.dtype("<f4"),
    3: np.dtype("<i8"),
}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
_DIMS = {n: struct.Struct(f"<{n}I") for n in range(1, 5)}
_KINDS = {int(kind): kind for kind in MessageType}


class BadFrame(InferenceError):
    """A frame that cannot be read: truncated, oversize, unknown version, type or dtype, wrong length."""

    code = "bad_tensor_frame"


class Frame(NamedTuple):
    """One decoded frame; `tensor` is a read-only view of the payload."""

    kind: MessageType
    session: uuid.UUID
    step: int
    shard: int
    tensor: np.ndarray


def encode(kind: MessageType, session: uuid.UUID, step: int, shard: int, tensor: np.ndarray) -> bytes:
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    if dtype not in DTYPE_CODES:
        raise BadFrame(f"dtype {tensor.dtype} cannot be sent; use float16, float32 or int64")
    if not 1 <= tensor.ndim <= 4:
        raise BadFrame(f"a frame carries 1 to 4 dimensions, not {tensor.ndim}")
    payload = np.ascontiguousarray(tensor, dtype=dtype).tobytes()
    header = _HEADER.pack(
        MAGIC, VERSION, int(kind), DTYPE_CODES[dtype], tensor.ndim, session.bytes, step, shard, 0, len(payload)
    )
    frame = header + _DIMS[tensor.ndim].pack(*tensor.shape) + payload
    if len(frame) > MAX_FRAME_BYTES:
        raise BadFrame(f"frame of {len(frame)} bytes is over the limit of {MAX_FRAME_BYTES}")
    return frame


def decode(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Parse and check a frame; anything inconsistent raises BadFrame with the reason."""
    if len(data) > max_bytes:
        raise BadFrame(f"frame of {len(data)} bytes is over the limit of {max_bytes}")
    if len(data) < _HEADER.size:
        raise BadFrame(f"frame of {len(data)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, kind, dtype_code, ndim, session, step, shard, _, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadFrame("not a tensor frame (bad magic)")
    if version != VERSION:
        raise BadFrame(f"protocol version {version} is not supported (this side speaks {VERSION})")
    if kind not in _KINDS:
        raise BadFrame(f"unknown message type {kind}")
    dtype = DTYPES.get(dtype_code)
    if dtype is None:
        raise BadFrame(f"unknown dtype code {dtype_code}")
    if not 1 <= ndim <= 4:
        raise BadFrame(f"a frame carries 1 to 4 dimensions, not {ndim}")
    dims_end = _HEADER.size + 4 * ndim
    if len(data) < dims_end:
        raise BadFrame("frame truncated inside its dimensions")
    shape = _DIMS[ndim].unpack_from(data, _HEADER.size)
    expected = math.prod(shape) * dtype.itemsize
    if length != expected or len(data) - dims_end != expected:
        raise BadFrame(
            f"payload is {len(data) - dims_end} bytes (header says {length}) but shape {list(shape)} "
            f"of {dtype.name} needs {expected}"
        )
    # A frame is decoded on the relay for every hop of every token: the cheapest calls that do the job.
    tensor = np.frombuffer(data, dtype=dtype, offset=dims_end).reshape(shape)
    return Frame(_KINDS[kind], uuid.UUID(bytes=session), step, shard, tensor)


def header_around_step(
    kind: MessageType, dtype: np.dtype[np.generic], session: uuid.UUID, shard: int, shape: tuple[int, ...]
) -> tuple[bytes, bytes]:
    """The header of a frame with these fields, without its step number: the bytes before it and those after it up
    to the payload. A relay checks and builds frames of a shape it knows in advance with these, without `decode`."""
    size = math.prod(shape) * dtype.itemsize
    fields = (MAGIC, VERSION, int(kind), DTYPE_CODES[dtype], len(shape), session.bytes, 0, shard, 0, size)
    header = _HEADER.pack(*fields) + _DIMS[len(shape)].pack(*shape)
    return header[:24], header[28:]


def encode_token(kind: MessageType, session: uuid.UUID, step: int, shard: int, token: int) -> bytes:
    """`encode` of one token id, as int64 [1, 1], without numpy."""
    header = _HEADER.pack(MAGIC, VERSION, int(kind), DTYPE_CODES[DTYPES[3]], 2, session.bytes, step, shard, 0, 8)
    return header + _DIMS[2].pack(1, 1) + token.to_bytes(8, "little", signed=True)


# The high byte of a little-endian float16 is its sign bit, its 5 exponent bits (0x7C) and 2 mantissa bits: the
# value is inf or NaN exactly when those exponent bits are all set.
_FINITE_F16_HIGH_BYTES = bytes(b for b in range(256) if b & 0x7C != 0x7C)


def float16_finite(payload: bytes) -> bool:
    """Whether every little-endian float16 in `payload` is finite, without numpy (a relay checks each hidden
    state it passes on)."""
    return not payload[1::2].translate(None, _FINITE_F16_HIGH_BYTES)


def peek_tokens(data: bytes) -> int | None:
    """The second dimension of a frame (its token count: ids [1, S], hidden states [1, S, H]), read from the header
    without checking the rest; None when the frame is too short to tell. `decode` still checks everything."""
    if len(data) < _HEADER.size + 8:
        return None
    return int(struct.unpack_from("<I", data, _HEADER.size + 4)[0])


def readdress(data: bytes, *, kind: MessageType, session: uuid.UUID, shard: int) -> bytes:
    """The same tensor under another header: a hop's output becomes the next hop's input without being parsed
    again (the caller has checked the frame with `decode`)."""
    return b"".join(
        (data[:5], bytes((int(kind),)), data[6:8], session.bytes, data[24:28], struct.pack("<H", shard), data[30:])
    )
