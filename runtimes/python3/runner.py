"""The runner inside a sandbox for the ``python3`` and ``shell`` runtimes (stdlib only).

It serves ``runner.sock`` (see docs/internals.md): frames ``u32 total | u32 header | JSON header |
payload`` carrying ops ``ping``, ``load`` and ``invoke``. A function with ``concurrency`` 1 (the
default) gets one request at a time, answered on the connection's own thread; with more, requests
run on a set of reused worker threads, several in flight at once. Everything an invocation writes
is captured into that invocation's ``log``.

The funclet's zygote imports this module once and forks it per sandbox, then calls ``serve``.
Importing therefore has no side effects; ``asyncio`` is imported only for async handlers.
"""

from __future__ import annotations

import codecs
import contextvars
import importlib
import io
import json
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import types
from collections import deque
from collections.abc import Callable
from typing import Any

MAX_FRAME = 64 * 1024 * 1024  # same cap as engine/easyfaas/wire.py
LOG_CAP = 64 * 1024  # a call's log keeps its last 64 KiB
_HEAD = struct.Struct(">II")

Header = dict[str, Any]

# Made once: ``json.dumps`` with options builds a new encoder on every call.
_RESULT_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_HEADER_JSON = json.JSONEncoder(ensure_ascii=False)


class RunnerError(Exception):
    """An error answered as ``{"errorType", "errorMessage", "stackTrace"?}``."""

    def __init__(self, error_type: str, message: str, stack: list[str] | None = None):
        super().__init__(message)
        self.error_type = error_type
        self.stack = stack

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"errorType": self.error_type, "errorMessage": str(self)}
        if self.stack is not None:
            out["stackTrace"] = self.stack
        return out


def _user_error(e: BaseException, skip_frames: int = 0) -> RunnerError:
    """The error of a user's exception, its traceback without the runner's own frames."""
    frames = traceback.extract_tb(e.__traceback__)[skip_frames:]
    return RunnerError(type(e).__name__, str(e), traceback.format_list(frames))


# ---- log capture -------------------------------------------------------------------------------


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
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._inflight: list[LogBuffer] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Collect output written between calls too (calls drain the pipe themselves)."""
        threading.Thread(target=self._pump, name="fd-capture", daemon=True).start()

    def begin(self, log: LogBuffer) -> None:
        self.drain()  # earlier output belongs to whoever ran before
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
            while True:
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

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        while True:
            poller.poll()
            if not self.drain():
                return


# ---- runtimes ----------------------------------------------------------------------------------


class Function:
    """The ``function`` of a ``load`` request, checked."""

    def __init__(self, spec: Any):
        if not isinstance(spec, dict):
            raise RunnerError("Runtime.BadRequest", "load needs a 'function' object")
        self.name = _field(spec, "name", str)
        self.version = str(_field(spec, "version", (int, str)))
        self.handler = _field(spec, "handler", str)
        self.memory = _field(spec, "memory", int)
        self.timeout = float(_field(spec, "timeout", (int, float)))
        concurrency = spec.get("concurrency", 1)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise RunnerError("Runtime.BadRequest", "function.concurrency must be an integer >= 1")
        self.concurrency = concurrency
        env = spec.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
        ):
            raise RunnerError("Runtime.BadRequest", "function.env must map names to strings")
        self.env: dict[str, str] = {
            **env,
            "EASYFAAS_FUNCTION_NAME": self.name,
            "EASYFAAS_FUNCTION_VERSION": self.version,
            "EASYFAAS_FUNCTION_MEMORY_SIZE": str(self.memory),
        }


def _field(spec: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = spec.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RunnerError("Runtime.BadRequest", f"function.{key} is missing or has the wrong type")
    return value


class Context:
    """The handler's ``context`` argument (Lambda-compatible names)."""

    def __init__(self, request_id: str, deadline_ms: float, function: Function):
        self.request_id = self.aws_request_id = request_id
        self.function_name = function.name
        self.function_version = function.version
        self.memory_limit_in_mb = function.memory
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))


def parse_event(payload: bytes) -> Any:
    if not payload.strip():
        return {}
    try:
        return json.loads(payload)
    except ValueError as e:
        raise RunnerError("Runtime.InvalidEvent", f"the event is not valid JSON: {e}") from None


def dump_result(result: Any) -> bytes:
    try:
        return _RESULT_JSON.encode(result).encode()
    except (TypeError, ValueError) as e:
        raise RunnerError(
            "Runtime.ResultSerializationError", f"the handler's result is not JSON: {e}"
        ) from None


class PythonRuntime:
    """Imports ``module.func`` from the task dir and calls it once per invocation."""

    def __init__(self, task_dir: str):
        self.task_dir = task_dir
        self.handler: Callable[..., Any] | None = None

    def load(self, function: Function) -> None:
        module_name, _, func_name = function.handler.rpartition(".")
        if not module_name or not func_name:
            raise RunnerError(
                "Runtime.MalformedHandlerName",
                f"Bad handler '{function.handler}': expected 'module.function'",
            )
        os.environ.update(function.env)
        sys.path.insert(0, self.task_dir)
        os.chdir(self.task_dir)
        module = _import(module_name)
        handler = getattr(module, func_name, None)
        if not callable(handler):
            raise RunnerError(
                "Runtime.HandlerNotFound",
                f"Handler '{func_name}' missing on module '{module_name}'",
            )
        self.handler = handler

    def invoke(self, context: Context, payload: bytes, log: LogBuffer) -> bytes:
        assert self.handler is not None
        event = parse_event(payload)
        try:
            result = self.handler(event, context)
            if isinstance(result, types.CoroutineType):
                import asyncio

                result = asyncio.run(result)
        except (Exception, SystemExit) as e:
            raise _user_error(e, skip_frames=1) from None
        return dump_result(result)


