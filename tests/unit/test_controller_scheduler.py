"""Scheduling decisions against a fake funclet and fake runners on real unix sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from _controller_fakes import FakeFunclet, make_config, record, run, short_dir
from waiting import async_wait_until

from easyfaas import wire
from easyfaas.controller.metrics import Metrics
from easyfaas.controller.registry import Target, make_target
from easyfaas.controller.sandboxes import FunctionFailed
from easyfaas.controller.scheduler import Scheduler
from easyfaas.errors import ServiceUnavailable, TooManyRequests


def target(name: str, version: int = 1, **config: Any) -> Target:
    return make_target(name, version, record(name, version, **config))


@asynccontextmanager
async def scheduler(**sched: Any) -> AsyncIterator[tuple[Scheduler, FakeFunclet]]:
    root = short_dir()
    budget = sched.pop("memory_budget_mb", 2048)
    cfg = make_config(root, scheduler={"queue_timeout_s": 0.5, **sched},
                      sandbox={"memory_budget_mb": budget})
    funclet = FakeFunclet(root)
    server = await wire.start_server(str(root / "funclet.sock"), funclet.handle)
    client = wire.Client(str(root / "funclet.sock"))
    sched_obj = Scheduler(cfg, client, Metrics())
    try:
        yield sched_obj, funclet
    finally:
        await sched_obj.shutdown()
        await client.close()
        server.close()
        shutil.rmtree(root)


@run
async def test_warm_sandbox_is_reused_for_the_same_function() -> None:
    async with scheduler() as (s, funclet):
        first = await s.acquire(target("a"))
        s.release(first)
        second = await s.acquire(target("a"))
        assert second is first
        assert funclet.acquired == ["a@1"]


@run
async def test_never_serves_one_function_from_anothers_sandbox() -> None:
    async with scheduler() as (s, funclet):
        a = await s.acquire(target("a"))
        s.release(a)
        b = await s.acquire(target("b"))
        assert b is not a
        assert b.target.name == "b"
        assert funclet.acquired == ["a@1", "b@1"]


@run
async def test_concurrency_packs_calls_then_starts_another_sandbox() -> None:
    async with scheduler() as (s, funclet):
        t = target("a", concurrency=2)
        one, two, three = [await s.acquire(t) for _ in range(3)]
        assert one is two
        assert three is not one
        assert len(funclet.acquired) == 2


@run
async def test_max_instances_makes_calls_wait_for_a_free_slot() -> None:
    async with scheduler() as (s, _):
        t = target("a", max_instances=1)
        first = await s.acquire(t)
        waiting = asyncio.ensure_future(s.acquire(t))
        await async_wait_until(lambda: len(s._queues.get("a", ())) == 1)  # it queued, not served
        assert not waiting.done()
        s.release(first)
        assert await asyncio.wait_for(waiting, 2) is first


SHORT = {"run_s": 0.0005, "cpu_demand_s": 0.0001}  # what a runner reports of a 0.5 ms call


@pytest.mark.parametrize("reported, behind, in_order, depth, waits_inside", [
    (SHORT, True, True, 2, True),  # short calls: the next waits inside the busy sandbox
    (None, True, True, 2, False),  # nothing known of the function's calls yet
    ({"run_s": 0.004, "cpu_demand_s": 0.001}, True, True, 2, False),  # longer than 2 ms
    (SHORT, False, True, 2, False),  # a call that was sent behind one and came back unstarted
    (SHORT, True, False, 2, False),  # a runner that may take calls at once (does not say so)
    (SHORT, True, True, 0, False),  # queue_in_sandbox_depth 0: none wait inside
])
def test_at_the_cap_only_short_calls_wait_inside_a_busy_sandbox(
        reported: dict[str, float] | None, behind: bool, in_order: bool, depth: int,
        waits_inside: bool) -> None:
    asyncio.run(_short_calls_wait_inside(reported, behind, in_order, depth, waits_inside))


async def _short_calls_wait_inside(reported: dict[str, float] | None, behind: bool,
                                   in_order: bool, depth: int, waits_inside: bool) -> None:
    async with scheduler(max_instances=1, queue_in_sandbox_depth=depth) as (s, _):
        t = target("a")
        first = await s.acquire(t)
        first.in_order = in_order  # as the python3 runner says when it loads such a function
        if reported:
            s.observe("a", reported)
        second = asyncio.ensure_future(s.acquire(t, behind=behind))
        await async_wait_until(lambda: second.done() or len(s._queues["a"]) == 1)
        if waits_inside:
            assert second.result() is first and first.inflight == 2
            assert await s.acquire(t) is first and first.inflight == 3
            # Two at most wait inside (queue_in_sandbox_depth): the next queues as before.
            fourth = asyncio.ensure_future(s.acquire(t))
            await async_wait_until(lambda: len(s._queues["a"]) == 1)
            s.release(first)
            assert await asyncio.wait_for(fourth, 2) is first
        else:
            assert not second.done() and first.inflight == 1
            s.release(first)
            assert await asyncio.wait_for(second, 2) is first


@run
async def test_a_call_waits_inside_the_sandbox_with_the_fewest_calls() -> None:
    async with scheduler(max_instances=2) as (s, _):
        t = target("a")
        one, two = await s.acquire(t), await s.acquire(t)
        one.in_order = two.in_order = True
        s.observe("a", SHORT)
        assert await s.acquire(t) is one  # both run one call: the first found
        assert [await s.acquire(t) for _ in range(3)] == [two, one, two]
        assert (one.inflight, two.inflight) == (3, 3)


@run
async def test_a_caller_that_leaves_the_queue_gives_back_nothing_and_loses_nothing() -> None:
    async with scheduler(max_instances=1) as (s, _):
        t = target("a")
        first = await s.acquire(t)
        # Cancelled while queued: it just leaves the queue.
        waiting = asyncio.ensure_future(s.acquire(t))
        await async_wait_until(lambda: len(s._queues["a"]) == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert len(s._queues["a"]) == 0
        # Cancelled after the slot was handed over, before it ran: the slot comes back.
        waiting = asyncio.ensure_future(s.acquire(t))
        await async_wait_until(lambda: len(s._queues["a"]) == 1)
        s.release(first)
        assert len(s._queues["a"]) == 0 and first.inflight == 1  # handed to the waiter
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert first.inflight == 0
        assert await asyncio.wait_for(s.acquire(t), 2) is first


@run
async def test_full_queue_is_refused_with_429() -> None:
    async with scheduler(queue_size=1, max_instances=1) as (s, _):
        t = target("a")
        await s.acquire(t)
        waiting = asyncio.ensure_future(s.acquire(t))
        await async_wait_until(lambda: len(s._queues["a"]) == 1)
        with pytest.raises(TooManyRequests, match="queue is full"):
            await s.acquire(t)
        with pytest.raises(TooManyRequests):
            await waiting


@run
async def test_queue_wait_times_out_with_429() -> None:
    async with scheduler(max_instances=1, queue_timeout_s=0.2) as (s, _):
        t = target("a")
        await s.acquire(t)
        with pytest.raises(TooManyRequests, match="within 0.2s"):
            await s.acquire(t)


@run
async def test_each_queued_call_waits_its_own_timeout() -> None:
    """One timer serves a queue: a call served before its time is up takes nothing from the
    calls behind it, and each of those times out when its own wait is over."""
    async with scheduler(max_instances=1, queue_timeout_s=0.6) as (s, _):
        t = target("a")
        held = await s.acquire(t)
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(s.acquire(t))
        await async_wait_until(lambda: len(s._queues["a"]) == 1)
        await asyncio.sleep(0.3)  # the second call comes later: the timing under test
        queued_at = loop.time()
        second = asyncio.ensure_future(s.acquire(t))
        await async_wait_until(lambda: len(s._queues["a"]) == 2)
        s.release(held)
        assert await asyncio.wait_for(first, 2) is held  # served in time
        with pytest.raises(TooManyRequests, match="within 0.6s"):
            await asyncio.wait_for(second, 5)
        assert loop.time() - queued_at >= 0.55  # its own 0.6 s, not the first call's


@run
async def test_queue_is_fifo() -> None:
    async with scheduler(max_instances=1) as (s, _):
        t = target("a")
        held = await s.acquire(t)
        order: list[int] = []

        async def call(i: int) -> None:
            sb = await s.acquire(t)
            order.append(i)
            s.release(sb)

        tasks = []
        for i in range(3):
            tasks.append(asyncio.ensure_future(call(i)))
            await async_wait_until(lambda i=i: len(s._queues["a"]) == i + 1)
        s.release(held)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]


@run
async def test_memory_budget_evicts_the_least_recently_used_idle_sandbox() -> None:
    async with scheduler(memory_budget_mb=256) as (s, funclet):
        a = await s.acquire(target("a"))
        b = await s.acquire(target("b"))
        s.release(a)
        s.release(b)
        c = await s.acquire(target("c"))
        assert c.target.name == "c"
        await async_wait_until(lambda: a.id in funclet.destroyed)
        assert b.id not in funclet.destroyed
        assert s.used_mb() <= 256


@run
async def test_memory_budget_queues_when_everything_is_busy() -> None:
    async with scheduler(memory_budget_mb=256) as (s, funclet):
        a = await s.acquire(target("a"))
        await s.acquire(target("b"))
        waiting = asyncio.ensure_future(s.acquire(target("c")))
        await async_wait_until(lambda: len(s._queues.get("c", ())) == 1)  # it queued, not served
        assert not waiting.done() and funclet.destroyed == []
        s.release(a)
        c = await asyncio.wait_for(waiting, 2)
        assert c.target.name == "c" and a.id in funclet.destroyed


@run
async def test_function_larger_than_the_budget_is_refused() -> None:
    async with scheduler(memory_budget_mb=256) as (s, funclet):
        with pytest.raises(ServiceUnavailable, match="budget"):
            await s.acquire(target("big", memory=512))
        assert funclet.acquired == []


@run
async def test_idle_sandboxes_cool_down() -> None:
    async with scheduler(idle_timeout_s=0.1) as (s, funclet):
        stop = asyncio.Event()
        cooler = asyncio.ensure_future(s.cooldown(stop))
        sb = await s.acquire(target("a"))
        busy = await s.acquire(target("b"))
        s.release(sb)
        await async_wait_until(lambda: sb.id in funclet.destroyed)
        assert busy.id not in funclet.destroyed
        stop.set()
        await cooler


@run
async def test_new_version_gets_new_calls_while_old_call_finishes() -> None:
    async with scheduler() as (s, funclet):
        old = await s.acquire(target("a", 1))
        s.on_change("a", record("a", 2))
        assert old.id not in funclet.destroyed  # still in flight
        await async_wait_until(lambda: s.counts() == {"warm": 1, "busy": 1, "starting": 0},
                               "version 2 pre-warmed")
        new = await s.acquire(target("a", 2))
        assert new is not old and new.target.version == 2
        assert funclet.acquired == ["a@1", "a@2"]
        s.release(old)
        await async_wait_until(lambda: old.id in funclet.destroyed)
        s.release(new)
        assert await s.acquire(target("a", 2)) is new


@run
async def test_at_the_cap_an_idle_sandbox_of_another_version_makes_room() -> None:
    """Calls to two versions of one function (a qualifier): at ``max_instances`` the other
    version's idle sandbox is replaced; a busy one is waited for, then replaced."""
    async with scheduler(max_instances=1) as (s, funclet):
        v1 = await s.acquire(target("a", 1))
        s.release(v1)
        v2 = await s.acquire(target("a", 2))  # v1 idle: replaced at once
        assert v2.target.version == 2
        await async_wait_until(lambda: v1.id in funclet.destroyed)
        waiting = asyncio.ensure_future(s.acquire(target("a", 1)))  # v2 busy: wait for it
        await async_wait_until(lambda: len(s._queues["a"]) == 1)
        assert not waiting.done()
        s.release(v2)
        again = await asyncio.wait_for(waiting, 5)
        assert again.target.version == 1 and again is not v1
        await async_wait_until(lambda: v2.id in funclet.destroyed)
        assert [sb.target.version for sb in s.sandboxes] == [1]


