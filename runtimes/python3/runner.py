"""The runner inside a sandbox for the ``python3`` and ``shell`` runtimes (stdlib only).

It serves ``runner.sock`` (see docs/internals.md): frames ``u32 total | u32 header | JSON header |
payload`` carrying ops ``ping``, ``load`` and ``invoke``. A function with ``concurrency`` 1 (the
default) gets one request at a time, answered on the connection's own thread (an answer may be
kept back while the next request waits: ``KeptRecord``); with more, requests run on a set of
reused worker threads, several in flight at once. Everything an invocation writes is captured
into that invocation's ``log``.

The funclet's zygote imports this module once and forks it per sandbox, then calls ``serve``.
Importing it loads its two parts beside it (``_easyfaas_logs``: log capture,
``_easyfaas_runtimes``: the python3 and shell runtimes) and has no other side effects;
``asyncio`` is imported only for async handlers.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import socket
import struct
import sys
import threading
import time
import types
import zlib
from collections.abc import Callable
from typing import Any


def _sibling(name: str) -> types.ModuleType:
    """A module of the runner's, by its path beside this file: ``python3 -I`` puts no script
    dir on ``sys.path``, and the zygote loads this file by path too. The names start with
    ``_easyfaas_`` so that no function's own module can be mistaken for them."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_logs = _sibling("_easyfaas_logs")
_runtimes = _sibling("_easyfaas_runtimes")
LogBuffer, LogRouter, FdCapture = _logs.LogBuffer, _logs.LogRouter, _logs.FdCapture
RunnerError, Function, Context = _runtimes.RunnerError, _runtimes.Function, _runtimes.Context
PythonRuntime, ShellRuntime = _runtimes.PythonRuntime, _runtimes.ShellRuntime
parse_event, dump_result = _runtimes.parse_event, _runtimes.dump_result
Runtime = _runtimes.Runtime

MAX_FRAME = 64 * 1024 * 1024  # same cap as engine/easyfaas/wire.py
_HEAD = struct.Struct(">II")

Header = dict[str, Any]

_HEADER_JSON = _runtimes.JsonWriter(allow_nan=True)


# ---- protocol ----------------------------------------------------------------------------------


