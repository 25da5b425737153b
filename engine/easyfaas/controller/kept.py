"""A runner's record of the answers it kept back: ``<runner.sock>.kept`` (docs/internals.md).

Under load the python3 runner keeps an answer back while the next call already waits, and sends
it with a later one; it appends the answer to this record first. Should the runner die before it
sends what it kept (a crash, an OOM kill, a kill while the next call holds the interpreter), the
runner connection takes those answers from here (``wire.Client.recover``): a call that ended
still answers, and the call started after it counts as started, so it is never sent elsewhere.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib

from .. import wire

# The most the runner writes to its record (runtimes/python3/runner.py, ``RECORD_MAX``).
RECORD_MAX = 1024 * 1024
_ENTRY = struct.Struct(">II")  # an entry: frame length, CRC-32 of the frame; then the frame


class KeptAnswers:
    """The read side of one runner's record, opened when its sandbox is acquired (before any
    of the function's code has run in it) and kept open: the funclet removes the file with the
    sandbox, maybe before the runner connection sees its end."""

    def __init__(self, fd: int):
        self._fd = fd

    @classmethod
    def open(cls, socket_path: str) -> KeptAnswers | None:
        """The record beside ``socket_path``; None if the runner keeps none (nodejs) or what
        is there is not a plain file."""
        try:
            fd = os.open(socket_path + ".kept",
                         os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return cls(fd)

    def read(self) -> list[tuple[wire.Header, bytes]]:
        """The answers recorded, oldest first; some may have been sent already."""
        if self._fd < 0:
            return []
        try:
            data = os.pread(self._fd, RECORD_MAX, 0)
        except OSError:
            return []
        return parse(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def parse(data: bytes) -> list[tuple[wire.Header, bytes]]:
    """The frames of a record, up to the first entry that is torn (the runner died writing
    it) or stale (left from before the record was rewound)."""
    frames: list[tuple[wire.Header, bytes]] = []
    pos = 0
    while pos + _ENTRY.size <= len(data):
        length, crc = _ENTRY.unpack_from(data, pos)
        frame = data[pos + _ENTRY.size:pos + _ENTRY.size + length]
        if len(frame) < length or zlib.crc32(frame) != crc:
            break
        buffer = wire.FrameBuffer()
        try:
            got = buffer.feed(frame)
        except wire.WireError:
            break
        if len(got) != 1 or buffer.partial:
            break
        frames += got
        pos += _ENTRY.size + length
    return frames
