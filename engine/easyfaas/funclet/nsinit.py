"""Apply a sandbox plan inside the forked child (STDLIB ONLY: runs under ``python3 -I -S``).

The funclet builds the plan (``plan.py``) and sends it to the zygote as a list of JSON ops; the
zygote forks the child straight into a new pid namespace (``fork_in_new_pid_namespace``), so the
child is the sandbox's init (PID 1), and calls ``run_plan`` in it. Ops run in order; the child
tells the zygote once it is in its cgroup. Any failure writes ``setup failed: ...`` to the ready
pipe and exits non-zero, so a sandbox whose isolation is incomplete never starts (fail closed).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import resource
import signal
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any, cast

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

CLONE = {
    "mount": 0x00020000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "net": 0x40000000,
    "pid": 0x20000000,
    "cgroup": 0x02000000,
}
MS = {
    "rdonly": 1,
    "nosuid": 2,
    "nodev": 4,
    "noexec": 8,
    "remount": 32,
    "bind": 4096,
    "rec": 16384,
    "private": 1 << 18,
    "slave": 1 << 19,
    "shared": 1 << 20,
}
MNT_DETACH = 2
# Syscalls without a libc wrapper, by architecture (x86_64, arm64: the appliance targets).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capset": 126},
    "aarch64": {"pivot_root": 41, "capset": 91},
}
SYSCALL = _SYSCALLS[os.uname().machine]
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
_CAP_VERSION_3 = 0x20080522
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src: str | None, dst: str, fstype: str | None, flags: list[str], data: str = "") -> None:
    bits = 0
    for name in flags:
        bits |= MS[name]
    enc = [None if s is None else s.encode() for s in (src, dst, fstype)]
    _check(_libc.mount(enc[0], enc[1], enc[2], bits, data.encode() or None), f"mount {dst}")


def umount(path: str, detach: bool = True) -> None:
    _check(_libc.umount2(path.encode(), MNT_DETACH if detach else 0), f"umount {path}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


def unshare(namespaces: list[str]) -> None:
    bits = 0
    for name in namespaces:
        bits |= CLONE[name]
    _check(_libc.unshare(bits), "unshare " + ",".join(namespaces))


def fork_in_new_pid_namespace(own_pid_ns: int) -> int:
    """``os.fork()`` whose child is PID 1 of a new pid namespace; this process stays in its own.

    One fork instead of two (unshare, then fork the init from a child): each fork of a Python
    process costs milliseconds of a cold start. ``own_pid_ns`` is an fd of the caller's
    ``/proc/self/ns/pid``, to point later children back at it.
    """
    unshare(["pid"])
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:  # this process, whether the fork worked or not
            _check(_libc.setns(own_pid_ns, CLONE["pid"]), "setns pid")
    return pid


def _host_pid() -> int:
    # /proc is still the host's here (before pivot_root): "self" resolves in its namespace.
    return int(os.readlink("/proc/self"))


def _pivot_root(new_root: str) -> None:
    # pivot_root(".", "."): the old root ends up stacked on the new one and is detached at
    # once, so the new root (read-only, shared by every sandbox) needs no dir to put it in.
    os.chdir(new_root)
    _check(_libc.syscall(SYSCALL["pivot_root"], b".", b"."), "pivot_root")
    umount(".")
    os.chdir("/")


def _link_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(),
                                                            flags | _IFF_UP))


def _last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


# Read once, in the zygote: every sandbox's init inherits it instead of opening /proc again.
LAST_CAP = _last_cap()


def _drop_privileges(uid: int, gid: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for cap in range(LAST_CAP + 1):
        prctl(PR_CAPBSET_DROP, cap)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # setuid away from root clears permitted/effective; clear inheritable too, explicitly.
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.syscall(SYSCALL["capset"], header, data), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise OSError("still root after setresuid")


def _join_cgroup(ctx: Context, procs_files: list[str]) -> None:
    # "0" is the writing task itself. On cgroup v1 ``tasks`` files that moves just this (single)
    # thread without the kernel's global threadgroup lock, whose RCU grace period cost ~12 ms
    # per sandbox when writing a pid to ``cgroup.procs`` (docs/performance.md).
    for path in procs_files:
        with open(path, "w") as f:
            f.write("0")
    ctx.joined()


def _await_attach(ctx: Context, scope: str) -> None:
    """Tell the funclet our pid, wait for its go-ahead, then see for ourselves (fail closed)."""
    if ctx.attach_fd < 0:
        raise OSError("no attach channel to the funclet")
    os.write(ctx.attach_fd, f"{_host_pid()}\n".encode())
    answer = os.read(ctx.attach_fd, 1)
    os.close(ctx.attach_fd)
    ctx.attach_fd = -1
    if answer != b"G":
        raise OSError("the funclet did not attach the sandbox to its scope")
    with open("/proc/self/cgroup") as f:
        if not any(line.startswith("0::") and line.rstrip("\n").endswith(scope) for line in f):
            raise OSError(f"not in scope {scope} after attach")
    ctx.joined()


def _write_file(path: str, content: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(content)


def _make_node(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))


def _close_fds(keep: list[int]) -> None:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


class Context:
    """What the ops share while a plan runs: the pipes to the zygote/funclet."""

    def __init__(self, ready_fd: int, joined_fd: int,
                 serve: Callable[[dict[str, Any], int], None], attach_fd: int = -1):
        self.ready_fd = ready_fd
        self.joined_fd = joined_fd
        self.serve = serve
        self.attach_fd = attach_fd

    def joined(self) -> None:
        """In the cgroup now: the zygote, waiting for this pipe to close, may answer the funclet
        (whose teardown, by cgroup, can no longer miss this process)."""
        os.close(self.joined_fd)
        self.joined_fd = -1


def _start_runner(ctx: Context, op: dict[str, Any]) -> None:
    """Become the sandbox's init: fork the runner, reap every zombie, exit with the runner."""
    _close_fds([ctx.ready_fd])
    os.environ.clear()
    os.environ.update(op["env"])
    os.chdir("/tmp")
    runner = os.fork()
    if runner == 0:
        ctx.serve(op, ctx.ready_fd)
        os._exit(0)
    os.close(ctx.ready_fd)
    while True:
        pid, status = os.wait()
        if pid == runner:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _mkdir(path: str, mode: int) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)  # makedirs' mode is filtered by the umask