class Runner:
    """Answers ``ping``, ``load`` and ``invoke``; one per sandbox, which loads one function."""

    def __init__(self, runtime: Runtime, capture: FdCapture | None,
                 record: KeptRecord | None = None):
        self.runtime = runtime
        self.capture = capture
        self._record = record
        self.function: Function | None = None
        self._load_lock = threading.Lock()
        self._load_tried = False
        self._calls = 0

    def handle(self, header: Header, payload: bytes) -> tuple[Header, bytes]:
        op = header.get("op")
        if op == "ping":
            return {"ok": True}, b""
        if op not in ("load", "invoke"):
            raise RunnerError("Runtime.BadRequest", f"unknown op {op!r}")
        log = LogBuffer()
        extra: Header = {}
        try:
            if op == "load":
                body = self._captured(log, lambda: self._load(header))
                # A function that takes one call at a time gets them in the order they were
                # sent (``_serve_connection``): the controller may send the next one early.
                extra = {"in_order": self.function is not None and self.function.concurrency <= 1}
            else:
                measured = self._calls % USAGE_EVERY == 0
                self._calls += 1  # unlocked: a lost count only moves which call is measured
                # Demand first: the first reading opens /proc, which is no part of the call.
                demand = _cpu_demand_ns() if measured else None
                started = time.perf_counter()
                body = self._captured(log, lambda: self._invoke(header, payload, log))
                if demand is not None and (demand_end := _cpu_demand_ns()) is not None:
                    extra = {"run_s": time.perf_counter() - started,
                             "cpu_demand_s": (demand_end - demand) / 1e9}
        except RunnerError as e:
            return {"ok": False, "error": e.to_wire(), "log": log.text()}, b""
        return {"ok": True, "log": log.text(), **extra}, body

    def claim_record(self) -> KeptRecord | None:
        """The record of kept answers, to the first connection that asks (the controller's,
        with its ``load``); None to any later one."""
        with self._load_lock:
            record, self._record = self._record, None
        return record

    def rehearse(self) -> None:
        """Walk the path of a call once before the first one comes: this process shares its
        memory with the zygote, and the first writes to each shared page copy it (measured:
        ~250 such faults during a pooled cold start otherwise)."""
        function = Function({"name": "-", "version": 0, "handler": "-", "memory": 1,
                             "timeout": 1.0, "env": {}})
        context = Context("rehearsal", time.time() * 1000, function)
        log = LogBuffer()
        self._captured(log, lambda: dump_result([parse_event(b'{"a": 1}'), context.function_name]))
        head, body = self.handle({"op": "ping"}, b"")
        _runtimes.loads(_encode({**head, "id": 0, "log": log.text()}, body)[8:])

    def _captured(self, log: LogBuffer, call: Callable[[], bytes]) -> bytes:
        token = _logs._current_log.set(log)
        if self.capture is not None:
            self.capture.begin(log)
        try:
            return call()
        finally:
            if self.capture is not None:
                self.capture.end(log)
            _logs._current_log.reset(token)

    def _load(self, header: Header) -> bytes:
        function = Function(header.get("function"))
        with self._load_lock:
            # A sandbox never switches code: a half-done import would leak into the next one.
            if self._load_tried:
                raise RunnerError("Runtime.AlreadyLoaded", "this sandbox has already loaded code")
            self._load_tried = True
            self.runtime.load(function)
            self.function = function
        return b""

    def _invoke(self, header: Header, payload: bytes, log: LogBuffer) -> bytes:
        function = self.function
        if function is None:
            raise RunnerError("Runtime.NotLoaded", "no function is loaded; send 'load' first")
        request_id = header.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise RunnerError("Runtime.BadRequest", "invoke needs a 'request_id' string")
        deadline_ms = header.get("deadline_ms")
        if not isinstance(deadline_ms, (int, float)) or isinstance(deadline_ms, bool):
            deadline_ms = time.time() * 1000 + function.timeout * 1000
        context = Context(request_id, deadline_ms, function)
        return self.runtime.invoke(context, payload, log)


_schedstat = threading.local()
# Calls whose use of the CPU is measured: one in this many, the first included (measuring costs
# ~5 µs, as much as the runner's own handling of a trivial call; the controller keeps an average).
USAGE_EVERY = 8


def _cpu_demand_ns() -> int | None:
    """How long this thread has run or waited for a CPU, in ns; None where the kernel does not
    say. A call's share of this against its run time tells the controller whether the call
    computes or waits (``scheduler.instances_per_cpu``): its CPU time alone would not, since on
    a busy CPU a computing call spends much of its run time waiting to run. The wait is
    ``/proc/thread-self/schedstat``'s second field (its first, the run time, lags until the
    scheduler's next tick). Time in processes the handler starts is not counted."""
    fd = getattr(_schedstat, "fd", None)
    if fd is None:
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        _schedstat.fd = fd  # kept open, read with one pread per call
    if fd < 0:
        return None
    try:
        waited = int(os.pread(fd, 128, 0).split()[1])
    except (OSError, ValueError, IndexError):  # a handler closed the fd, or it is not ours
        _schedstat.fd = None  # open it again next time
        return None
    return time.thread_time_ns() + waited


def _encode(header: Header, payload: bytes = b"") -> bytes:
    # "replace": a log with lone surrogates must not cost the caller its answer.
    head = _HEADER_JSON.encode(header).encode("utf-8", "replace")
    return _HEAD.pack(len(head) + len(payload) + 4, len(head)) + head + payload


