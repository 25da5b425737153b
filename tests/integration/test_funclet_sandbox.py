"""Real sandboxes through the real funclet service: isolation, limits, teardown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest
from _funclet_helpers import (
    invoke,
    load,
    make_cfg,
    make_snapshot,
    running,
    state_dir,
)
from waiting import async_wait_until

from easyfaas import wire

pytestmark = pytest.mark.root

PROBE = '''
import os, socket

def _try(fn):
    try:
        return "ok: %r" % (fn(),)
    except Exception as e:
        return "error: %s" % type(e).__name__

def _status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields

def _mount_options():
    return {line.split()[4]: line.split()[5] for line in open("/proc/self/mountinfo")}

def handler(event, context):
    st = _status()
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    return {
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "caps": [st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
        "no_new_privs": st["NoNewPrivs"],
        "pids": pids,
        "cmdlines": [_try(lambda p=p: open("/proc/%s/cmdline" % p).read()) for p in pids],
        "write_task": _try(lambda: open("/var/task/new", "w")),
        "write_root": _try(lambda: open("/etc/evil", "w")),
        "write_tmp": _try(lambda: open("/tmp/ok", "w").write("x")),
        "secret": _try(lambda: open(event["secret"]).read()),
        "shadow": _try(lambda: open("/etc/shadow").read()),
        "root_home": _try(lambda: os.listdir("/root")),
        "run_dir": _try(lambda: os.listdir(event["run_dir"])),
        "tcp": _try(lambda: socket.create_connection(("127.0.0.1", event["port"]), 2)),
        "hostname": socket.gethostname(),
        "task": sorted(os.listdir("/var/task")),
        "mounts": _mount_options(),
        "sched": os.sched_getscheduler(0),
    }
'''

SCHED = '''
import os

def handler(event, context):
    return os.sched_getscheduler(0)
'''

FORK_BOMB = '''
import os, time

def handler(event, context):
    n = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
    except OSError as e:
        return {"forks": n, "error": e.errno}
'''

HOG = '''
def handler(event, context):
    hog = []
    while True:
        hog.append(bytearray(8 * 1024 * 1024))
'''


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def _cgroup_dirs(cfg: Any, sb_id: str) -> list[Path]:
    return [Path("/sys/fs/cgroup", h, cfg.instance_id, sb_id)
            for h in ("memory", "pids", "cpu", "freezer")]


def test_sandbox_is_isolated_and_unprivileged() -> None:
    async def scenario() -> dict[str, Any]:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0)
            secret = st / "secret.txt"
            secret.write_text("host secret")
            snap = make_snapshot(cfg, {"index.py": PROBE})
            listener = socket.create_server(("127.0.0.1", 0))
            event = {"secret": str(secret), "port": listener.getsockname()[1],
                     "run_dir": str(cfg.run_dir)}
            with listener:
                async with running(cfg) as funclet:
                    head, _ = await funclet.call("acquire", runtime="python3", memory=64,
                                                 code=snap, label="probe@1")
                    runner = await load(head["sandbox"])
                    resp, body = await invoke(runner, json.dumps(event).encode())
                    await runner.close()
                    assert resp["ok"], resp
                    return dict(json.loads(body))

    r = _run(scenario())
    assert (r["uid"], r["gid"], r["groups"]) == (64000, 64000, [])
    assert r["caps"] == ["0000000000000000"] * 5 and r["no_new_privs"] == "1"
    assert sorted(r["pids"]) == ["1", "2"]  # the tiny init and the runner: no host process
    assert not any("pytest" in c for c in r["cmdlines"])
    assert r["write_task"] == "error: OSError" and r["write_root"] == "error: OSError"
    assert r["write_tmp"] == "ok: 1"
    for key in ("secret", "shadow", "root_home", "run_dir"):
        assert r[key].startswith("error: "), (key, r[key])
    assert r["tcp"].startswith("error: "), r["tcp"]
    assert r["hostname"] == "sandbox" and r["task"] == ["index.py"]
    for point in ("/", "/usr", "/var/task", "/var/runtime"):
        assert r["mounts"][point].split(",")[0] == "ro", (point, r["mounts"][point])
    assert r["mounts"]["/tmp"].split(",")[0] == "rw"
    assert r["sched"] == os.SCHED_BATCH  # sandbox.batch_scheduling defaults to true


@pytest.mark.parametrize("runtime,files", [
    ("python3", {"index.py": "def handler(event, context):\n    return sum(range(10**5))\n"}),
    ("nodejs", {"index.js": "exports.handler = async () => [...Array(1e5).keys()].length;\n"}),
])
def test_runners_measure_their_calls_inside_a_sandbox(runtime: str, files: dict[str, str]) -> None:
    """The sandbox's /proc lets a runner report its call's CPU use (scheduler.instances_per_cpu)."""
    async def scenario() -> dict[str, Any]:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0)
            snap = make_snapshot(cfg, files)
            async with running(cfg) as funclet:
                head, _ = await funclet.call("acquire", runtime=runtime, memory=128,
                                             code=snap, label="measured@1")
                runner = await load(head["sandbox"], runtime=runtime)
                resp, _ = await invoke(runner)
                await runner.close()
                return resp

    resp = _run(scenario())
    assert resp["ok"], resp
    assert resp["run_s"] > 0 and 0 < resp["cpu_demand_s"], resp


def test_batch_scheduling_can_be_turned_off() -> None:
    async def scenario() -> int:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0, batch_scheduling=False)
            snap = make_snapshot(cfg, {"index.py": SCHED})
            async with running(cfg) as funclet:
                head, _ = await funclet.call("acquire", runtime="python3", memory=64,
                                             code=snap, label="sched@1")
                runner = await load(head["sandbox"])
                resp, body = await invoke(runner)
                await runner.close()
                assert resp["ok"], resp
                return int(json.loads(body))

    assert _run(scenario()) == os.SCHED_OTHER


def test_fork_bomb_stops_at_pids_max_and_sandbox_is_destroyed() -> None:
    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0, pids_max=16)
            snap = make_snapshot(cfg, {"index.py": FORK_BOMB})
            async with running(cfg) as funclet:
                head, _ = await funclet.call("acquire", runtime="python3", memory=64,
                                             code=snap, label="bomb@1")
                sb = head["sandbox"]
                runner = await load(sb)
                resp, body = await invoke(runner)
                await runner.close()
                result = json.loads(body)
                assert result["error"] == 11 and 5 <= result["forks"] < 16  # EAGAIN at pids.max
                info, _ = await funclet.call("inspect", sandbox=sb["id"])
                assert info["alive"] and 8 <= info["pids"] <= 16  # runner threads count too
                done, _ = await funclet.call("destroy", sandbox=sb["id"])
                assert done["oom"] is False
                assert not any(d.exists() for d in _cgroup_dirs(cfg, sb["id"]))
                assert not Path(f"/proc/{sb['pid']}/cmdline").exists() or \
                    not Path(f"/proc/{sb['pid']}/cmdline").read_bytes()

    _run(scenario())


def test_memory_hog_is_oom_killed_and_reported() -> None:
    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0)
            snap = make_snapshot(cfg, {"index.py": HOG})
            async with running(cfg) as funclet:
                head, _ = await funclet.call("acquire", runtime="python3", memory=48,
                                             code=snap, label="hog@1")
                sb = head["sandbox"]
                runner = await load(sb, memory=48)
                with pytest.raises(ConnectionError):
                    await invoke(runner)
                await runner.close()
                info, _ = await funclet.call("inspect", sandbox=sb["id"])
                assert info["oom"] is True
                done, _ = await funclet.call("destroy", sandbox=sb["id"])
                assert done == {**done, "oom": True, "reason": "out of memory"}
                again, _ = await funclet.call("destroy", sandbox=sb["id"])
                assert again["oom"] is False  # idempotent: already gone

    _run(scenario())


def test_destroy_and_stop_leave_nothing_behind() -> None:
    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=1)
            snap = make_snapshot(cfg, {"index.py": "def handler(e, c):\n    return 1\n"})
            async with running(cfg) as funclet:
                head, _ = await funclet.call("acquire", runtime="python3", memory=64,
                                             code=snap, label="x@1")
                sb = head["sandbox"]
                await funclet.call("destroy", sandbox=sb["id"])
                assert not Path(cfg.run_dir, "sb", sb["id"]).exists()
                assert not any(d.exists() for d in _cgroup_dirs(cfg, sb["id"]))
            # After stop: no cgroup of this instance, no mount under the run dir, no socket.
            assert not any(Path("/sys/fs/cgroup", h, cfg.instance_id).exists()
                           for h in ("memory", "pids", "cpu", "freezer"))
            assert str(cfg.run_dir) not in Path("/proc/self/mountinfo").read_text()
            assert not cfg.socket("funclet").exists()

    _run(scenario())


def test_bad_requests_change_nothing() -> None:
    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0)
            outside = st / "elsewhere"
            outside.mkdir()
            async with running(cfg) as funclet:
                bad = [
                    {"runtime": "cobol", "memory": 64, "code": str(outside)},
                    {"runtime": "python3", "memory": 64, "code": str(outside)},
                    {"runtime": "python3", "memory": "64", "code": str(outside)},
                    {"runtime": "python3", "memory": 1, "code": str(outside)},
                ]
                for fields in bad:
                    with pytest.raises(wire.RemoteError) as err:
                        await funclet.call("acquire", label="bad@1", **fields)
                    assert err.value.error["type"] == "InvalidParameter"
                with pytest.raises(wire.RemoteError):
                    await funclet.call("frobnicate")
                status, _ = await funclet.call("status")
                assert status["sandboxes"] == [] and status["backend"] == "cgroupv1"

    _run(scenario())


def test_setup_failure_refuses_the_sandbox() -> None:
    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0, nodejs="/nonexistent/node")
            snap = make_snapshot(cfg, {"index.js": "exports.handler = async () => 1;"})
            async with running(cfg) as funclet:
                with pytest.raises(wire.RemoteError) as err:
                    await funclet.call("acquire", runtime="nodejs", memory=64, code=snap,
                                       label="n@1")
                assert err.value.error["type"] == "SandboxError"
                assert "setup failed" in str(err.value) and "nonexistent" in str(err.value)
                status, _ = await funclet.call("status")
                assert status["sandboxes"] == []
                groups = Path("/sys/fs/cgroup/memory", cfg.instance_id).iterdir()
                assert [g for g in groups if g.is_dir()] == []

    _run(scenario())


def test_each_sandbox_init_gets_its_own_pid_namespace_and_the_zygote_keeps_its_own() -> None:
    """The zygote unshares a pid namespace for each fork and points itself back afterwards: a
    slip would put the next sandbox in the previous one's namespace, or the zygote in one."""

    def ns(pid: int, kind: str) -> str:
        return os.readlink(f"/proc/{pid}/ns/{kind}")

    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0)
            snap = make_snapshot(cfg, {"index.py": "def handler(e, c):\n    return 1\n"})
            async with running(cfg) as funclet:
                inits = []
                for label in ("a@1", "b@1"):
                    head, _ = await funclet.call("acquire", runtime="python3", memory=64,
                                                 code=snap, label=label)
                    inits.append(int(head["sandbox"]["pid"]))
                zygotes = [p.pid for p in psutil.Process().children()
                           if any("zygote.py" in arg for arg in p.cmdline())]
                assert len(zygotes) == 1, zygotes
                own = ns(os.getpid(), "pid")
                assert ns(zygotes[0], "pid") == own
                assert ns(zygotes[0], "pid_for_children") == own
                init_ns = [ns(pid, "pid") for pid in inits]
                assert len(set(init_ns)) == 2 and own not in init_ns

    _run(scenario())


