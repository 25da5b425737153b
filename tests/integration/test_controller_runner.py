"""The controller against the real python3 runner (started as a plain process by a fake funclet,
no sandbox): the protocol, log capture, timeout kill and crash rebirth end to end."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from _controller_helpers import fakes

pytestmark = pytest.mark.root

RUNNER = Path(__file__).resolve().parents[2] / "runtimes" / "python3" / "runner.py"
CODE = """
import os, time

def handler(event, context):
    print("hi from", context.function_name)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("exit"):
        os._exit(3)
    return {"hello": event.get("name", "world"), "rid": context.aws_request_id,
            "version": context.function_version}
"""


class ProcessFunclet(fakes.FakeFunclet):
    """``acquire`` starts runner.py as a child process; ``destroy`` kills it."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def handle(self, header: dict[str, Any], payload: bytes,
                     writer: asyncio.StreamWriter) -> tuple[dict[str, Any], bytes]:
        if header["op"] == "acquire":
            return await self._spawn(header)
        if header["op"] == "destroy":
            proc = self.procs[header["sandbox"]]
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
            self.destroyed.append(header["sandbox"])
            return {"oom": False, "reason": f"exit status {proc.returncode}"}, b""
        return await super().handle(header, payload, writer)

    async def _spawn(self, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        sb_id = f"sb{len(self.procs) + 1}"
        sock = str(self.root / f"{sb_id}.sock")
        read_fd, write_fd = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/python3", "-I", "-S", str(RUNNER), "--socket", sock, "--ready-fd",
            str(write_fd), "--task-dir", header["code"], pass_fds=(write_fd,))
        os.close(write_fd)
        try:
            ready = await asyncio.wait_for(asyncio.to_thread(os.read, read_fd, 1), 10)
        finally:
            os.close(read_fd)
        assert ready == b"R"
        self.procs[sb_id] = proc
        self.acquired.append(header["label"])
        return {"sandbox": {"id": sb_id, "socket": sock, "pid": proc.pid,
                            "memory": header["memory"]}}, b""

    def live(self) -> list[str]:
        return [i for i, p in self.procs.items() if p.returncode is None]


@fakes.run
async def test_real_runner_end_to_end() -> None:
    code = fakes.short_dir()
    (code / "index.py").write_text(CODE)
    rec = fakes.record("f", timeout=1.0)
    rec["code"] = str(code)
    funclet: ProcessFunclet | None = None
    try:
        async with fakes.running_controller([rec], funclet_class=ProcessFunclet) as h:
            funclet = h.funclet
            await _check_calls(h)
    finally:
        for proc in funclet.procs.values() if funclet else []:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        shutil.rmtree(code)
    # The controller destroyed its sandboxes when it stopped.
    assert funclet is not None and funclet.live() == []


async def _check_calls(h: Any) -> None:
    url = "/v1/functions/f/invocations"
    status, headers, body = await h.request("POST", url, b'{"name": "edge"}',
                                            {"X-easyfaas-Request-Id": "r1", "Log-Type": "Tail"})
    assert status == 200, body
    assert json.loads(body) == {"hello": "edge", "rid": "r1", "version": "1"}
    assert b"hi from f" in base64.b64decode(headers["X-easyfaas-Log-Result"])
    status, headers, body = await h.request("POST", url, b'{"sleep": 5}',
                                            {"X-easyfaas-Request-Id": "r2"})
    assert headers["X-easyfaas-Function-Error"] == "Unhandled"
    assert json.loads(body)["errorMessage"] == "r2 Task timed out after 1.00 seconds"
    assert h.funclet.destroyed == ["sb1"]
    status, headers, body = await h.request("POST", url, b'{"exit": true}')
    assert json.loads(body)["errorType"] == "Runtime.ExitError"
    status, _, body = await h.request("POST", url, b"")
    assert status == 200 and json.loads(body)["hello"] == "world"
    assert h.funclet.acquired == ["f@1", "f@1", "f@1"]
