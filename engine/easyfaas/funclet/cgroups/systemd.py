"""systemd transient scopes: the backend on a machine where systemd is PID 1 (the appliance).

systemd owns the cgroup tree there, so sandboxes must not make cgroup dirs of their own: each one
is a transient scope ``<instance>-<sandbox>.scope`` in ``easyfaas-sandboxes.slice``, started over
D-Bus with ``StartTransientUnit`` and its limits (``MemoryMax``, ``MemorySwapMax=0``,
``TasksMax``, ``CPUWeight``) set in the same call. A scope needs its first process at creation, so
this backend attaches from the outside: the sandbox child reports its pid and blocks until the
funclet has started the scope around it (``attaches``). Resizing is ``SetUnitProperties``,
destroying is ``KillUnit`` + ``StopUnit`` + ``ResetFailedUnit``. Counters are read from the
scope's own cgroup files; a scope stopped by an OOM kill loses its cgroup at once but stays
loaded as failed until the reset, so its ``Result`` still tells the OOM.

dbus-fast is asyncio-only while the backend interface is synchronous (it is called from worker
threads during teardown), so the bus lives on a private event loop in its own thread and every
call waits for its result there.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from ...errors import SandboxError
from .base import MIB, Backend, Stats, kill_procs, read_int, read_keyed

SLICE = "easyfaas-sandboxes.slice"
SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
SCOPE = "org.freedesktop.systemd1.Scope"
PROPERTIES = "org.freedesktop.DBus.Properties"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
NO_SUCH_PROCESS = "org.freedesktop.systemd1.NoSuchProcess"
ESRCH = "System.Error.ESRCH"
CGROUP_ROOT = Path("/sys/fs/cgroup")
ATTACH_TIMEOUT_S = 30.0  # generous: a TCG guest is 10x slower than hardware
T = TypeVar("T")


async def _connect() -> MessageBus:
    """Made on the bus thread's loop: a MessageBus binds to the loop it is created on."""
    return await MessageBus(bus_type=BusType.SYSTEM).connect()