def _exited(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_zygote_that_died_is_started_again_for_the_next_sandbox() -> None:
    """The funclet talks to its zygote over one socket; a zygote that is gone (killed, OOM)
    must cost the next spawn a restart, not every later sandbox."""

    def zygotes() -> list[psutil.Process]:
        found = []
        for p in psutil.Process().children():
            with contextlib.suppress(psutil.ZombieProcess):  # dead, not yet reaped
                if any("zygote.py" in arg for arg in p.cmdline()):
                    found.append(p)
        return found

    async def serves(funclet: wire.Client, snap: str, label: str) -> None:
        head, _ = await funclet.call("acquire", runtime="python3", memory=64, code=snap,
                                     label=label)
        runner = await load(head["sandbox"])
        try:
            resp, body = await invoke(runner)
            assert resp["ok"] and json.loads(body) == 1, (resp, body)
        finally:
            await runner.close()

    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0)
            snap = make_snapshot(cfg, {"index.py": "def handler(e, c):\n    return 1\n"})
            async with running(cfg) as funclet:
                await serves(funclet, snap, "a@1")
                [first] = zygotes()
                first.kill()
                # Dead means a zombie: a process still exiting may show an empty command line
                # (its memory is released first) while its socket is still open.
                await async_wait_until(lambda: _exited(first), "the zygote to die")
                await serves(funclet, snap, "b@1")
                [second] = zygotes()
                assert second.pid != first.pid

    _run(scenario())