Op = dict[str, Any]
_OPS: dict[str, Callable[[Context, Op], None]] = {
    "join_cgroup": lambda ctx, op: _join_cgroup(ctx, op["procs"]),
    "await_attach": lambda ctx, op: _await_attach(ctx, op["scope"]),
    "unshare": lambda ctx, op: unshare(op["namespaces"]),
    "mount": lambda ctx, op: mount(op["src"], op["dst"], op["fstype"], op["flags"], op["data"]),
    "mkdir": lambda ctx, op: _mkdir(op["path"], op["mode"]),
    "symlink": lambda ctx, op: os.symlink(op["target"], op["path"]),
    "write_file": lambda ctx, op: _write_file(op["path"], op["content"], op["mode"]),
    "make_node": lambda ctx, op: _make_node(op["path"]),
    "pivot_root": lambda ctx, op: _pivot_root(op["path"]),
    "hostname": lambda ctx, op: socket.sethostname(op["name"]),
    "link_up": lambda ctx, op: _link_up(op["name"]),
    "drop_privileges": lambda ctx, op: _drop_privileges(op["uid"], op["gid"]),
    "sched_batch": lambda ctx, op: os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0)),
    "start_runner": _start_runner,
}


def describe(op: Op) -> str:
    """``op`` as one line, for plan listings and for naming the step that failed."""
    args = [f"{k}={oct(v) if k == 'mode' else repr(v)}" for k, v in op.items() if k != "op"]
    return " ".join([op["op"], *args])


def apply(ctx: Context, op: Op) -> None:
    action = _OPS.get(op["op"])
    if action is None:
        raise ValueError(f"unknown plan op {op['op']!r}")
    action(ctx, op)


# The ops that build a tree and need no sandbox: the funclet applies them on the host to make
# the root template (``plan.template``).
_TREE_OPS = frozenset({"mount", "mkdir", "symlink", "write_file", "make_node"})


def apply_here(op: Op) -> None:
    if op["op"] not in _TREE_OPS:
        raise ValueError(f"plan op {op['op']!r} runs only in a sandbox's init")
    apply(cast(Context, None), op)  # no tree op uses the context


def run_plan(plan: list[dict[str, Any]], ready_fd: int, joined_fd: int,
             serve: Callable[[dict[str, Any], int], None], attach_fd: int = -1) -> None:
    """Run in the zygote's forked child, the sandbox's init; never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # The sandbox must not inherit the funclet's umask (0027 under systemd): the parent dirs
    # makedirs creates in the sandbox root (/run, /var) would be closed to the sandbox uid.
    os.umask(0o022)
    ctx = Context(ready_fd, joined_fd, serve, attach_fd)
    op: Op = {"op": "start"}
    try:
        for op in plan:
            apply(ctx, op)
        raise RuntimeError("plan ended without start_runner")
    except BaseException as e:  # noqa: BLE001 - any failure must refuse the sandbox
        step = describe(op)  # only now: describing every op cost a spawn ~0.3 ms
        try:
            os.write(ready_fd, f"setup failed at '{step}': {e}".encode()[:4000])
        finally:
            print(f"nsinit: setup failed at '{step}': {e}", file=sys.stderr)
            os._exit(111)
