"""Which sandbox serves a call: warm reuse, concurrency, instance caps, a bounded wait queue,
calls waiting inside busy sandboxes, the global memory budget (evicting idle sandboxes
LRU-first) and idle cooldown.

All bookkeeping happens synchronously on the event loop, so a decision ("take this slot",
"reserve memory for a cold start", "evict that one") can never race with another call. Only the
funclet and runner round trips are awaited.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from typing import Any, TypeGuard

from .. import wire
from ..config import Config
from ..errors import EasyFaaSError, ServiceUnavailable, TooManyRequests, from_wire
from .kept import KeptAnswers
from .metrics import Metrics
from .registry import Record, Target, make_target
from .sandboxes import FunctionFailed, Sandbox

log = logging.getLogger("easyfaas.controller")

# A cold start may take a while on a busy edge box; the handler import gets its own timeout.
ACQUIRE_TIMEOUT_S = 30.0
# How fast a function's averages (CPU share, run time) follow its latest calls (weight of the
# newest call).
SHARE_WEIGHT = 0.1


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _moving(average: float | None, value: float) -> float:
    """``average`` moved towards ``value`` (the first value starts it)."""
    return value if average is None else average + SHARE_WEIGHT * (value - average)


class _Waiter:
    """A queued call. ``fut`` gets its slot (a ``Sandbox``, or ``True``: a cold start reserved for
    it) when capacity frees up, or the error that ends its wait."""

    __slots__ = ("target", "fut", "deadline", "behind")

    def __init__(self, target: Target, fut: asyncio.Future[Sandbox | bool], deadline: float,
                 behind: bool):
        self.target = target
        self.fut = fut
        self.deadline = deadline  # loop time
        self.behind = behind  # may be handed a busy sandbox to wait behind its call


class _Queue(deque[_Waiter]):
    """A function's waiting calls, oldest first, and one timer that ends the waits that time
    out. Every call waits ``queue_timeout_s`` at most, so the head's deadline is the first: the
    timer is set for it and, when it fires, set again for the new head. A timer per call
    (made, then cancelled when the call is served) cost ~2 µs of the controller's ~40 per call
    under load, where most calls queue."""

    __slots__ = ("timer",)

    def __init__(self) -> None:
        super().__init__()
        self.timer: asyncio.TimerHandle | None = None


class Scheduler:
    def __init__(self, cfg: Config, funclet: wire.Client, metrics: Metrics):
        self.cfg = cfg
        self.funclet = funclet
        self.metrics = metrics
        self.sandboxes: list[Sandbox] = []
        # The same sandboxes by target key: every call looks for a warm slot among its own
        # target's sandboxes only, however many other functions have theirs.
        self._by_key: dict[tuple[str, int, str], list[Sandbox]] = {}
        # How many sandboxes each function has (all versions): the instance cap is checked on
        # every call that finds no free slot, which under load is most of them.
        self._instances: dict[str, int] = {}
        # Cold starts in progress, by function: they count against max_instances and memory.
        self._starting: dict[str, int] = {}
        self._starting_mb = 0
        self._queues: dict[str, _Queue] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # get_running_loop() is a getpid()
        self._closing = False
        self._kicking = False
        self._kick_again = False
        # Per function: the share of its calls' run time they spent computing or waiting for a
        # CPU, as the runners report it (moving average). See ``_instance_limit``.
        self._cpu_share: dict[str, float] = {}
        # Per function: its calls' run time in seconds (moving average). See ``_behind_busy``.
        self._run_s: dict[str, float] = {}
        self._cpus = len(os.sched_getaffinity(0))

    # -- taking and giving back a slot ----------------------------------------------------------

    async def acquire(self, target: Target, behind: bool = True) -> Sandbox:
        """A sandbox with a free slot for ``target`` (warm if possible, else a cold start), or
        with ``behind``, possibly a busy one to wait in behind its running call (see
        ``_behind_busy``).

        Waits in the function's FIFO queue when there is no capacity; ``TooManyRequests`` when
        the queue is full or the wait times out. ``FunctionFailed`` if the handler does not load.
        """
        if self._closing:
            raise ServiceUnavailable("the controller is shutting down")
        if target.memory > self.cfg.sandbox.memory_budget_mb:
            raise ServiceUnavailable(
                f"function {target.name} needs {target.memory} MB, more than the sandbox memory "
                f"budget of {self.cfg.sandbox.memory_budget_mb} MB")
        queue = self._queues.get(target.name)
        if queue is None:
            queue = self._queues[target.name] = _Queue()
        if not queue:
            got = self._take(target, behind)
            if got is not None:
                return got if isinstance(got, Sandbox) else await self._cold_start(target)
        return await self._wait_in_queue(target, queue, behind)

    async def _wait_in_queue(self, target: Target, queue: _Queue, behind: bool) -> Sandbox:
        """Queue until ``_kick`` hands this call a slot. A handover rather than a wake-up to try
        again: under load most calls wait here, and each retry cost a task and a timer."""
        if len(queue) >= self.cfg.scheduler.queue_size:
            raise TooManyRequests(f"no capacity for {target.name}: its wait queue is full")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter = _Waiter(target, loop.create_future(),
                         loop.time() + self.cfg.scheduler.queue_timeout_s, behind)
        queue.append(waiter)
        if queue.timer is None:
            queue.timer = loop.call_at(waiter.deadline, self._expire, queue)
        started = time.monotonic()
        try:
            got = await waiter.fut
        except asyncio.CancelledError:
            self._abandon(queue, waiter)
            raise
        self.metrics.observe("queue_wait", target.name, time.monotonic() - started)
        return got if isinstance(got, Sandbox) else await self._cold_start(target)

    def _expire(self, queue: _Queue) -> None:
        """End the waits whose time is up, from the head; set the timer for the next one."""
        assert self._loop is not None  # set by the first wait
        queue.timer = None
        now = self._loop.time()
        while queue and (queue[0].deadline <= now or queue[0].fut.done()):
            waiter = queue.popleft()
            if not waiter.fut.done():
                waiter.fut.set_exception(TooManyRequests(
                    f"no capacity for {waiter.target.name} within "
                    f"{self.cfg.scheduler.queue_timeout_s:g}s"))
        if queue:
            queue.timer = self._loop.call_at(queue[0].deadline, self._expire, queue)

    def _abandon(self, queue: _Queue, waiter: _Waiter) -> None:
        """The queued caller went away: leave the queue, or give back the slot it was handed."""
        if waiter in queue:  # still waiting (its future was cancelled along with the caller)
            queue.remove(waiter)
        elif not waiter.fut.cancelled() and waiter.fut.exception() is None:
            got = waiter.fut.result()
            if isinstance(got, Sandbox):
                self.release(got)
            else:
                self._unreserve(waiter.target)

    def _take(self, target: Target, behind: bool = False) -> Sandbox | bool | None:
        """Take a warm slot (the sandbox), reserve a cold start (``True``), with ``behind`` a
        place behind a busy sandbox's call (the sandbox), or ``None``."""
        best: Sandbox | None = None
        for sb in self._by_key.get(target.key, ()):
            if sb.has_room():
                if best is None or sb.inflight > best.inflight:
                    best = sb  # pack calls onto busy sandboxes so idle ones can cool down
                if target.concurrency == 1:
                    break  # every sandbox with room is idle: the first is the one
        if best is not None:
            best.inflight += 1
            return best
        if not self._room_for_instance(target) or not self._room_for_memory(target.memory):
            return self._behind_busy(target) if behind else None
        self._starting[target.name] = self._starting.get(target.name, 0) + 1
        self._starting_mb += target.memory
        return True

    def _behind_busy(self, target: Target) -> Sandbox | None:
        """At the function's cap with every sandbox busy: of the sandboxes whose runner takes
        calls in order, the one with the fewest calls sent to it, if fewer than
        ``scheduler.queue_in_sandbox_depth`` wait behind its running call, takes this one too.

        Sent at once, the calls are in the runner's socket when it answers the one before, so
        the runner goes straight on to the next instead of sleeping until the controller's next
        turn, and the controller and trigger get the CPU in longer turns that each handle many
        calls (measured: docs/performance.md). Only for a function whose calls are short on
        average (``scheduler.queue_in_sandbox_below_ms``): a call waits for the ones ahead of it
        in its sandbox even if another sandbox frees up first.
        """
        limit_s = self.cfg.scheduler.queue_in_sandbox_below_ms / 1000
        run_s = self._run_s.get(target.name)
        if target.concurrency != 1 or run_s is None or run_s >= limit_s:
            return None
        most = self.cfg.scheduler.queue_in_sandbox_depth + 1  # with the running call
        best: Sandbox | None = None
        for sb in self._by_key.get(target.key, ()):
            if (1 <= sb.inflight < most and sb.in_order and not (sb.retired or sb.dropped)
                    and (best is None or sb.inflight < best.inflight)):
                best = sb
        if best is not None:
            best.inflight += 1
        return best

    def observe(self, name: str, header: wire.Header) -> None:
        """Take note of what one call of ``name`` used, from its runner's answer."""
        run, demand = header.get("run_s"), header.get("cpu_demand_s")
        if not (_is_number(run) and _is_number(demand)) or run <= 0:
            return  # a runtime that does not say, or a kernel without schedstat
        share = min(max(demand / run, 0.0), 1.0)  # the runner is the function's: trust nothing
        self._cpu_share[name] = _moving(self._cpu_share.get(name), share)
        self._run_s[name] = _moving(self._run_s.get(name), run)

    def _instance_limit(self, target: Target) -> int:
        """``max_instances``, and for a function whose calls compute no more sandboxes than
        ``instances_per_cpu`` per CPU they could use. On a busy CPU each more computing sandbox
        adds no throughput, only preemptions that cost every call its caches (measured:
        docs/performance.md); a function whose calls wait (on I/O, a sensor) has a small share
        and keeps every instance it is allowed."""
        limit = target.max_instances or self.cfg.scheduler.max_instances
        cap = self._cpu_cap(self._cpu_share.get(target.name))
        return limit if cap is None else min(limit, cap)

    def _cpu_cap(self, share: float | None) -> int | None:
        per_cpu = self.cfg.scheduler.instances_per_cpu
        if per_cpu <= 0 or not share:
            return None
        return max(1, math.ceil(per_cpu * self._cpus / share))

    def cpu_caps(self) -> dict[str, tuple[float, int | None]]:
        """Per function that reported its use: (CPU share, the sandbox cap it sets, if any)."""
        return {name: (share, self._cpu_cap(share)) for name, share in self._cpu_share.items()}

    def _room_for_instance(self, target: Target) -> bool:
        limit = self._instance_limit(target)
        count = self._instances.get(target.name, 0)
        if count + self._starting.get(target.name, 0) < limit:
            return True
        if count == len(self._by_key.get(target.key, ())):
            return False  # at the cap, and every sandbox of the function runs this version
        # At the cap: an idle sandbox of another version of this function is stale, reuse its slot.
        stale = [sb for sb in self.sandboxes if sb.target.name == target.name
                 and sb.target.key != target.key and not sb.inflight]
        if stale:
            self.drop_later(min(stale, key=lambda s: s.last_used), "replaced by another version")
            return True
        return False

    def _room_for_memory(self, memory: int) -> bool:
        excess = self.used_mb() + memory - self.cfg.sandbox.memory_budget_mb
        idle = sorted((sb for sb in self.sandboxes if not sb.inflight), key=lambda s: s.last_used)
        if excess > sum(sb.memory for sb in idle):
            return False  # evicting would not make enough room: keep the warm sandboxes
        while excess > 0:
            victim = idle.pop(0)
            excess -= victim.memory
            self.drop_later(victim, "evicted for memory")
        return True

    def used_mb(self) -> int:
        return sum(sb.memory for sb in self.sandboxes) + self._starting_mb

    def release(self, sb: Sandbox) -> None:
        """Give back the slot a call held on a healthy sandbox."""
        sb.inflight -= 1
        sb.last_used = time.monotonic()
        if sb.retired and not sb.inflight and not sb.dropped:
            self.drop_later(sb, sb.retired)
        self._kick()

    def abandon(self, sb: Sandbox, reason: str, running: bool) -> None:
        """A call in ``sb`` lost its caller: it runs on with nobody to answer (or will, in its
        turn, if it waits behind others). In a runner that takes calls in order its answer
        tells when it has ended, so the calls behind it follow as if it had not: the sandbox
        holds it to its timeout (a waiting one from when its turn comes), the call gives back
        its slot, and the sandbox takes no more calls and goes once no call is left in it.
        Elsewhere calls run side by side and nothing would say when it ends: the sandbox goes
        now."""
        if not sb.in_order:
            self.drop_later(sb, reason)
            return
        if running:
            sb.hold_to_timeout()
        sb.retired = reason
        self.release(sb)

    def _overran(self, sb: Sandbox) -> None:
        self.drop_later(sb, "a call whose caller left ran past its timeout")

    def _kick(self) -> None:
        """Capacity may have changed: hand slots to the heads of the wait queues, in order.

        Taking a slot can evict a sandbox, which kicks again: that nested kick only asks this
        one for another round, so a queue's head is never handed two slots."""
        if self._kicking:
            self._kick_again = True
            return
        self._kicking = True
        try:
            self._kick_again = True
            while self._kick_again:
                self._kick_again = False
                for queue in self._queues.values():
                    self._serve_queue(queue)
        finally:
            self._kicking = False

    def _serve_queue(self, queue: _Queue) -> None:
        while queue:
            head = queue[0]
            if head.fut.done():  # cancelled with its caller, which leaves the queue next
                queue.popleft()
                continue
            if self._closing:
                queue.popleft()
                head.fut.set_exception(ServiceUnavailable("the controller is shutting down"))
                continue
            got = self._take(head.target, head.behind)
            if got is None:
                return
            queue.popleft()
            head.fut.set_result(got)

    # -- cold start -----------------------------------------------------------------------------

    async def _cold_start(self, target: Target) -> Sandbox:
        started = time.monotonic()
        sb: Sandbox | None = None
        try:
            sb = await self._acquire_sandbox(target)
            await sb.load(target.timeout + ACQUIRE_TIMEOUT_S)
        except BaseException as e:
            if sb is None:
                self._unreserve(target)
            else:
                self.drop_later(sb, "load failed")
            if isinstance(e, TimeoutError):
                raise FunctionFailed({"errorType": "Runtime.InitTimeout",
                                      "errorMessage": "the handler did not load in time"}) from e
            if isinstance(e, OSError):  # refused, reset, or its socket gone with it
                raise FunctionFailed({"errorType": "Runtime.ExitError",
                                      "errorMessage": "the runtime exited while loading"}) from e
            raise
        elapsed = time.monotonic() - started
        self.metrics.cold_starts[target.name] += 1
        self.metrics.observe("acquire", target.name, elapsed)
        log.info("cold start fn=%s ver=%s sb=%s in %.1fms", target.name, target.version, sb.id,
                 elapsed * 1000)
        return sb

    def _unreserve(self, target: Target) -> None:
        self._starting[target.name] -= 1
        self._starting_mb -= target.memory
        self._kick()

    async def _acquire_sandbox(self, target: Target) -> Sandbox:
        try:
            header, _ = await asyncio.wait_for(self.funclet.call(
                "acquire", runtime=target.runtime, memory=target.memory, code=target.code,
                label=target.label), ACQUIRE_TIMEOUT_S)
        except wire.RemoteError as e:
            raise from_wire(e.error) from e
        except (OSError, TimeoutError) as e:
            raise ServiceUnavailable(f"funclet unavailable: {e}") from e
        info = header["sandbox"]
        sb = Sandbox(id=info["id"], target=target, memory=int(info.get("memory") or target.memory),
                     client=wire.Client(info["socket"]), inflight=1, on_overrun=self._overran,
                     kept=KeptAnswers.open(info["socket"]))
        # The reservation becomes a real sandbox in one step, so the budget never counts it twice.
        self._starting[target.name] -= 1
        self._starting_mb -= target.memory
        self.sandboxes.append(sb)
        self._by_key.setdefault(target.key, []).append(sb)
        self._instances[target.name] = self._instances.get(target.name, 0) + 1
        return sb

    # -- dropping sandboxes ---------------------------------------------------------------------

    async def kill(self, sb: Sandbox, reason: str) -> dict[str, Any]:
        """Drop a sandbox now and return the funclet's ``destroy`` answer (``oom``, ``reason``).

        The runner connection stays open until the sandbox is gone: an answer the runner sent
        before it died is still read, so a call waiting behind the answered one counts as
        started (it fails with the sandbox) rather than as never run and sent again elsewhere.
        A call that times out as it ends lets the runner start the next one meanwhile."""
        self._forget(sb)
        try:
            return await self._destroy(sb, reason)
        finally:
            await sb.close()

    def drop_later(self, sb: Sandbox, reason: str) -> None:
        """Stop handing ``sb`` out now; destroy it in the background."""
        self._forget(sb)
        self._spawn(self.kill(sb, reason))

    def _forget(self, sb: Sandbox) -> None:
        if not sb.dropped:
            sb.dropped = True
            self.sandboxes.remove(sb)
            same = self._by_key[sb.target.key]
            same.remove(sb)
            if not same:
                del self._by_key[sb.target.key]
            left = self._instances[sb.target.name] = self._instances[sb.target.name] - 1
            if not left:
                del self._instances[sb.target.name]
            self._kick()

    async def _destroy(self, sb: Sandbox, reason: str) -> dict[str, Any]:
        log.info("destroy fn=%s ver=%s sb=%s: %s", sb.target.name, sb.target.version, sb.id,
                 reason)
        try:
            header, _ = await self.funclet.call("destroy", sandbox=sb.id)
        except (wire.RemoteError, OSError) as e:
            log.error("destroy failed fn=%s sb=%s: %s", sb.target.name, sb.id, e)
            # It may live on and run the calls left in its socket: none of them counts as
            # never started (to be sent elsewhere) any more.
            sb.fate_unknown = True
            return {"oom": False, "reason": str(e)}
        return header

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reacting to the world ------------------------------------------------------------------

    def on_change(self, name: str, record: Record | None) -> None:
        """Retire sandboxes that are no longer the live version (or whose function is gone):
        calls in flight finish there, new calls go to the new version."""
        live = None if record is None else (record.get("version"), record.get("code_sha256"))
        if record is None:
            self._cpu_share.pop(name, None)
            self._run_s.pop(name, None)
        retired = 0
        for sb in [s for s in self.sandboxes if s.target.name == name]:
            if (sb.target.version, sb.target.code_sha256) == live:
                continue
            sb.retired = "function deleted" if record is None else "old version"
            retired += 1
            if not sb.inflight:
                self.drop_later(sb, sb.retired)
        if retired and record is not None and record.get("version") is not None:
            # The function is in use: have one sandbox of the new version ready for its callers.
            self._prewarm(make_target(name, int(record["version"]), record))

    def _prewarm(self, target: Target) -> None:
        if self._closing or self._queues.get(target.name):
            return  # waiting callers come first
        got = self._take(target)
        if isinstance(got, Sandbox):
            self.release(got)
        elif got:
            self._spawn(self._warm(target))

    async def _warm(self, target: Target) -> None:
        try:
            sb = await self._cold_start(target)
        except EasyFaaSError as e:
            log.warning("pre-warm failed fn=%s ver=%s: %s", target.name, target.version, e)
            return
        self.release(sb)

    async def cooldown(self, stop: asyncio.Event) -> None:
        """Destroy sandboxes idle for longer than ``idle_timeout_s``."""
        idle_timeout = self.cfg.scheduler.idle_timeout_s
        interval = min(max(idle_timeout / 4, 0.05), 5.0)
        while not stop.is_set():
            now = time.monotonic()
            for sb in [s for s in self.sandboxes if s.idle_seconds(now) >= idle_timeout]:
                if not sb.inflight:
                    self.drop_later(sb, f"idle for {idle_timeout:g}s")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    async def shutdown(self) -> None:
        """Take no more work, wake every waiter (they fail), destroy every sandbox."""
        self._closing = True
        self._kick()
        for sb in list(self.sandboxes):
            self.drop_later(sb, "controller stopping")
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [sb.describe(now) for sb in self.sandboxes]

    def counts(self) -> dict[str, int]:
        out = {"warm": 0, "busy": 0, "starting": sum(self._starting.values())}
        for sb in self.sandboxes:
            out[sb.state] += 1
        return out

