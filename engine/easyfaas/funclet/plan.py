"""A sandbox's setup as a plan: a list of small operations, built here, applied by ``nsinit``.

The plan is data, so it can be printed (``describe``), checked by unit tests without root, and
sent to the zygote as JSON. Order matters and is the security argument: join the cgroup, then
unshare, then build and enter the new root, then drop privileges, and only then start the runner.
The plan runs in the sandbox's init, which the zygote forks as PID 1 of a new pid namespace
(``nsinit.fork_in_new_pid_namespace``): the pid namespace is the one the plan does not unshare.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import SandboxError
from . import nsinit

NAMESPACES = ["mount", "pid", "ipc", "uts", "net", "cgroup"]
UNSHARED = [ns for ns in NAMESPACES if ns != "pid"]  # the pid namespace comes with the fork
SANDBOX_SOCKET = "/run/sandbox/runner.sock"
TASK_DIR = "/var/task"
RUNTIME_DIR = "/var/runtime"
RUNTIMES = ("python3", "shell", "nodejs")
# Merged-usr Debian: the classic top-level dirs are symlinks into /usr.
USR_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
DEV_NODES = ["null", "zero", "full", "random", "urandom", "tty"]
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
RO = ["bind", "remount", "rdonly", "nosuid", "nodev"]


class Op:
    """One setup step; ``to_wire`` is what ``nsinit.apply`` receives."""

    kind: ClassVar[str]

    def describe(self) -> str:
        return nsinit.describe(self.to_wire())

    def to_wire(self) -> dict[str, Any]:
        # A shallow copy of the fields (the dataclasses below have no others): the values are
        # strings, numbers and lists of strings, serialised right away. ``dataclasses.asdict``
        # deep-copies, and even ``dataclasses.fields`` took half of building a spawn's plan.
        return {"op": self.kind, **self.__dict__}


@dataclass(frozen=True)
class JoinCgroup(Op):
    kind = "join_cgroup"
    procs: list[str]


@dataclass(frozen=True)
class AwaitAttach(Op):
    """Report the pid and block until the funclet has put it in its systemd scope; then check
    ``/proc/self/cgroup`` really ends in ``scope`` (fail closed)."""

    kind = "await_attach"
    scope: str


@dataclass(frozen=True)
class Unshare(Op):
    kind = "unshare"
    namespaces: list[str]


@dataclass(frozen=True)
class Mount(Op):
    kind = "mount"
    src: str | None
    dst: str
    fstype: str | None = None
    flags: list[str] = dataclasses.field(default_factory=list)
    data: str = ""


@dataclass(frozen=True)
class MakeDir(Op):
    kind = "mkdir"
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class Symlink(Op):
    kind = "symlink"
    target: str
    path: str


@dataclass(frozen=True)
class WriteFile(Op):
    kind = "write_file"
    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class MakeNode(Op):
    """An empty file to bind a host device node onto (mknod is not needed that way)."""

    kind = "make_node"
    path: str


@dataclass(frozen=True)
class PivotRoot(Op):
    kind = "pivot_root"
    path: str


@dataclass(frozen=True)
class Hostname(Op):
    kind = "hostname"
    name: str


@dataclass(frozen=True)
class LinkUp(Op):
    kind = "link_up"
    name: str


@dataclass(frozen=True)
class DropPrivileges(Op):
    kind = "drop_privileges"
    uid: int
    gid: int


@dataclass(frozen=True)
class BatchScheduling(Op):
    """SCHED_BATCH for the sandbox's init and everything it starts (a policy of the CPU
    scheduler, not a limit: the cgroup's weight still bounds the sandbox's share)."""

    kind = "sched_batch"


@dataclass(frozen=True)
class StartRunner(Op):
    kind = "start_runner"
    runtime: str
    socket: str
    task_dir: str
    env: dict[str, str]
    exec: list[str]


@dataclass(frozen=True)
class SandboxSpec:
    """Everything the plan depends on (host paths are absolute)."""

    runtime: str
    cgroup_procs: list[str]  # cgroupfs: files the child writes itself ("0") into
    root: str  # empty host dir: the template is bound here, inside the sandbox only
    template: str  # the read-only root every sandbox shares (``template``), made by the funclet
    task: str  # host side of /var/task (a shared mount the funclet binds code onto)
    sock: str  # host side of /run/sandbox
    uid: int
    gid: int
    tmp_size_mb: int
    nodejs: str
    attach_scope: str = ""  # systemd: the scope the funclet attaches the child to
    batch_scheduling: bool = True


def _etc(root: str, uid: int, gid: int) -> list[Op]:
    etc = root + "/etc"
    return [
        MakeDir(etc),
        WriteFile(etc + "/passwd", f"root:x:0:0::/:/usr/sbin/nologin\n"
                  f"sandbox:x:{uid}:{gid}::/tmp:/usr/sbin/nologin\n"),
        WriteFile(etc + "/group", f"root:x:0:\nsandbox:x:{gid}:\n"),
        WriteFile(etc + "/hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n"),
        WriteFile(etc + "/hostname", "sandbox\n"),
    ]


def _bind_ro(src: str, dst: str) -> list[Op]:
    return [MakeDir(dst), Mount(src, dst, None, ["bind", "rec"]), Mount(None, dst, None, RO)]


def _dev(root: str) -> list[Op]:
    dev = root + "/dev"
    ops: list[Op] = [
        MakeDir(dev),
        Mount("tmpfs", dev, "tmpfs", ["nosuid", "noexec"], "size=64k,mode=755"),
    ]
    for node in DEV_NODES:
        ops += [MakeNode(f"{dev}/{node}"), Mount(f"/dev/{node}", f"{dev}/{node}", None, ["bind"])]
    ops += [Symlink(target, f"{dev}/{name}") for name, target in DEV_LINKS.items()]
    ops += [
        MakeDir(dev + "/shm", 0o1777),  # each sandbox mounts its own tmpfs here
        Mount(None, dev, None, ["bind", "remount", "rdonly", "nosuid", "noexec"]),
    ]
    return ops


def template(path: str, runtimes_dir: str, uid: int, gid: int) -> list[Op]:
    """The root every sandbox shares, made once by the funclet at ``path`` on the host and
    bound whole into each sandbox (one recursive bind instead of ~40 ops per sandbox, ~0.75 ms of
    a spawn): ``/usr`` and the runtimes read-only, generated ``/etc``, a minimal ``/dev``, and
    the mount points of what each sandbox has of its own (``_own_mounts``). Read-only
    throughout; private, so nothing mounted on the host propagates into it."""
    ops: list[Op] = [Mount("tmpfs", path, "tmpfs", ["nosuid", "nodev"], "size=1m,mode=755"),
                     Mount(None, path, None, ["private"])]
    ops += _bind_ro("/usr", path + "/usr")
    ops += [Symlink(target, f"{path}/{name}") for name, target in USR_LINKS.items()]
    ops += _etc(path, uid, gid)
    ops += _bind_ro(runtimes_dir, path + RUNTIME_DIR)
    ops += [MakeDir(path + TASK_DIR), MakeDir(path + "/tmp", 0o1777), MakeDir(path + "/proc"),
            MakeDir(path + "/run/sandbox")]
    ops += _dev(path)
    ops.append(Mount(None, path, None, RO))
    return ops


def _own_mounts(spec: SandboxSpec) -> list[Op]:
    """The template, and on it what is this sandbox's alone."""
    root = spec.root
    return [
        Mount(spec.template, root, None, ["bind", "rec"]),
        # The host task dir is a shared mount and / is now a slave: code bound on the host later
        # propagates in here. Its read-only flag comes from the read-only store view it is bound
        # from.
        Mount(spec.task, root + TASK_DIR, None, ["bind"]),
        Mount("tmpfs", root + "/tmp", "tmpfs", ["nosuid", "nodev"],
              f"size={spec.tmp_size_mb}m,mode=1777"),
        Mount("proc", root + "/proc", "proc", ["nosuid", "nodev", "noexec"]),
        Mount("tmpfs", root + "/dev/shm", "tmpfs", ["nosuid", "nodev", "noexec"],
              "size=1m,mode=1777"),
        Mount(spec.sock, root + "/run/sandbox", None, ["bind"]),
    ]


