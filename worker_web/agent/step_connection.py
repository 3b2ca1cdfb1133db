"""The provider agent's WebSocket connection: decode steps are answered in the connection's own read callback.

A whole binary message is offered to `take_now` as soon as it is read and only queued for the agent's reader when
refused, so a decode step runs and answers without waiting for the reader's turn of the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, Protocol, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # a websockets build without its C extension
    from websockets.utils import apply_mask


class StepConnection(ClientConnection):
    """The provider's connection to the server: a whole binary message is offered to `take_now` as soon as it is
    read, in the protocol's callback, and only queued for the reader when refused. Decode steps then run and answer
    without waiting for the reader's turn of the event loop (a loop turn and the message queue per hop).

    A read that is exactly one whole binary frame, arriving between messages with nothing buffered or waiting,
    skips websockets' frame parser too, as the step's answer skips its frame writer (`send_now`): on a provider that
    wakes for every step of every token, those are much of what it does besides the step itself. Any other read
    (a split, fragmented or oversized frame, text, control frames) goes through websockets, which also reports
    every protocol violation."""

    take_now: Callable[[bytes], bool] | None = None
    unparsed = 0  # messages taken from whole-frame reads, without websockets' parser

    def data_received(self, data: bytes) -> None:
        take_now = self.take_now
        if take_now is not None:
            payload = self._whole_binary_message(data)
            if payload is not None and take_now(payload):
                self.unparsed += 1
                return
        super().data_received(data)

    def _whole_binary_message(self, data: bytes) -> bytes | None:
        """The payload when `data` is one final, unmasked, uncompressed binary frame within the size limit, read
        while websockets' parser waits for a new frame with nothing buffered and no message waiting for the
        reader; None for anything else."""
        if len(data) < 3 or data[0] != 0x82 or data[1] & 0x80:  # 0x82: FIN, no RSV bits, binary; a server never masks
            return None
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
            if length < 126:  # not the shortest encoding: a violation that websockets reports
                return None
        elif length == 127:  # a 64-bit length: bigger than the messages this path is for
            return None
        protocol = self.protocol
        most, most_per_frame = protocol.max_message_size, protocol.max_fragment_size
        waiting = getattr(self.recv_messages, "frames", None)
        if (
            len(data) != start + length
            or (most is not None and length > most)
            or (most_per_frame is not None and length > most_per_frame)
            or protocol.state is not State.OPEN
            or protocol.extensions
            or protocol.current_size is not None  # inside a fragmented message
            or protocol.reader.buffer
            or not _between_frames(protocol.parser)
            or waiting is None  # where a websockets version keeps its queue elsewhere, every message takes its path
            or len(waiting)
        ):
            return None
        return data[start:]

    def process_event(self, event: Event) -> None:
        take_now = self.take_now
        # Frames received before this one and still waiting for the reader (websockets' assembler queue; where a
        # websockets version keeps it elsewhere, every message takes the reader's path).
        waiting = getattr(self.recv_messages, "frames", None)
        if (
            take_now is not None
            and isinstance(event, Frame)
            and event.opcode is Opcode.BINARY
            and event.fin
            and waiting is not None
            and not len(waiting)
            and take_now(bytes(event.data))
        ):
            return
        super().process_event(event)

    def send_now(self, data: bytes) -> bool:
        """Send a binary message from synchronous code (False when the connection is not open): one masked frame
        written to the transport, or websockets' writer when anything else is on its way out first."""
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            return False
        if protocol.writes or protocol.extensions or protocol.expect_continuation_frame or self.send_in_progress:
            protocol.send_binary(data)
            self.send_data()
            return True
        length = len(data)
        if length < 126:
            header = bytes((0x82, 0x80 | length))
        elif length < 1 << 16:
            header = b"\x82\xfe" + length.to_bytes(2, "big")
        else:
            header = b"\x82\xff" + length.to_bytes(8, "big")
        mask = os.urandom(4)
        self.transport.write(header + mask + apply_mask(data, mask))
        return True


def _between_frames(parser: Any) -> bool:
    """Whether websockets' parser (a chain of generators) waits where a new frame starts: in StreamReader.at_eof,
    called from Protocol.parse's loop over frames."""
    outer, inner = None, parser
    while (deeper := getattr(inner, "gi_yieldfrom", None)) is not None:
        outer, inner = inner, deeper
    return getattr(inner, "gi_code", None) is _AT_EOF and getattr(outer, "gi_code", None) is _PARSE_FRAMES


_AT_EOF, _PARSE_FRAMES = StreamReader.at_eof.__code__, Protocol.parse.__code__
