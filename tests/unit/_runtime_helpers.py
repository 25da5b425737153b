"""Start the runners as plain subprocesses on a tmp socket and talk to them with wire.Client."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from easyfaas.wire import Client

ROOT = Path(__file__).resolve().parents[2]
PYTHON_RUNNER = ROOT / "runtimes" / "python3" / "runner.py"
NODE_RUNNER = ROOT / "runtimes" / "nodejs" / "runner.js"
READY_TIMEOUT = 10.0


def load_module(path: Path, name: str) -> types.ModuleType:
    """A module of the runners' loaded by its path (they are not on ``sys.path``), as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look their module up here
    spec.loader.exec_module(module)
    return module


def runner_command(runtime: str, sock: str, ready_fd: int, task_dir: Path) -> list[str]:
    common = ["--socket", sock, "--ready-fd", str(ready_fd), "--task-dir", str(task_dir)]
    if runtime == "nodejs":
        return ["node", str(NODE_RUNNER), *common]
    # Debian's interpreter in isolated mode, as inside a sandbox (not the venv).
    return ["/usr/bin/python3", "-I", "-S", str(PYTHON_RUNNER), *common, "--runtime", runtime]


@dataclass
class RunnerProc:
    proc: subprocess.Popen[bytes]
    socket: str

    def call(self, op: str, payload: bytes = b"", **fields: Any) -> tuple[dict[str, Any], bytes]:
        """One request on a fresh connection; returns the response frame whatever its ``ok``."""
        return asyncio.run(self.gather([({"op": op, **fields}, payload)]))[0]

    async def gather(
        self, requests: list[tuple[dict[str, Any], bytes]]
    ) -> list[tuple[dict[str, Any], bytes]]:
        """Send several requests at once on one connection and wait for all answers."""
        client = Client(self.socket)
        try:
            calls = [client.call_raw(header, payload) for header, payload in requests]
            return list(await asyncio.wait_for(asyncio.gather(*calls), timeout=20))
        finally:
            await client.close()

    def invoke(self, event: Any = None, raw: bytes | None = None, timeout_ms: int = 5000,
               request_id: str = "req-1") -> tuple[dict[str, Any], bytes]:  # fmt: skip
        payload = raw if raw is not None else json.dumps(event).encode()
        return self.call("invoke", payload, **invoke_fields(request_id, timeout_ms))

    def load(self, handler: str, **overrides: Any) -> dict[str, Any]:
        return self.call("load", function=function_spec(handler, **overrides))[0]


def invoke_fields(request_id: str, timeout_ms: int = 5000) -> dict[str, Any]:
    return {"request_id": request_id, "deadline_ms": time.time() * 1000 + timeout_ms}


def function_spec(handler: str, **overrides: Any) -> dict[str, Any]:
    spec = {"name": "conf", "version": 7, "handler": handler, "memory": 256, "timeout": 5.0,
            "env": {"GREETING": "hej"}, "runtime": "python3"}  # fmt: skip
    spec.update(overrides)
    return spec


@contextmanager
def running(runtime: str, task_dir: Path) -> Iterator[RunnerProc]:
    """A runner serving ``task_dir``, ready; killed and cleaned up afterwards."""
    run_dir = tempfile.mkdtemp(prefix="ef", dir="/tmp")  # unix socket paths are short
    sock = os.path.join(run_dir, "runner.sock")
    ready_r, ready_w = os.pipe()
    proc = subprocess.Popen(runner_command(runtime, sock, ready_w, task_dir), pass_fds=[ready_w])
    os.close(ready_w)
    try:
        wait_ready(ready_r, proc)
        yield RunnerProc(proc, sock)
    finally:
        os.close(ready_r)
        proc.kill()
        proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def wait_ready(ready_fd: int, proc: subprocess.Popen[bytes]) -> None:
    readable, _, _ = select.select([ready_fd], [], [], READY_TIMEOUT)
    if not readable:
        raise AssertionError(f"runner did not become ready in {READY_TIMEOUT}s")
    if os.read(ready_fd, 1) != b"R":
        raise AssertionError(f"runner exited before ready (status {proc.wait(5)})")
