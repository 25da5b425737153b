"""Sandboxes and their per-runtime pools of pre-started cold ones.

A sandbox is a cgroup, a dir ``<run_dir>/sb/<id>/`` (``root/`` mount point, ``task/`` shared
mount for the code, ``sock/`` for runner.sock) and a process tree forked by the zygote. Any
failure while creating one destroys what was made (fail closed); ``destroy`` is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import InvalidParameter, SandboxError
from . import mounts, plan
from .cgroups.base import Backend
from .spawner import Zygote, wait_ready

log = logging.getLogger("easyfaas.funclet")
COLD_MEMORY_MB = 128  # limit of a cold sandbox until acquire sets the function's memory
READY_TIMEOUT_S = 10.0
# The sandbox an acquire hands out is about to load its handler and serve its first call; a
# refill forked at once competes with it for the CPU (~1.5 ms on a pool cold start, one core).
REFILL_DELAY_S = 0.1
RUNNER_FILES = {"python3": "python3/runner.py", "shell": "python3/runner.py",
                "nodejs": "nodejs/runner.js"}


@dataclass
class Sandbox:
    id: str
    runtime: str
    memory: int
    dir: Path
    pid: int = 0
    state: str = "starting"  # starting → cold → bound → destroying
    label: str = ""
    # Set once destroying starts: concurrent destroys (a lease ending while the funclet stops)
    # wait for the one teardown instead of racing it.
    teardown: asyncio.Task[bool] | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "sock" / "runner.sock"

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "socket": str(self.socket), "pid": self.pid, "memory": self.memory}


class Pools:
    def __init__(self, cfg: Config, backend: Backend, zygote: Zygote, runtimes: Path):
        self.cfg = cfg
        self.backend = backend
        self.zygote = zygote
        self.runtimes = runtimes
        self.sb_dir = cfg.run_dir / "sb"
        self.store_view = cfg.run_dir / "store-ro"
        self.template = cfg.run_dir / "root-template"
        self.sandboxes: dict[str, Sandbox] = {}
        self.cold: dict[str, deque[Sandbox]] = {rt: deque() for rt in plan.RUNTIMES}
        self._refills: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the read-only store view all code binds come from, and the root template every
        sandbox binds whole."""
        self.sb_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.store_dir.mkdir(parents=True, exist_ok=True)
        mounts.bind_read_only(self.cfg.store_dir, self.store_view)
        box = self.cfg.sandbox
        mounts.make_tree(self.template, plan.template(str(self.template), str(self.runtimes),
                                                      box.uid, box.gid))

    def available_runtimes(self) -> list[str]:
        return [rt for rt in plan.RUNTIMES if (self.runtimes / RUNNER_FILES[rt]).exists()]

    def fill(self) -> None:
        for runtime in self.available_runtimes():
            self._refill_soon(runtime)

    async def close(self) -> None:
        for task in self._refills.values():
            task.cancel()
        await asyncio.gather(*self._refills.values(), return_exceptions=True)
        failed = []
        for sb_id in list(self.sandboxes):
            try:
                await self.destroy(sb_id)
            except SandboxError as e:
                log.error("sb=%s cannot be destroyed: %s", sb_id, e)
                failed.append(sb_id)
        if failed:
            raise SandboxError(f"sandboxes left behind: {', '.join(failed)}")
        self._remove_shared_mounts()

    def _remove_shared_mounts(self) -> None:
        for path in (self.store_view, self.template):
            mounts.unmount_under(path)
            if path.exists():
                path.rmdir()

    # -- create ----------------------------------------------------------------------------

    def _spec(self, sb: Sandbox) -> plan.SandboxSpec:
        box = self.cfg.sandbox
        return plan.SandboxSpec(
            runtime=sb.runtime, cgroup_procs=self.backend.procs_files(sb.id),
            root=str(sb.dir / "root"), template=str(self.template), task=str(sb.dir / "task"),
            sock=str(sb.dir / "sock"), uid=box.uid, gid=box.gid,
            tmp_size_mb=box.tmp_size_mb, nodejs=box.nodejs,
            attach_scope=self.backend.scope_suffix(sb.id) if self.backend.attaches else "",
            batch_scheduling=box.batch_scheduling,
        )

    def _make_dirs(self, sb: Sandbox) -> None:
        (sb.dir / "root").mkdir(parents=True)
        mounts.make_shared_mountpoint(sb.dir / "task")
        # The runner (sandbox uid) makes runner.sock in here. The run dir's group (the engine's
        # service group on the appliance) may only pass through; the setgid bit gives the socket
        # that group, so the controller can connect to it and nobody else can.
        sock = sb.dir / "sock"
        sock.mkdir()
        sock.chmod(0o2710)
        os.chown(sock, self.cfg.sandbox.uid, self.cfg.run_dir.stat().st_gid)

    async def spawn(self, runtime: str) -> Sandbox:
        """Start one cold sandbox of ``runtime`` and wait until its runner listens."""
        sb_id = "sb-" + secrets.token_hex(6)
        sb = Sandbox(sb_id, runtime, COLD_MEMORY_MB, self.sb_dir / sb_id)
        self.sandboxes[sb_id] = sb
        try:
            self.backend.create(sb_id, sb.memory)
            self._make_dirs(sb)
            ops = [op.to_wire() for op in plan.build(self._spec(sb))]
            if self.backend.attaches:
                sb.pid, ready = await self._spawn_attached(sb, ops)
            else:
                sb.pid, ready = await self.zygote.spawn(ops)
            await wait_ready(ready, READY_TIMEOUT_S)
        except asyncio.CancelledError:
            await self.destroy(sb_id)
            raise
        except Exception as e:
            log.error("sb=%s runtime=%s failed to start: %s", sb_id, runtime, e)
            await self.destroy(sb_id)
            raise
        sb.state = "cold"
        log.info("sb=%s runtime=%s pid=%s cold", sb_id, runtime, sb.pid)
        return sb

    async def _spawn_attached(self, sb: Sandbox, ops: list[dict[str, Any]]) -> tuple[int, int]:
        """Spawn while answering the child's attach request: it sends its pid and blocks until
        the backend has put it in its scope; closing without "G" makes it refuse to go on."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        spawning = asyncio.ensure_future(self.zygote.spawn(ops, os.dup(theirs.fileno())))
        theirs.close()
        try:
            with ours:
                line = await asyncio.wait_for(loop.sock_recv(ours, 64), READY_TIMEOUT_S)
                if not line.strip().isdigit():
                    raise SandboxError("sandbox child sent no pid to attach")
                await asyncio.to_thread(self.backend.attach, sb.id, int(line))
                await loop.sock_sendall(ours, b"G")
        except BaseException:
            await asyncio.wait([spawning])  # the child fails closed and exits; reap the reply
            raise
        return await spawning

    def _refill_soon(self, runtime: str, delay: float = 0.0) -> None:
        task = self._refills.get(runtime)
        if task is None or task.done():
            self._refills[runtime] = asyncio.create_task(self._refill(runtime, delay))

    async def _refill(self, runtime: str, delay: float) -> None:
        await asyncio.sleep(delay)
        while len(self.cold[runtime]) < self.cfg.sandbox.pool_size:
            try:
                sb = await self.spawn(runtime)
            except SandboxError:
                return  # logged in spawn; the next acquire tries again (no hot retry loop)
            self.cold[runtime].append(sb)

    # -- acquire / resize ------------------------------------------------------------------

    def _snapshot(self, code: str) -> Path:
        path = Path(code).resolve()
        if path.parent != self.cfg.store_dir.resolve() or not path.is_dir():
            raise InvalidParameter(f"code {code!r} is not a snapshot dir in {self.cfg.store_dir}")
        return self.store_view / path.name

    async def acquire(self, runtime: str, memory: int, code: str, label: str) -> Sandbox:
        if runtime not in plan.RUNTIMES:
            raise InvalidParameter(f"unknown runtime {runtime!r}")
        if not isinstance(memory, int) or not 16 <= memory <= 64 * 1024:
            raise InvalidParameter(f"memory {memory!r} must be an integer 16..65536 (MiB)")
        snapshot = self._snapshot(code)
        sb = await self._take(runtime)
        self._refill_soon(runtime, REFILL_DELAY_S)
        try:
            self.resize(sb.id, memory)
            mounts.bind(snapshot, sb.dir / "task")
        except BaseException:
            await self.destroy(sb.id)
            raise
        sb.state, sb.label = "bound", label
        log.info("sb=%s fn=%s memory=%s acquired", sb.id, label, memory)
        return sb

    async def _take(self, runtime: str) -> Sandbox:
        """A live cold sandbox from the pool, or a new one."""
        pool = self.cold[runtime]
        while pool:
            sb = pool.popleft()
            if self.backend.stats(sb.id).pids > 0:
                return sb
            log.warning("sb=%s runtime=%s died while cold", sb.id, runtime)
            await self.destroy(sb.id)
        return await self.spawn(runtime)

    def get(self, sb_id: str) -> Sandbox:
        sb = self.sandboxes.get(sb_id)
        if sb is None:
            raise InvalidParameter(f"no sandbox {sb_id!r}")
        return sb

    def resize(self, sb_id: str, memory: int) -> None:
        sb = self.get(sb_id)
        self.backend.set_memory(sb.id, memory)
        sb.memory = memory

    # -- inspect / destroy -----------------------------------------------------------------

    def inspect(self, sb_id: str) -> dict[str, Any]:
        self.get(sb_id)
        st = self.backend.stats(sb_id)
        return {"alive": st.pids > 0, "oom": st.oom_kills > 0, "memory_current": st.memory_current,
                "memory_peak": st.memory_peak, "pids": st.pids}

    async def destroy(self, sb_id: str) -> dict[str, Any]:
        """Kill the whole cgroup, unmount, remove dirs. Unknown ids are already destroyed."""
        sb = self.sandboxes.get(sb_id)
        if sb is None:
            return {"oom": False, "reason": "not found (already destroyed)"}
        if sb.teardown is None:
            sb.state = "destroying"
            if sb in self.cold[sb.runtime]:
                self.cold[sb.runtime].remove(sb)
            sb.teardown = asyncio.ensure_future(
                asyncio.to_thread(self._teardown, sb.id, sb.dir))
        try:
            oom = await asyncio.shield(sb.teardown)
        except SandboxError:
            sb.teardown = None  # a failed teardown stays listed and is retried on stop
            raise
        self.sandboxes.pop(sb_id, None)
        reason = "out of memory" if oom else "destroyed"
        log.info("sb=%s fn=%s destroyed oom=%s", sb.id, sb.label, oom)
        return {"oom": oom, "reason": reason}

    def _teardown(self, sb_id: str, sb_dir: Path) -> bool:
        self.backend.kill(sb_id)
        oom = self.backend.stats(sb_id).oom_kills > 0
        self.backend.remove(sb_id)
        mounts.unmount_under(sb_dir)  # raises if anything stays mounted: never rmtree into code
        if sb_dir.exists():
            shutil.rmtree(sb_dir)
        return oom

    def cleanup_leftovers(self) -> None:
        """Remove what a crashed previous run of this instance left: processes, cgroups,
        mounts, dirs. Runs before anything new is made."""
        for group in self.backend.groups():
            log.warning("sb=%s leftover from a previous run: killing", group)
            self.backend.kill(group)
            self.backend.remove(group)
        mounts.unmount_under(self.sb_dir)
        if self.sb_dir.exists():
            shutil.rmtree(self.sb_dir)
        self._remove_shared_mounts()

    def status(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "pools": {rt: len(q) for rt, q in self.cold.items()},
            "sandboxes": [{"id": sb.id, "runtime": sb.runtime, "label": sb.label, "state": sb.state,
                           "memory": sb.memory, "pid": sb.pid} for sb in self.sandboxes.values()],
        }
