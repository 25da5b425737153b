"""End to end: durable async calls, retries, dead letters, and surviving ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import psutil
import pytest
from _functions import HELLO, deploy, python_fn
from waiting import wait_until

from engine import Engine

pytestmark = pytest.mark.root

TERMINAL = {"succeeded", "failed", "expired"}

SLOW = python_fn('''
    import time

    def handler(event, context):
        time.sleep(0.2)
        return {"n": event["n"]}
''', manifest='''
    max_instances = 1
''')

FAILING = python_fn('''
    def handler(event, context):
        raise ValueError("always fails")
''')


def enqueue(engine: Engine, name: str, event: object, key: str | None = None) -> str:
    headers = {"X-easyfaas-Invoke-Type": "event"}
    if key:
        headers["Idempotency-Key"] = key
    status, _, raw = engine.invoke(name, event, headers=headers)
    assert status == 202, raw
    return str(json.loads(raw)["invocationId"])


def record(engine: Engine, inv: str) -> dict:
    status, _, raw = engine.api("GET", f"/v1/invocations/{inv}")
    assert status == 200, raw
    return dict(json.loads(raw))


def test_async_call_completes_with_result(tmp_path: Path) -> None:
    with Engine.started(config_toml="[async]\nbackoff_s = 0.05\n") as engine:
        deploy(engine.code_dir, "hello", HELLO)
        wait_until(lambda: engine.invoke("hello")[0] == 200, "hello")
        inv = enqueue(engine, "hello", {"name": "later"})
        done = wait_until(lambda: (r := record(engine, inv))["status"] in TERMINAL and r,
                          "the async call to finish")
        assert done["status"] == "succeeded" and done["result"] == {"message": "hello later"}
        assert done["attempts"] == 1

        again = enqueue(engine, "hello", {"name": "once"}, key="k-1")
        assert enqueue(engine, "hello", {"name": "once"}, key="k-1") == again

        deploy(engine.code_dir, "failing", FAILING)
        wait_until(lambda: engine.invoke("failing")[0] == 200, "failing")
        bad = enqueue(engine, "failing", {})
        dead = wait_until(lambda: (r := record(engine, bad))["status"] in TERMINAL and r,
                          "the failing call to end", timeout=20)
        assert dead["status"] == "failed" and dead["attempts"] == 3
        assert "always fails" in json.dumps(dead["error"])

        assert engine.api("GET", "/v1/invocations/no-such-id")[0] == 404


def test_acknowledged_calls_survive_kill_9(tmp_path: Path) -> None:
    state = None
    with Engine.started(config_toml="[async]\nworkers = 1\n") as engine:
        state = engine.state_dir
        deploy(engine.code_dir, "slow", SLOW)
        wait_until(lambda: engine.invoke("slow", {"n": -1})[0] == 200, "slow")
        ids = [enqueue(engine, "slow", {"n": n}) for n in range(15)]
        wait_until(lambda: record(engine, ids[2])["status"] == "succeeded", "a few to finish")
        # Every engine process dies at once (frozen first, so none can react), while the
        # sandboxes live on as orphans that the restarted engine must clean up.
        assert engine.proc is not None
        victims = [p for p in [psutil.Process(engine.proc.pid), *engine._children()]
                   if _in_host_pid_ns(p.pid)]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for p in victims:
                os.kill(p.pid, sig)
        psutil.wait_procs(victims, timeout=10)
        engine.proc.wait()
        engine.descendants.clear()
        engine.start()
        def all_ended() -> list[dict] | None:
            records = [record(engine, i) for i in ids]
            return records if all(r["status"] in TERMINAL for r in records) else None

        finished = wait_until(all_ended, "every acknowledged call to end", timeout=60)
        assert {r["status"] for r in finished} == {"succeeded"}
        assert [r["result"] for r in finished] == [{"n": n} for n in range(15)]
        starts = Counter(line.split()[2] for line in
                         (state / "logs" / "slow.log").read_text().splitlines()
                         if line.startswith("START RequestId:"))
        ran = [starts[i] for i in ids]
        # At most the one call in flight at the kill may have run twice (at-least-once).
        assert all(n >= 1 for n in ran) and sum(n - 1 for n in ran) <= 1, ran


def _in_host_pid_ns(pid: int) -> bool:
    return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