class ScopeBackend(Backend):
    name = "systemd"
    attaches = True

    def __init__(self, instance_id: str, pids_max: int, cpu_weight_per_128mb: int):
        super().__init__(instance_id, pids_max, cpu_weight_per_128mb)
        self._memory: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dbus", daemon=True)
        self._thread.start()
        self._bus: MessageBus | None = None

    @classmethod
    def open(cls, instance_id: str, pids_max: int, cpu_weight: int) -> ScopeBackend:
        backend = cls(instance_id, pids_max, cpu_weight)
        try:
            backend._bus = backend._run(_connect())
        except Exception as e:  # noqa: BLE001 - any failure to reach systemd refuses to start
            backend._stop_loop()
            raise SandboxError(f"cannot reach systemd on the system bus: {e}") from e
        return backend

    # -- D-Bus plumbing -----------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(ATTACH_TIMEOUT_S)

    def _call(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        assert self._bus is not None
        msg = Message(destination=SYSTEMD, path=MANAGER_PATH, interface=MANAGER,
                      member=member, signature=signature, body=body)
        reply = self._run(self._bus_call(msg))
        if reply.message_type == MessageType.ERROR:
            detail = reply.body[0] if reply.body else ""
            raise SandboxError(f"systemd {member}: {reply.error_name}: {detail}",
                               dbus_error=reply.error_name)
        return list(reply.body)

    async def _bus_call(self, msg: Message) -> Message:
        assert self._bus is not None
        reply = await self._bus.call(msg)
        if reply is None:
            raise SandboxError(f"systemd {msg.member}: no reply")
        return reply

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- naming ---------------------------------------------------------------------------

    def unit(self, group: str) -> str:
        return f"{self.instance_id}-{group}.scope"

    def cgroup_dir(self, group: str) -> Path:
        # easyfaas-sandboxes.slice nests under easyfaas.slice: systemd's slice naming.
        return CGROUP_ROOT / "easyfaas.slice" / SLICE / self.unit(group)

    # -- the interface ----------------------------------------------------------------------

    def procs_files(self, group: str) -> list[str]:
        return []  # the funclet attaches the child instead (see ``attach``)

    def scope_suffix(self, group: str) -> str:
        return "/" + self.unit(group)

    def create(self, group: str, memory_mb: int) -> None:
        """Nothing exists before the child does: remember the limits for ``attach``."""
        self._memory[group] = memory_mb

    def attach(self, group: str, pid: int) -> None:
        """Start the scope around ``pid`` with every limit, then check they hold."""
        memory_mb = self._memory[group]
        props = [
            ("Description", Variant("s", f"EasyFaaS sandbox {group}")),
            ("Slice", Variant("s", SLICE)),
            ("PIDs", Variant("au", [pid])),
            ("MemoryMax", Variant("t", memory_mb * MIB)),
            ("MemorySwapMax", Variant("t", 0)),
            ("TasksMax", Variant("t", self.pids_max)),
            ("CPUWeight", Variant("t", self.cpu_weight(memory_mb))),
            # An OOM kill stops the scope and removes its cgroup (and memory.events) before
            # the funclet looks: the failed unit stays loaded, its Result says "oom-kill".
            ("CollectMode", Variant("s", "inactive")),
        ]
        self._call("StartTransientUnit", "ssa(sv)a(sa(sv))", [self.unit(group), "fail", props, []])
        self._wait_in_scope(group, pid)
        self._check_limits(group, memory_mb)

    def _wait_in_scope(self, group: str, pid: int) -> None:
        """The start job moves the pid asynchronously: wait until it is really there."""
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        suffix = self.scope_suffix(group)
        while True:
            try:
                lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            except FileNotFoundError as e:
                raise SandboxError(f"sandbox process {pid} died before joining its scope") from e
            if any(line.startswith("0::") and line.endswith(suffix) for line in lines):
                return
            if time.monotonic() > deadline:
                raise SandboxError(f"pid {pid} did not join {self.unit(group)}")
            time.sleep(0.002)

    def _check_limits(self, group: str, memory_mb: int) -> None:
        """Fail closed: the kernel must show the limits systemd was asked for."""
        path = self.cgroup_dir(group)
        want = {"memory.max": str(memory_mb * MIB), "memory.swap.max": "0",
                "pids.max": str(self.pids_max)}
        for name, value in want.items():
            try:
                got = (path / name).read_text().strip()
            except OSError as e:
                raise SandboxError(f"{path / name}: {e.strerror}") from e
            if got != value:
                raise SandboxError(f"{self.unit(group)}: {name} is {got}, wanted {value}")

    def set_memory(self, group: str, memory_mb: int) -> None:
        self._memory[group] = memory_mb
        self._call("SetUnitProperties", "sba(sv)",
                   [self.unit(group), True, [("MemoryMax", Variant("t", memory_mb * MIB))]])
        got = (self.cgroup_dir(group) / "memory.max").read_text().strip()
        if got != str(memory_mb * MIB):
            raise SandboxError(f"{self.unit(group)}: memory.max is {got} after resize")

    def _call_unit(self, member: str, signature: str, body: list[Any]) -> None:
        """A call on a unit that may be gone, or (failed) have no processes left: both fine."""
        try:
            self._call(member, signature, body)
        except SandboxError as e:
            if e.detail.get("dbus_error") not in (NO_SUCH_UNIT, NO_SUCH_PROCESS, ESRCH):
                raise

    def kill(self, group: str) -> None:
        self._call_unit("KillUnit", "ssi", [self.unit(group), "all", int(signal.SIGKILL)])
        kill_procs(self.cgroup_dir(group) / "cgroup.procs")

    def remove(self, group: str) -> None:
        self._memory.pop(group, None)
        self._call_unit("StopUnit", "ss", [self.unit(group), "replace"])
        self._call_unit("ResetFailedUnit", "s", [self.unit(group)])  # lets systemd unload it

    def _oom_killed(self, group: str) -> bool:
        """The scope's Result, for a scope whose cgroup is already gone."""
        try:
            (path,) = self._call("GetUnit", "s", [self.unit(group)])
        except SandboxError as e:
            if e.detail.get("dbus_error") == NO_SUCH_UNIT:
                return False
            raise
        msg = Message(destination=SYSTEMD, path=path, interface=PROPERTIES, member="Get",
                      signature="ss", body=[SCOPE, "Result"])
        reply = self._run(self._bus_call(msg))
        return reply.message_type != MessageType.ERROR and reply.body[0].value == "oom-kill"

    def stats(self, group: str) -> Stats:
        path = self.cgroup_dir(group)
        try:
            events = read_keyed(path / "memory.events")
            current = read_int(path / "memory.current")
            pids = read_int(path / "pids.current")
        except FileNotFoundError:
            return Stats(1 if self._oom_killed(group) else 0, 0, None, 0)
        peak = read_int(path / "memory.peak") if (path / "memory.peak").exists() else None
        return Stats(events.get("oom_kill", 0), current, peak, pids)

    def groups(self) -> list[str]:
        prefix = self.instance_id + "-"
        (units,) = self._call("ListUnitsByPatterns", "asas", [[], [prefix + "*.scope"]])
        return [u[0][len(prefix):-len(".scope")] for u in units]

    def remove_root(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
        self._stop_loop()