class FrameReader:
    """Frames from one connection. Reads whatever the socket has (up to ``CHUNK``), so a small
    frame (a call) takes one ``recv`` rather than one for its prefix and one for the rest."""

    CHUNK = 64 * 1024

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buf = bytearray()
        self._chunk = memoryview(bytearray(self.CHUNK))

    def _fill(self, size: int) -> bool:
        """Buffer at least ``size`` bytes; False on a clean end of stream with nothing buffered."""
        buf = self._buf
        while len(buf) < size:
            n = self._sock.recv_into(self._chunk)
            if n == 0:
                if not buf:
                    return False
                raise ConnectionError("connection closed mid-frame")
            buf += self._chunk[:n]
        return True

    def ready(self) -> bool:
        """Whether a whole frame is here already: reads what the socket has, without waiting."""
        buf = self._buf
        if len(buf) < 8 or len(buf) < _HEAD.unpack_from(buf)[0] + 4:
            try:
                n = self._sock.recv_into(self._chunk, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            buf += self._chunk[:n]
            if len(buf) < 8:
                return False
        return len(buf) >= _HEAD.unpack_from(buf)[0] + 4

    def read(self) -> tuple[Header, bytes] | None:
        """The next frame, or None when the peer closed between frames."""
        if not self._fill(8):
            return None
        total, head_len = _HEAD.unpack_from(self._buf)
        if total > MAX_FRAME or total < 4 or head_len > total - 4:
            raise ConnectionError(f"bad frame lengths total={total} header={head_len}")
        if not self._fill(total + 4):
            raise ConnectionError("connection closed mid-frame")
        buf = self._buf
        header = _runtimes.loads(buf[8:8 + head_len])
        payload = bytes(buf[8 + head_len:total + 4])
        del buf[:total + 4]
        if not isinstance(header, dict):
            raise ConnectionError("frame header is not an object")
        return header, payload


# ---- answers kept back -------------------------------------------------------------------------

# Only the answer of a call that ran at least this long is kept back. Shorter calls are answered
# while the controller is still in its turn, and it reads their answers in batches anyway (with
# `hello` at c=32 it sleeps 0.04 times per call); keeping theirs cost more than it saved.
KEEP_AFTER_S = 50e-6
# A kept answer is written at the latest this long after it was ready (or once the next call
# lets the interpreter switch threads: ``sys.getswitchinterval()``), should the next call run
# long. The thread that writes it wakes once per ``HOLD_S`` at most while answers are kept, so a
# shorter bound costs every call more (5 ms measured: the gain was gone).
HOLD_S = 0.05
# What the record may hold: a bigger answer, or one more than this, is sent at once.
RECORD_MAX = 1024 * 1024
_ENTRY = struct.Struct(">II")  # an entry of the record: frame length, CRC-32 of the frame


class KeptRecord:
    """``<socket>.kept``: the answers kept back, appended as ``u32 length | u32 crc32 | frame``
    before the runner goes on to its next call; the controller reads it should the runner die
    (crash, OOM kill, a timeout kill while the next call holds the interpreter) before it sent
    them, and before it times a call out. A call that ended then still answers, and the one
    started after it counts as started, never to be sent elsewhere (docs/internals.md).

    Rewound once the kept answers are sent: what lies past the newest entries is torn or was
    sent already (the controller drops answers it has; the CRC ends the rest)."""

    def __init__(self, path: str):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(path, flags, 0o640)
        os.fchmod(self._fd, 0o640)  # whatever the umask: the engine's group reads it
        self._end = 0

    def add(self, frame: bytes) -> bool:
        """Record ``frame``; False if it does not fit, or cannot be written (tmpfs full)."""
        end = self._end + _ENTRY.size + len(frame)
        if end > RECORD_MAX:
            return False
        try:
            os.pwritev(self._fd, [_ENTRY.pack(len(frame), zlib.crc32(frame)), frame], self._end)
        except OSError:
            return False
        self._end = end
        return True

    def rewind(self) -> None:
        self._end = 0


class Connection:
    """One client connection; closed once its reader and every pending answer are done.

    Closing while an answer is still being written could hand the fd number to a new connection.

    On the connection whose ``load`` asked for it (``keep_answers``: the controller's), answers
    of calls taken one at a time may be kept back while the next call is already waiting
    (``keep``) and written together with a later one (``send``): under load, the controller then
    reads several answers per wake-up instead of being woken by each, and does not preempt the
    runner's next call to read one (docs/performance.md, twelfth round). A thread of the
    connection writes what was kept once ``HOLD_S`` has passed, should the next call run long.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.record: KeptRecord | None = None  # set once its load asks to keep answers
        self._lock = threading.Lock()
        self._users = 1  # the reader
        self._kept: list[bytes] = []
        self._due = 0.0
        self._closed = False
        self._kept_changed = threading.Condition(self._lock)
        self._writer: threading.Thread | None = None
        self._writer_idle = False  # waiting for something to be kept, not for a due time

    def hold(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._closed = True
                self._kept_changed.notify()
                self.sock.close()

    def send(self, data: bytes = b"") -> None:
        """Write ``data``, after whatever answers were kept back."""
        with self._lock:
            if self._kept:
                data = b"".join([*self._kept, data])
                self._kept.clear()
            self._write(data)

    def keep(self, data: bytes) -> bool:
        """Keep an answer back until the next ``send``, or for ``HOLD_S`` at most; False if it
        cannot be recorded (then send it)."""
        assert self.record is not None
        with self._lock:
            if not self.record.add(data):
                return False
            self._kept.append(data)
            if len(self._kept) > 1:
                return True
            self._due = time.monotonic() + HOLD_S
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_overdue, daemon=True)
                self._writer.start()
            elif self._writer_idle:  # else it looks at the new due time when it wakes
                self._kept_changed.notify()
            return True

    def _write(self, data: bytes) -> None:  # with the lock held
        if not data:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the caller hung up: there is nobody left to answer
        if self.record is not None:  # what it holds has been sent
            self.record.rewind()

    def _write_overdue(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._kept:
                    self._writer_idle = True
                    self._kept_changed.wait()
                    self._writer_idle = False
                    continue
                wait = self._due - time.monotonic()
                if wait > 0:
                    self._kept_changed.wait(wait)
                    continue
                self._write(b"".join(self._kept))
                self._kept.clear()


def _reply(runner: Runner, header: Header, payload: bytes) -> bytes:
    try:
        resp, body = runner.handle(header, payload)
    except RunnerError as e:
        resp, body = {"ok": False, "error": e.to_wire()}, b""
    except Exception as e:  # noqa: BLE001 - a runner bug answers this request, not the sandbox
        err = RunnerError("Runtime.InternalError", f"{type(e).__name__}: {e}")
        resp, body = {"ok": False, "error": err.to_wire()}, b""
    resp["id"] = header.get("id")
    return _encode(resp, body)


def _answer(conn: Connection, runner: Runner, header: Header, payload: bytes) -> None:
    """Answer a call on a worker thread (a function whose calls run side by side)."""
    try:
        conn.send(_reply(runner, header, payload))
    finally:
        conn.release()


class Workers:
    """Threads kept for reuse: one accepts connections, one serves each connection, more answer
    the calls of a function that takes several at once. Starting a thread costs more than a
    small call itself, so one is started before the first connection comes."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = (
            queue.SimpleQueue())
        self._idle = 0
        self._lock = threading.Lock()

    def prestart(self) -> None:
        with self._lock:
            self._idle += 1
        threading.Thread(target=self._work, daemon=True).start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                threading.Thread(target=self._work, daemon=True).start()
        self._queue.put((fn, args))

    def _work(self) -> None:
        while True:
            fn, args = self._queue.get()
            fn(*args)
            with self._lock:
                self._idle += 1


