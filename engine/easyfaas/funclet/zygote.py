"""The zygote: a pre-imported Python that forks one child per sandbox (STDLIB ONLY).

Started once by the funclet as ``python3 -I -S zygote.py --fd N --runner PATH`` with one end of
a socketpair on fd N. It imports the Python runner up front, so a sandbox child starts with the
runner already in memory (the SOCK design: a cold start is "bind code + import handler").

Requests use the engine's framing (``u32 total | u32 header length | JSON header``) with
``json``. ``spawn`` carries the sandbox plan and, as SCM_RIGHTS, the write end of the sandbox's
ready pipe; the reply carries the host pid of the sandbox's init, sent once the init is in its
cgroup or dead (a setup failure's reason is on the ready pipe).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

if not __package__:
    # Run as a script under -I: the engine dir is not on sys.path, and nsinit sits in it.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from easyfaas.funclet import nsinit  # noqa: E402

_HEAD = struct.Struct(">II")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("funclet closed the zygote socket")
        buf += chunk
    return buf


def read_request(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    prefix, fds, _flags, _addr = socket.recv_fds(sock, _HEAD.size, 4)
    if not prefix:
        raise EOFError("funclet closed the zygote socket")
    prefix += _recv_exact(sock, _HEAD.size - len(prefix))
    total, head_len = _HEAD.unpack(prefix)
    body = _recv_exact(sock, total - 4)
    return json.loads(body[:head_len]), fds


def send_reply(sock: socket.socket, header: dict[str, Any]) -> None:
    head = json.dumps(header).encode()
    sock.sendall(_HEAD.pack(len(head) + 4, len(head)) + head)


def _reap(_signum: int, _frame: object) -> None:
    # Subreaper: sandbox inits are re-parented here when their first child exits.
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Zygote:
    def __init__(self, sock: socket.socket, runner: ModuleType):
        self.sock = sock
        self.runner = runner
        self.pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def serve_runner(self, op: dict[str, Any], ready_fd: int) -> None:
        """In the sandbox's runner process, after setup: become the runtime."""
        if op["runtime"] in ("python3", "shell"):
            self.runner.serve(op["socket"], ready_fd, op["task_dir"], op["runtime"])
            return
        os.set_inheritable(ready_fd, True)
        argv = [*op["exec"], "--ready-fd", str(ready_fd)]
        os.execv(argv[0], argv)

    def spawn(self, req: dict[str, Any], ready_fd: int, attach_fd: int) -> dict[str, Any]:
        joined_r, joined_w = os.pipe()
        try:
            pid = nsinit.fork_in_new_pid_namespace(self.pid_ns)
        except OSError:
            os.close(joined_r)
            os.close(joined_w)
            raise
        if pid == 0:
            self.sock.close()
            os.close(self.pid_ns)
            os.close(joined_r)
            nsinit.run_plan(req["plan"], ready_fd, joined_w, self.serve_runner, attach_fd)
        os.close(joined_w)
        with os.fdopen(joined_r, "rb") as f:
            f.read()  # the end of file: the child is in its cgroup, or gone
        return {"pid": pid}

    def loop(self) -> None:
        while True:
            try:
                req, fds = read_request(self.sock)
            except EOFError:
                return
            # fds: the ready pipe, and for attaching backends the attach channel.
            if req.get("op") != "spawn" or len(fds) not in (1, 2):
                for fd in fds:
                    os.close(fd)
                send_reply(self.sock, {"id": req.get("id"), "ok": False,
                                       "error": {"message": "bad zygote request"}})
                continue
            try:
                reply = {"ok": True, **self.spawn(req, fds[0], fds[1] if len(fds) == 2 else -1)}
            except OSError as e:  # no fork, or no namespace: this sandbox fails, not the zygote
                reply = {"ok": False, "error": {"message": f"cannot fork the sandbox: {e}"}}
            finally:
                for fd in fds:
                    os.close(fd)
            send_reply(self.sock, {"id": req.get("id"), **reply})


def load_runner(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("easyfaas_runner", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load runner {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--runner", required=True)
    args = parser.parse_args()
    parent = os.getppid()
    nsinit.prctl(nsinit.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit("zygote: funclet already gone")
    nsinit.prctl(nsinit.PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGCHLD, _reap)
    sock = socket.socket(fileno=args.fd)
    runner = load_runner(args.runner)
    runner.warm_up()
    # Out of the collector's reach: a full collection in a sandbox would otherwise write to
    # every object inherited from here, copying each of those pages into the sandbox.
    gc.freeze()
    Zygote(sock, runner).loop()


if __name__ == "__main__":
    main()