def _runner(spec: SandboxSpec) -> StartRunner:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    argv: list[str] = []
    if spec.runtime == "nodejs":
        argv = [spec.nodejs, f"{RUNTIME_DIR}/nodejs/runner.js", "--socket", SANDBOX_SOCKET,
                "--task-dir", TASK_DIR]
    return StartRunner(spec.runtime, SANDBOX_SOCKET, TASK_DIR, env, argv)


def build(spec: SandboxSpec) -> list[Op]:
    """The whole setup of one sandbox, in order."""
    if spec.runtime not in RUNTIMES:
        raise SandboxError(f"unknown runtime {spec.runtime!r} (known: {', '.join(RUNTIMES)})")
    if spec.tmp_size_mb < 1:
        raise SandboxError("sandbox /tmp needs a size of at least 1 MiB (0 would mean unlimited)")
    join: Op
    if spec.cgroup_procs:
        join = JoinCgroup(list(spec.cgroup_procs))
    elif spec.attach_scope:
        join = AwaitAttach(spec.attach_scope)
    else:
        # Fail closed: a child that joins no cgroup would run without limits.
        raise SandboxError("sandbox plan needs a cgroup: procs files to join or a scope")
    ops: list[Op] = [
        join,
        Unshare(list(UNSHARED)),
        Mount(None, "/", None, ["rec", "slave"]),
    ]
    ops += _own_mounts(spec)
    ops += [
        PivotRoot(spec.root),
        Mount(None, "/", None, RO),  # the template's flags, made sure of in this mount
        Hostname("sandbox"),
        LinkUp("lo"),
        DropPrivileges(spec.uid, spec.gid),
    ]
    if spec.batch_scheduling:
        ops.append(BatchScheduling())
    ops.append(_runner(spec))
    return ops


def describe(ops: list[Op]) -> str:
    return "\n".join(f"{i:2d}. {op.describe()}" for i, op in enumerate(ops, 1))


def runtimes_dir() -> Path:
    """The repo's ``runtimes/`` (engine/easyfaas/funclet/plan.py → repo root); the appliance's
    venv has a copy at the same place relative to the package (image/builder/customize.py)."""
    return Path(__file__).resolve().parents[3] / "runtimes"