def _serve_connection(conn: Connection, runner: Runner, workers: Workers) -> None:
    frames = FrameReader(conn.sock)
    try:
        while True:
            frame = frames.read()
            if frame is None:
                return
            function = runner.function
            if function is not None and function.concurrency > 1:
                conn.hold()
                workers.submit(_answer, conn, runner, *frame)
                continue
            # One call at a time, in the order sent; the controller may have sent the next ones
            # already. If one is here, this answer may go out with a later one.
            started = time.perf_counter()
            answer = _reply(runner, *frame)
            if (conn.record is not None and time.perf_counter() - started >= KEEP_AFTER_S
                    and frames.ready() and conn.keep(answer)):
                continue
            conn.send(answer)
            header = frame[0]
            if header.get("op") == "load" and header.get("keep_answers") is True:
                conn.record = runner.claim_record()
    except (OSError, ValueError):
        return  # not our protocol, or the peer vanished: drop this connection only
    finally:
        conn.send()  # whatever was kept back, before the connection may close
        conn.release()


def _lead(listener: socket.socket, runner: Runner, workers: Workers) -> None:
    """Accept one connection, pass the accepting on to a pooled thread, serve the connection.

    The thread that accepts serves, so a call never waits for a hand-over between threads
    (about half a millisecond of a cold start, measured).
    """
    sock, _ = listener.accept()
    workers.submit(_lead, listener, runner, workers)
    _serve_connection(Connection(sock), runner, workers)


