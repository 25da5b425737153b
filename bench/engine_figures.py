"""The engine's own figures: warm HTTP/invoke, cold starts, deploy-to-serving, memory, async."""

from __future__ import annotations

import functools
import time
from typing import Any

from bench import isolation, measure, procs, wrk
from bench.engine import MEMORY_MB, Engine, sandbox_pids
from bench.measure import Plan
from bench.stats import Figures

MIB = 1024 * 1024
POOL_SIZE = 2
EVENT = ("X-easyfaas-Invoke-Type: event",)
MEMORY_KEYS = ["engine.memory.idle_pss_mib", "engine.memory.sandbox_pss_mib",
               "engine.memory.sandbox_private_mib", "engine.memory.sandboxes_per_gib"]


def warm_targets(figs: Figures, eng: Engine, plan: Plan) -> list[measure.Target]:
    """Both handlers deployed; to be measured through the HTTP trigger and the invoke API."""
    for handler in measure.HANDLERS:
        eng.deploy(handler, handler)
    return ([measure.Target("engine_http", h, eng.url(h)) for h in measure.HANDLERS]
            + [measure.Target("engine_invoke", h, eng.invoke_url(h)) for h in measure.HANDLERS])


def warm_isolation(eng: Engine) -> dict[str, Any]:
    """The isolation of the warm sandboxes that served the measured calls."""
    return isolation.sandboxes(eng.runtimes(), eng.pid, measure.HANDLERS, MEMORY_MB)


def _pool_full(eng: Engine, size: int) -> bool:
    return int(eng.runtimes()["funclet"]["pools"].get("python3", 0)) >= size


def code_dir_cold_start(figs: Figures, eng: Engine, plan: Plan) -> None:
    """A new function's complete bundle renamed into the code dir, until its first 200."""
    runs = []
    for i in range(plan.cold_runs):
        procs.wait_until(lambda: _pool_full(eng, POOL_SIZE), "the sandbox pool to refill")
        bundle = eng.stage(f"new{i}", "hello")
        start = time.perf_counter()
        eng.publish(bundle)
        procs.wait_until(functools.partial(procs.answers, eng.url(bundle.name)),
                         "a new function", interval=0.002)
        runs.append((time.perf_counter() - start) * 1000)
    figs.add("engine.cold_start.code_dir_ms", runs, "ms")


def deploy_to_serving(figs: Figures, eng: Engine, plan: Plan) -> None:
    """An edit saved into a deployed function, until a call returns the new code's answer."""
    eng.deploy("edited", "hello")
    runs = []
    for i in range(plan.cold_runs):
        marker = f"edit{i}"
        start = time.perf_counter()
        eng.edit("edited", "hello", marker)
        procs.wait_until(functools.partial(procs.answers, eng.url("edited"), marker.encode()),
                         "the edit", interval=0.002)
        runs.append((time.perf_counter() - start) * 1000)
    figs.add("engine.deploy_to_serving_ms", runs, "ms")


def known_cold_start(figs: Figures, eng: Engine, plan: Plan, key: str, pool: int) -> None:
    """First call of a deployed function whose warm sandbox is gone (tiny idle timeout)."""
    eng.deploy("known", "hello")
    url = eng.invoke_url("known")
    runs = []
    for _ in range(plan.cold_runs):
        procs.wait_until(lambda: _no_warm(eng, "known") and _pool_full(eng, pool),
                         "the warm sandbox to expire")
        start = time.perf_counter()
        status, _ = procs.request(url)
        runs.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise RuntimeError(f"cold invoke answered {status}")
    figs.add(key, runs, "ms")


def _no_warm(eng: Engine, name: str) -> bool:
    """No sandbox of ``name`` left, in the controller nor still being torn down in the funclet:
    the expired sandbox's teardown would otherwise share the CPU with the cold start measured."""
    runtimes = eng.runtimes()
    return (not any(sb["function"] == name for sb in runtimes["sandboxes"])
            and all(sb["state"] == "cold" for sb in runtimes["funclet"]["sandboxes"]))


def async_enqueue(figs: Figures, eng: Engine, plan: Plan) -> None:
    """Async invocations accepted (202, each after its durable commit) per second at c=32."""
    url = eng.invoke_url("hello")
    runs = [wrk.run(url, 32, plan.seconds, plan.load_cpus, EVENT).rps for _ in range(plan.runs)]
    figs.add("engine.async.enqueue_rps", runs, "req/s")


def memory(figs: Figures, eng: Engine, plan: Plan) -> list[dict[str, Any]]:
    """Idle engine PSS, and PSS/private memory of each warm idle sandbox, sampled once per run
    a second apart; returns the engine's processes (pid, name, PSS) for the record."""
    for i in range(plan.idle_sandboxes):
        eng.deploy(f"idle{i}", "hello", memory=32)
    engine_pss: list[float] = []
    sandbox_pss: list[float] = []
    sandbox_uss: list[float] = []
    listing: list[dict[str, Any]] = []
    for _ in range(plan.runs):
        procs.wait_until(lambda: _pool_full(eng, POOL_SIZE), "the sandbox pool to refill")
        time.sleep(1.0)  # samples a second apart, the first a second after the last call
        listing, idle = _engine_and_idle_sandboxes(eng)
        engine_pss.append(sum(p["pss_mib"] for p in listing))
        sandbox_pss += [_sum(pid, "pss") for pid in idle]
        sandbox_uss += [_sum(pid, "uss") for pid in idle]
    figs.add("engine.memory.idle_pss_mib", engine_pss, "MiB")
    figs.add("engine.memory.sandbox_pss_mib", sandbox_pss, "MiB")
    figs.add("engine.memory.sandbox_private_mib", sandbox_uss, "MiB")
    # Derived, not measured: how many such sandboxes 1 GiB holds at the measured PSS.
    figs.add("engine.memory.sandboxes_per_gib", [1024 / p for p in sandbox_pss], "sandboxes")
    return listing


def _engine_and_idle_sandboxes(eng: Engine) -> tuple[list[dict[str, Any]], list[int]]:
    """The engine's own processes (sandboxes excluded) and the pids of the idle sandboxes."""
    status = eng.runtimes()["funclet"]
    in_sandboxes = sandbox_pids(status)
    # Components forked by ``easyfaas up`` share its command line; their name says which is which.
    listing = [{"pid": p.pid, "name": f"{p.name()}: {' '.join(p.cmdline()[1:5])}",
                "pss_mib": round(p.memory_full_info().pss / MIB, 2)}
               for p in procs.tree(eng.pid) if p.pid not in in_sandboxes]
    idle = [int(sb["pid"]) for sb in status["sandboxes"]
            if sb["state"] == "bound" and str(sb["label"]).startswith("idle")]
    return listing, idle


def _sum(pid: int, field: str) -> float:
    return sum(getattr(p.memory_full_info(), field) for p in procs.tree(pid)) / MIB
