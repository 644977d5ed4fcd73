"""Framing for the parent <-> actuator-process pipes: 4-byte big-endian length + msgpack map.

No pickle: only msgpack values cross. Frames above ``MAX_FRAME`` bytes are refused on both sides.
"""

from __future__ import annotations

import struct
from typing import IO, Any

import msgpack

MAX_FRAME = 16 * 1024 * 1024  # bytes
_HEADER = struct.Struct(">I")


class FrameError(RuntimeError):
    """A frame that cannot be read (peer closed the pipe, frame too large, not msgpack)."""


def write_frame(stream: IO[bytes], obj: Any) -> None:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any | None:
    """The next message, or None at a clean end of stream (peer closed between frames)."""
    header = _read_exact(stream, _HEADER.size)
    if not header:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    body = _read_exact(stream, size)
    if len(body) != size:
        raise FrameError("stream ended inside a frame")
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types
        raise FrameError(f"bad frame: {exc}") from exc


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    chunks = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    data = b"".join(chunks)
    if data and len(data) != n and n == _HEADER.size:
        raise FrameError("stream ended inside a frame header")
    return data