def _listen(path: str) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o660)
    sock.listen(64)
    return sock


def serve(socket_path: str, ready_fd: int, task_dir: str, runtime: str) -> None:
    """Serve ``runner.sock`` forever; one byte on ``ready_fd`` (if >= 0) says it is listening."""
    rt: Runtime
    if runtime == "python3":
        rt = PythonRuntime(task_dir)
    elif runtime == "shell":
        rt = ShellRuntime(task_dir)
    else:
        raise ValueError(f"unknown runtime {runtime!r} (expected python3 or shell)")
    listener = _listen(socket_path)
    capture = None
    if runtime == "python3":
        sys.dont_write_bytecode = True  # /var/task is read-only: each attempt would only fail
        capture = FdCapture()
        sys.stdout = LogRouter(1, capture.fallback_fd)
        sys.stderr = LogRouter(2, capture.fallback_fd)
    try:
        record: KeptRecord | None = KeptRecord(socket_path + ".kept")
    except OSError:
        record = None  # answers are then never kept back
    runner = Runner(rt, capture, record)
    runner.rehearse()
    if ready_fd >= 0:
        os.write(ready_fd, b"R")
        os.close(ready_fd)
    # Threads start after "ready" (connections wait in the backlog meanwhile): a sandbox started
    # for a waiting call overlaps them with the funclet's and controller's next steps.
    workers = Workers()
    workers.prestart()  # takes over accepting once this thread has its connection
    if capture is not None:
        capture.start()
    _lead(listener, runner, workers)
    threading.Event().wait()  # the runner lives as long as its sandbox


def warm_up() -> None:
    """What every sandbox would otherwise do for the first time on its first call, done once
    in the zygote before it forks: the first ``compile`` of a process builds the AST types
    (~1.5 ms), the first JSON round trip sets up the codecs."""
    compile("def handler(event, context):\n    return {'ok': event}\n", "<warm-up>", "exec")
    _runtimes.loads(_HEADER_JSON.encode({"warm": ["up", 1.5, None]}).encode())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="EasyFaaS runner for python3 and shell")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--ready-fd", type=int, default=-1, help="fd to write one byte to")
    parser.add_argument("--task-dir", required=True, help="the function's code directory")
    parser.add_argument("--runtime", choices=["python3", "shell"], default="python3")
    args = parser.parse_args(argv)
    try:
        serve(args.socket, args.ready_fd, args.task_dir, args.runtime)
    except (OSError, ValueError) as e:
        print(f"runner: cannot serve: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
