"""Whether the sandboxes that served the measured calls kept their isolation.

No target may be reached by weakening isolation, so each run checks the warm sandboxes it
measured, from the host through ``/proc``, for every process in each sandbox (its init and the
runner): namespaces of its own, no privileges, the function's memory limit and a pids limit on its
cgroup, the code and the root read-only, and no network but loopback (docs/sandbox.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024
NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def check(pid: int, engine_pid: int, memory_mb: int) -> dict[str, bool]:
    """Each check of the sandbox whose init is ``pid``: True where every process passed it."""
    pids = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    engine_ns = _namespaces(engine_pid)
    return {
        "own_namespaces": all(engine_ns.isdisjoint(_namespaces(p)) for p in pids),
        "unprivileged": all(_unprivileged(p) for p in pids),
        "memory_limit": all(_memory_limit(p) == memory_mb * MIB for p in pids),
        "pids_limit": all(_pids_limit(p) is not None for p in pids),
        "read_only_code": all(_read_only(p, "/var/task") and _read_only(p, "/") for p in pids),
        "loopback_only": all(_interfaces(p) == ["lo"] for p in pids),
    }


def sandboxes(runtimes: dict[str, Any], engine_pid: int, labels: tuple[str, ...],
              memory_mb: int) -> dict[str, Any]:
    """The checks of every bound sandbox whose label starts with one of ``labels`` (the
    funclet's view in ``GET /v1/runtimes``); ``intact`` only if there was one and all held."""
    checked = [{"label": sb["label"], "pid": sb["pid"],
                "checks": check(int(sb["pid"]), engine_pid, memory_mb)}
               for sb in runtimes["funclet"]["sandboxes"]
               if sb["state"] == "bound" and str(sb["label"]).startswith(labels)]
    intact = bool(checked) and all(all(c["checks"].values()) for c in checked)
    return {"sandboxes": checked, "intact": intact}


def _namespaces(pid: int) -> set[str]:
    """The namespaces of ``pid`` as ``/proc`` names them (``net:[4026531840]``): equal only
    for the same namespace, and never equal across kinds."""
    return {str(Path(f"/proc/{pid}/ns/{ns}").readlink()) for ns in NAMESPACES}


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _unprivileged(pid: int) -> bool:
    status = _status(pid)
    uids = [int(u) for u in status["Uid"].split()]
    gids = [int(g) for g in status["Gid"].split()]
    return (0 not in uids and 0 not in gids
            and int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
            and status.get("NoNewPrivs", "").strip() == "1")


def _cgroup_dir(pid: int, controller: str) -> Path | None:
    """The cgroup directory of ``pid`` that holds ``controller``: its v1 hierarchy, or the v2
    group if the unified hierarchy at ``/sys/fs/cgroup`` has that controller."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return CGROUP_ROOT / controller / path.lstrip("/")
        if controllers == "" and controller in _v2_controllers():
            return CGROUP_ROOT / path.lstrip("/")
    return None


def _v2_controllers() -> list[str]:
    try:
        return (CGROUP_ROOT / "cgroup.controllers").read_text().split()
    except FileNotFoundError:  # not a unified hierarchy at the root
        return []


def _limit(pid: int, controller: str, v1_file: str, v2_file: str) -> int | None:
    group = _cgroup_dir(pid, controller)
    if group is None:
        return None
    path = group / (v1_file if (group / v1_file).exists() else v2_file)
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    return None if value == "max" else int(value)


def _memory_limit(pid: int) -> int | None:
    return _limit(pid, "memory", "memory.limit_in_bytes", "memory.max")


def _pids_limit(pid: int) -> int | None:
    return _limit(pid, "pids", "pids.max", "pids.max")


def _read_only(pid: int, mount_point: str) -> bool:
    """Whether the mount visible at ``mount_point`` in ``pid``'s mount namespace is read-only
    (the last mount listed there is the one on top)."""
    options = None
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == mount_point:
            options = fields[5].split(",")
    return options is not None and "ro" in options


def _interfaces(pid: int) -> list[str]:
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)