def _import(module_name: str) -> types.ModuleType:
    try:
        return importlib.import_module(module_name)
    except SyntaxError as e:
        raise RunnerError(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {e}"
        ) from None
    except ImportError as e:
        raise RunnerError(
            "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {e}"
        ) from None
    except (Exception, SystemExit) as e:
        err = _user_error(e)
        raise RunnerError(
            "Runtime.ImportModuleError",
            f"Unable to import module '{module_name}': {type(e).__name__}: {e}",
            err.stack,
        ) from None


class ShellRuntime:
    """Runs ``task_dir/bootstrap`` per invocation: event on stdin, result on stdout."""

    def __init__(self, task_dir: str):
        self.task_dir = task_dir
        self.bootstrap = os.path.join(task_dir, "bootstrap")
        self.env: dict[str, str] | None = None

    def load(self, function: Function) -> None:
        if not os.path.isfile(self.bootstrap) or not os.access(self.bootstrap, os.X_OK):
            raise RunnerError(
                "Runtime.InvalidEntrypoint",
                "the shell runtime needs an executable file 'bootstrap' in the function's code",
            )
        self.env = {**os.environ, **function.env}

    def invoke(self, context: Context, payload: bytes, log: LogBuffer) -> bytes:
        assert self.env is not None
        event = json.dumps(parse_event(payload), ensure_ascii=False).encode()
        env = {**self.env, "EASYFAAS_REQUEST_ID": context.request_id}
        # A session of its own, so a deadline kills everything the script started.
        proc = subprocess.Popen(
            [self.bootstrap], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=self.task_dir, env=env, start_new_session=True,
        )  # fmt: skip
        timeout = context.get_remaining_time_in_millis() / 1000
        try:
            out, err = proc.communicate(event, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            log.write(err.decode("utf-8", "replace"))
            raise RunnerError("Runtime.Timeout", "bootstrap was killed at the deadline") from None
        log.write(err.decode("utf-8", "replace"))
        if proc.returncode != 0:
            raise _exit_error(proc.returncode, err)
        return _shell_result(out)


def _exit_error(status: int, stderr: bytes) -> RunnerError:
    tail = stderr.decode("utf-8", "replace").splitlines()[-10:]
    what = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
    message = f"bootstrap {what}"
    if tail:
        message += ": " + tail[-1]
    return RunnerError("Runtime.ExitError", message, tail)


def _shell_result(out: bytes) -> bytes:
    try:
        json.loads(out)
        return out
    except ValueError:
        text = out.decode("utf-8", "replace").rstrip("\n")
        return json.dumps(text, ensure_ascii=False).encode()


Runtime = PythonRuntime | ShellRuntime


# ---- protocol ----------------------------------------------------------------------------------


class Runner:
    """Answers ``ping``, ``load`` and ``invoke``; one per sandbox, which loads one function."""

    def __init__(self, runtime: Runtime, capture: FdCapture | None):
        self.runtime = runtime
        self.capture = capture
        self.function: Function | None = None
        self._load_lock = threading.Lock()
        self._load_tried = False

    def handle(self, header: Header, payload: bytes) -> tuple[Header, bytes]:
        op = header.get("op")
        if op == "ping":
            return {"ok": True}, b""
        if op not in ("load", "invoke"):
            raise RunnerError("Runtime.BadRequest", f"unknown op {op!r}")
        log = LogBuffer()
        try:
            if op == "load":
                body = self._captured(log, lambda: self._load(header))
            else:
                body = self._captured(log, lambda: self._invoke(header, payload, log))
        except RunnerError as e:
            return {"ok": False, "error": e.to_wire(), "log": log.text()}, b""
        return {"ok": True, "log": log.text()}, body

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
        json.loads(_encode({**head, "id": 0, "log": log.text()}, body)[8:])

    def _captured(self, log: LogBuffer, call: Callable[[], bytes]) -> bytes:
        token = _current_log.set(log)
        if self.capture is not None:
            self.capture.begin(log)
        try:
            return call()
        finally:
            if self.capture is not None:
                self.capture.end(log)
            _current_log.reset(token)

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
        header = json.loads(buf[8:8 + head_len])
        payload = bytes(buf[8 + head_len:total + 4])
        del buf[:total + 4]
        if not isinstance(header, dict):
            raise ConnectionError("frame header is not an object")
        return header, payload


class Connection:
    """One client connection; closed once its reader and every pending answer are done.

    Closing while an answer is still being written could hand the fd number to a new connection.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._lock = threading.Lock()
        self._users = 1  # the reader

    def hold(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self.sock.close()

    def send(self, data: bytes) -> None:
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the caller hung up: there is nobody left to answer


def _answer(conn: Connection, runner: Runner, header: Header, payload: bytes) -> None:
    try:
        resp, body = runner.handle(header, payload)
    except RunnerError as e:
        resp, body = {"ok": False, "error": e.to_wire()}, b""
    except Exception as e:  # noqa: BLE001 - a runner bug answers this request, not the sandbox
        err = RunnerError("Runtime.InternalError", f"{type(e).__name__}: {e}")
        resp, body = {"ok": False, "error": err.to_wire()}, b""
    resp["id"] = header.get("id")
    try:
        conn.send(_encode(resp, body))
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
            conn.hold()
            function = runner.function
            if function is not None and function.concurrency > 1:
                workers.submit(_answer, conn, runner, *frame)
            else:
                # One call at a time: the controller sends the next only after this answer.
                _answer(conn, runner, *frame)
    except (OSError, ValueError):
        return  # not our protocol, or the peer vanished: drop this connection only
    finally:
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
    runner = Runner(rt, capture)
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
    json.loads(json.dumps({"warm": ["up", 1.5, None]}, ensure_ascii=False))


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
