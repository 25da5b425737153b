"""The sandbox plan, checked without root: what is mounted where, and in which order."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from easyfaas.errors import SandboxError
from easyfaas.funclet import plan

SPEC = plan.SandboxSpec(
    runtime="python3", cgroup_procs=["/cg/memory/i/sb/cgroup.procs"], root="/run/sb/x/root",
    template="/run/tpl", task="/run/sb/x/task", sock="/run/sb/x/sock", uid=64000, gid=64001,
    tmp_size_mb=32, nodejs="/usr/bin/node",
)
TEMPLATE = plan.template("/run/tpl", "/repo/runtimes", 64000, 64001)


def _kinds(ops: list[plan.Op]) -> list[str]:
    return [op.kind for op in ops]


def _index(ops: list[plan.Op], kind: str) -> int:
    return _kinds(ops).index(kind)


def test_order_is_the_security_argument() -> None:
    ops = plan.build(SPEC)
    kinds = _kinds(ops)
    assert kinds[:3] == ["join_cgroup", "unshare", "mount"]
    assert kinds[-5:] == ["hostname", "link_up", "drop_privileges", "sched_batch", "start_runner"]
    assert _index(ops, "pivot_root") < _index(ops, "drop_privileges")
    unshare = ops[1]
    assert isinstance(unshare, plan.Unshare)
    # The pid namespace is not unshared: the plan runs in a child forked into a new one.
    assert set(unshare.namespaces) == {"mount", "ipc", "uts", "net", "cgroup"}
    assert set(plan.UNSHARED) | {"pid"} == set(plan.NAMESPACES)


def test_systemd_scope_is_joined_by_waiting_for_attach_first() -> None:
    ops = plan.build(replace(SPEC, cgroup_procs=[], attach_scope="/i-sb.scope"))
    assert _kinds(ops)[:3] == ["await_attach", "unshare", "mount"]
    assert "join_cgroup" not in _kinds(ops)
    attach = ops[0]
    assert isinstance(attach, plan.AwaitAttach) and attach.scope == "/i-sb.scope"


def test_root_is_the_read_only_template_and_slave() -> None:
    ops = plan.build(SPEC)
    mounts = [op for op in ops if isinstance(op, plan.Mount)]
    assert mounts[0] == plan.Mount(None, "/", None, ["rec", "slave"])
    assert mounts[1] == plan.Mount("/run/tpl", "/run/sb/x/root", None, ["bind", "rec"])
    assert mounts[-1] == plan.Mount(None, "/", None, plan.RO)
    # The template: its own tmpfs, private, read-only once made; /usr and the runtimes bound
    # read-only; /dev read-only too.
    tpl = [op for op in TEMPLATE if isinstance(op, plan.Mount)]
    assert tpl[0].dst == "/run/tpl" and tpl[0].fstype == "tmpfs"
    assert tpl[1] == plan.Mount(None, "/run/tpl", None, ["private"])
    assert tpl[-1] == plan.Mount(None, "/run/tpl", None, plan.RO)
    for dst in ("/run/tpl/usr", "/run/tpl/var/runtime"):
        binds = [m for m in tpl if m.dst == dst]
        assert binds[0].flags == ["bind", "rec"] and "rdonly" in binds[1].flags
    assert "rdonly" in [m for m in tpl if m.dst == "/run/tpl/dev"][-1].flags


def test_mounts_code_tmp_proc_dev_and_socket_dir() -> None:
    by_dst = {op.dst: op for op in plan.build(SPEC) if isinstance(op, plan.Mount)}
    root = "/run/sb/x/root"
    assert by_dst[root + "/var/task"].src == "/run/sb/x/task"
    assert by_dst[root + "/tmp"].data == "size=32m,mode=1777"
    assert by_dst[root + "/proc"].fstype == "proc"
    assert by_dst[root + "/run/sandbox"].src == "/run/sb/x/sock"
    assert by_dst[root + "/dev/shm"].fstype == "tmpfs"
    tpl = {op.dst for op in TEMPLATE if isinstance(op, plan.Mount)}
    nodes = {d.rsplit("/", 1)[1] for d in tpl if d.startswith("/run/tpl/dev/")}
    assert nodes == {"null", "zero", "full", "random", "urandom", "tty"}
    # Each sandbox's own mounts land on mount points the (read-only) template has.
    dirs = {op.path for op in TEMPLATE if isinstance(op, plan.MakeDir)}
    for own in ("/var/task", "/tmp", "/proc", "/dev/shm", "/run/sandbox"):
        assert "/run/tpl" + own in dirs, own


def test_etc_has_the_sandbox_user_and_no_host_files() -> None:
    files = {op.path: op.content for op in TEMPLATE if isinstance(op, plan.WriteFile)}
    etc = "/run/tpl/etc/"
    assert set(files) == {etc + n for n in ("passwd", "group", "hosts", "hostname")}
    assert "sandbox:x:64000:64001:" in files[etc + "passwd"]
    for ops in (TEMPLATE, plan.build(SPEC)):
        assert not any(isinstance(op, plan.Mount) and op.src == "/etc" for op in ops)


def test_privileges_and_runner() -> None:
    ops = plan.build(SPEC)
    assert plan.DropPrivileges(64000, 64001) in ops
    runner = ops[-1]
    assert isinstance(runner, plan.StartRunner)
    assert (runner.socket, runner.task_dir, runner.exec) == (
        "/run/sandbox/runner.sock", "/var/task", [])
    node = plan.build(replace(SPEC, runtime="nodejs"))[-1]
    assert isinstance(node, plan.StartRunner)
    assert node.exec[:2] == ["/usr/bin/node", "/var/runtime/nodejs/runner.js"]


def test_batch_scheduling_is_the_default_and_can_be_left_out() -> None:
    assert plan.BatchScheduling() in plan.build(SPEC)
    ops = plan.build(replace(SPEC, batch_scheduling=False))
    assert "sched_batch" not in _kinds(ops)
    assert _kinds(ops)[-2:] == ["drop_privileges", "start_runner"]


@pytest.mark.parametrize(
    "change, message",
    [({"runtime": "cobol"}, "unknown runtime"), ({"tmp_size_mb": 0}, "at least 1 MiB"),
     ({"cgroup_procs": []}, "procs files to join or a scope")],
)
def test_refuses_incomplete_specs(change: dict[str, object], message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        plan.build(replace(SPEC, **change))  # type: ignore[arg-type]


def test_plan_prints_and_travels_as_json() -> None:
    ops = plan.build(SPEC)
    text = plan.describe(ops)
    assert text.splitlines()[0].startswith(" 1. join_cgroup procs=")
    wire = json.loads(json.dumps([op.to_wire() for op in ops]))
    assert wire[1] == {"op": "unshare", "namespaces": plan.UNSHARED}
    assert ops[1].describe() == f"unshare namespaces={plan.UNSHARED!r}"
    drop = next(op for op in ops if op.kind == "drop_privileges")
    assert drop.describe() == f"drop_privileges uid={SPEC.uid} gid={SPEC.gid}"
    assert plan.runtimes_dir().name == "runtimes"
