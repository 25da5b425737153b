"""The funclet's side of the zygote: start it, ask it to fork sandboxes, wait for readiness."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

from ..errors import SandboxError

log = logging.getLogger("easyfaas.funclet")
_HEAD = struct.Struct(">II")
ZYGOTE = Path(__file__).with_name("zygote.py")


def _frame(header: dict[str, Any]) -> bytes:
    head = json.dumps(header).encode()
    return _HEAD.pack(len(head) + 4, len(head)) + head


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise SandboxError("the zygote exited")
        buf += chunk
    return buf


class Zygote:
    """One long-lived zygote process; ``spawn`` calls are serialised (each takes milliseconds)."""

    def __init__(self, python: str, runner: Path):
        self.python = python
        self.runner = runner
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._ids = 0

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            self._proc = subprocess.Popen(
                [self.python, "-I", "-S", str(ZYGOTE), "--fd", str(theirs.fileno()),
                 "--runner", str(self.runner)],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                # Nothing of the funclet's environment: each sandbox's init replaces it with
                # the runner's, and clearing a long one cost every spawn ~0.1 ms.
                env={"LANG": "C.UTF-8"},
            )
        ours.setblocking(False)
        self._sock = ours
        log.info("zygote started pid=%s runner=%s", self._proc.pid, self.runner)

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()  # EOF: the zygote returns from its loop and exits
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    async def _call(self, header: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if self._proc is None or self._proc.poll() is not None:
            self.stop()
            self.start()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        frame = _frame(header)
        # Calls are serialised and each reply is read whole, so the socket's buffer is empty
        # here and takes the request (a plan is ~6 KiB) without blocking; the fds travel with
        # its first bytes.
        sent = socket.send_fds(self._sock, [frame], fds)
        await loop.sock_sendall(self._sock, frame[sent:])
        total, head_len = _HEAD.unpack(await _recv_exact(loop, self._sock, _HEAD.size))
        reply: dict[str, Any] = json.loads(
            (await _recv_exact(loop, self._sock, total - 4))[:head_len])
        return reply

    async def spawn(self, plan: list[dict[str, Any]], attach_fd: int = -1) -> tuple[int, int]:
        """Fork a sandbox running ``plan``; returns (host pid of its init, ready pipe fd).
        ``attach_fd`` (closed here) is the child's end of the attach channel, if any."""
        ready_r, ready_w = os.pipe()
        fds = [ready_w] if attach_fd < 0 else [ready_w, attach_fd]
        try:
            async with self._lock:
                self._ids += 1
                header = {"id": self._ids, "op": "spawn", "plan": plan}
                call = asyncio.ensure_future(self._call(header, fds))
                try:
                    reply = await asyncio.shield(call)
                except asyncio.CancelledError:
                    # The fork is under way: once the zygote replies the child is in its
                    # cgroup (or dead), so the caller's teardown cannot miss it.
                    await asyncio.wait([call])
                    raise
        except (OSError, SandboxError) as e:
            os.close(ready_r)
            raise SandboxError(f"zygote: {e}") from e
        except asyncio.CancelledError:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
            if attach_fd >= 0:
                os.close(attach_fd)
        if not reply.get("ok"):
            os.close(ready_r)
            raise SandboxError(f"zygote: {reply.get('error', {}).get('message')}")
        return int(reply["pid"]), ready_r


async def wait_ready(fd: int, timeout: float) -> None:
    """Wait for the runner's ready byte; a setup error arrives on the same pipe as text."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not got.done():
            got.set_result(os.read(fd, 4096))

    loop.add_reader(fd, readable)
    try:
        data = await asyncio.wait_for(got, timeout)
    except TimeoutError as e:
        raise SandboxError(f"sandbox not ready after {timeout:.0f}s") from e
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    if len(data) == 1:
        return
    raise SandboxError(data.decode(errors="replace") or "sandbox exited before it was ready")
