"""The python3 and shell runtimes of the python3 runner: load a function, run one invocation.

Part of the runner (``runner.py``), loaded beside it; stdlib only. ``log`` arguments are the
invocation's log buffer (``_easyfaas_logs.LogBuffer``): anything with ``write(text)``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Callable
from typing import Any, Protocol

# ---- JSON on the call path ---------------------------------------------------------------------
# The stdlib's C scanner and encoder without its per-call set-up: ``json.loads`` of bytes
# detects their encoding and runs two whitespace regexes around the scanner, and
# ``JSONEncoder.encode`` makes a new C encoder for every value. Together ~3.7 of the ~11 µs a
# trivial call costs in the runner's own loop (header and event in, result and header out).
# Whatever the shortcuts do not take goes through the stdlib, so values and errors are its own.

_SCAN = json.JSONDecoder().scan_once


def loads(data: bytes | bytearray) -> Any:
    """``json.loads(data)``; the engine sends UTF-8 with no whitespace around the value."""
    try:
        text = data.decode()
        value, end = _SCAN(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError, RecursionError):
        return json.loads(data)
    return value if end == len(text) else json.loads(data)


class JsonWriter:
    """``JSONEncoder(ensure_ascii=False, allow_nan=allow_nan).encode`` with its C encoder made
    once. That one skips the check for circular references: a value that has one recurses
    until Python's limit, and the stdlib encoder then raises its usual error."""

    def __init__(self, allow_nan: bool):
        self._stdlib = json.JSONEncoder(ensure_ascii=False, allow_nan=allow_nan)
        make = json.encoder.c_make_encoder
        try:
            self._c = make(None, self._stdlib.default, json.encoder.encode_basestring, None,
                           ": ", ", ", False, False, allow_nan) if make else None
        except TypeError:  # another Python's signature: the stdlib way
            self._c = None

    def encode(self, value: Any) -> str:
        if self._c is None:
            return self._stdlib.encode(value)
        try:
            return "".join(self._c(value, 0))
        except RecursionError:
            return self._stdlib.encode(value)


_RESULT_JSON = JsonWriter(allow_nan=False)


class Log(Protocol):
    def write(self, text: str) -> None: ...


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
    try:
        return loads(payload)
    except ValueError as e:
        if not payload.strip():
            return {}
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

    def invoke(self, context: Context, payload: bytes, log: Log) -> bytes:
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

    def invoke(self, context: Context, payload: bytes, log: Log) -> bytes:
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