@run
async def test_deleted_function_loses_its_sandboxes() -> None:
    async with scheduler() as (s, funclet):
        sb = await s.acquire(target("a"))
        s.release(sb)
        s.on_change("a", None)
        await async_wait_until(lambda: sb.id in funclet.destroyed)
        assert s.sandboxes == []


@run
async def test_handler_that_does_not_load_is_a_function_error() -> None:
    async with scheduler(max_instances=1) as (s, funclet):
        with pytest.raises(FunctionFailed) as info:
            await s.acquire(target("a", handler="broken.handler"))
        assert info.value.error["errorType"] == "Runtime.ImportModuleError"
        await async_wait_until(lambda: funclet.destroyed == ["sb1"])
        # The reservation was given back: the next call may start a sandbox again.
        sb = await s.acquire(target("a"))
        assert sb.id == "sb2"
        assert s.used_mb() == 128


COMPUTING = {"run_s": 0.01, "cpu_demand_s": 0.01}


async def _instances_before_queueing(s: Scheduler, t: Target, most: int) -> int:
    """Acquire for ``t`` until a call queues (or ``most`` are held); how many were served."""
    held = []
    while len(held) < most:
        call = asyncio.ensure_future(s.acquire(t))
        await async_wait_until(lambda c=call: c.done() or len(s._queues.get(t.name, ())) == 1)
        if not call.done():
            call.cancel()
            break
        held.append(call.result())
    return len(held)


