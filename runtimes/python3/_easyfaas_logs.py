"""Log capture for the python3 runner: what an invocation writes goes into its own log.

Part of the runner (``runner.py``), loaded beside it; stdlib only.
"""

from __future__ import annotations

import codecs
import contextvars
import io
import os
import select
import threading
from collections import deque

LOG_CAP = 64 * 1024  # a call's log keeps its last 64 KiB


class LogBuffer:
    """One call's output, capped to its last ``LOG_CAP`` characters (thread-safe)."""

    def __init__(self) -> None:
        self._parts: deque[str] = deque()
        self._size = 0
        self._truncated = False
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self._parts.append(text)
            self._size += len(text)
            while self._size > LOG_CAP and len(self._parts) > 1:
                self._size -= len(self._parts.popleft())
                self._truncated = True

    def text(self) -> str:
        with self._lock:
            text = "".join(self._parts)
        if self._truncated or len(text) > LOG_CAP:
            return "[log truncated: only the last 64 KiB are kept]\n" + text[-LOG_CAP:]
        return text


# The log of the invocation running in this thread (or asyncio task); None outside of calls.
_current_log: contextvars.ContextVar[LogBuffer | None] = contextvars.ContextVar(
    "easyfaas_log", default=None
)


class LogRouter(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: text goes to the calling invocation's log.

    Output from outside any invocation (the runner itself, threads a handler started) goes to
    the sandbox's own output.
    """

    encoding = "utf-8"  # type: ignore[assignment]
    errors = "replace"  # type: ignore[assignment]

    def __init__(self, fd: int, fallback_fd: int):
        super().__init__()
        self._fd = fd
        self._fallback_fd = fallback_fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        log = _current_log.get()
        if log is not None:
            log.write(text)
        else:
            _write_fallback(self._fallback_fd, text.encode("utf-8", "replace"))
        return len(text)


def _write_fallback(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass  # the sandbox's own output is gone; dropping beats blocking the function


class FdCapture:
    """Routes fds 1 and 2 through a pipe so subprocess and C-level output is captured too.

    A file descriptor cannot tell which thread wrote to it, so pipe output goes to the single
    in-flight invocation, or to the sandbox's own stderr when none or several are running.
    """

    def __init__(self) -> None:
        self.fallback_fd = os.dup(2)
        self._read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        os.set_blocking(self._read_fd, False)
        self._readable = select.poll()
        self._readable.register(self._read_fd, select.POLLIN)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._inflight: list[LogBuffer] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Collect output written between calls too (calls drain the pipe themselves)."""
        threading.Thread(target=self._pump, name="fd-capture", daemon=True).start()

    def begin(self, log: LogBuffer) -> None:
        # No drain here: the previous call drained its own output when it ended, and the pump
        # thread takes what is written between calls (one syscall less per call).
        with self._lock:
            self._inflight.append(log)

    def end(self, log: LogBuffer) -> None:
        # Whatever the call's finished subprocesses wrote is in the pipe by now: collect it.
        self.drain()
        with self._lock:
            self._inflight.remove(log)

    def drain(self) -> bool:
        """Move what the pipe holds to its owner; False once nobody can write to it any more."""
        with self._lock:
            # poll(0) rather than reading until EAGAIN: nearly every call finds the pipe empty,
            # and an exception per call costs more than the syscall.
            while self._readable.poll(0):
                try:
                    chunk = os.read(self._read_fd, 65536)
                except BlockingIOError:
                    return True
                if not chunk:
                    return False  # the function closed fds 1 and 2
                if len(self._inflight) == 1:
                    self._inflight[0].write(self._decoder.decode(chunk))
                else:
                    _write_fallback(self.fallback_fd, chunk)
            return True

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        while True:
            poller.poll()
            if not self.drain():
                return
