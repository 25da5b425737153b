"""Host-side mounts: the read-only store view, the sandboxes' root template, per-sandbox shared
task mounts, unmounting."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SandboxError
from . import nsinit, plan
from .nsinit import mount, umount


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return field.encode().decode("unicode_escape")


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points at or below ``prefix``, deepest (latest) first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = Path(_unescape(line.split()[4]))
            if point == prefix or prefix in point.parents:
                found.append(point)
    return list(reversed(found))


def unmount_under(prefix: Path) -> None:
    """Detach every mount at or below ``prefix`` (stacked mounts included)."""
    while points := mounts_under(prefix):
        for point in points:
            try:
                umount(str(point))
            except OSError as e:
                raise SandboxError(f"cannot unmount {point}: {e}") from e


def make_shared_mountpoint(path: Path) -> None:
    """Turn ``path`` into its own shared mount, so binds onto it propagate into sandboxes."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mount(str(path), str(path), None, ["bind"])
        mount(None, str(path), None, ["private"])
        mount(None, str(path), None, ["shared"])
    except OSError as e:
        raise SandboxError(f"cannot make {path} a shared mount: {e}") from e


def bind_read_only(src: Path, dst: Path) -> None:
    """A read-only view of ``src`` at ``dst``; binds taken from it stay read-only."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        mount(str(src), str(dst), None, ["bind"])
        mount(None, str(dst), None, ["bind", "remount", "rdonly", "nosuid", "nodev"])
        mount(None, str(dst), None, ["private"])
    except OSError as e:
        raise SandboxError(f"cannot bind {src} read-only at {dst}: {e}") from e


def bind(src: Path, dst: Path) -> None:
    try:
        mount(str(src), str(dst), None, ["bind"])
    except OSError as e:
        raise SandboxError(f"cannot bind {src} at {dst}: {e}") from e


def make_tree(path: Path, ops: list[plan.Op]) -> None:
    """Apply plan ops that build a tree at ``path`` here, on the host (the root template)."""
    path.mkdir(parents=True, exist_ok=True)
    # Under systemd the funclet's umask is 0027: /etc/passwd would be closed to the sandbox uid.
    umask = os.umask(0o022)
    try:
        for op in ops:
            nsinit.apply_here(op.to_wire())
    except OSError as e:
        raise SandboxError(f"cannot make {path}: {e}") from e
    finally:
        os.umask(umask)