@run
async def test_a_function_whose_calls_compute_gets_instances_per_cpu_sandboxes() -> None:
    cpus = len(os.sched_getaffinity(0))
    async with scheduler(instances_per_cpu=1, max_instances=cpus + 4) as (s, funclet):
        s.observe("a", COMPUTING)
        assert await _instances_before_queueing(s, target("a"), cpus + 4) == cpus
        assert len(funclet.acquired) == cpus
        s.observe("b", {"run_s": 2, "cpu_demand_s": 2})  # whole numbers arrive as JSON ints
        assert await _instances_before_queueing(s, target("b"), cpus + 4) == cpus


@run
async def test_a_function_whose_calls_wait_keeps_every_instance() -> None:
    async with scheduler(instances_per_cpu=1, max_instances=6) as (s, _):
        s.observe("a", {"run_s": 1.0, "cpu_demand_s": 0.01})
        assert await _instances_before_queueing(s, target("a"), 7) == 6


@run
async def test_no_cap_by_cpu_share_when_turned_off_or_not_reported() -> None:
    async with scheduler(instances_per_cpu=0, max_instances=6) as (s, _):
        s.observe("a", COMPUTING)
        assert await _instances_before_queueing(s, target("a"), 7) == 6
    async with scheduler(instances_per_cpu=1, max_instances=6) as (s, _):
        s.observe("b", {"run_s": "1", "cpu_demand_s": True})  # not numbers: ignored
        s.observe("b", {})  # a call that was not measured, or a kernel without schedstat
        assert await _instances_before_queueing(s, target("b"), 7) == 6
