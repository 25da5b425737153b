"""Per-function log files under ``<state>/logs/<name>.log``: what ``easyfaas logs NAME`` shows.

Writers (the controller for invocation output, stubs for deploy errors) append whole records
with one ``O_APPEND`` write each, so records from different processes never interleave. A file
past ``MAX_BYTES`` is rotated to ``<name>.log.1`` (one generation kept).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

MAX_BYTES = 1024 * 1024


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def append(state_dir: Path, name: str, text: str) -> None:
    """Append ``text`` (one record, possibly many lines) to the function's log."""
    path = log_path(state_dir, name)
    if not text.endswith("\n"):
        text += "\n"
    try:
        if path.stat().st_size > MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        path.parent.mkdir(mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def tail(state_dir: Path, name: str, lines: int = 100) -> str:
    """The last ``lines`` lines of the function's log (across one rotation)."""
    path = log_path(state_dir, name)
    chunks: list[str] = []
    for p in (path.with_name(path.name + ".1"), path):
        try:
            chunks.append(p.read_text("utf-8", "replace"))
        except FileNotFoundError:
            pass
    all_lines = "".join(chunks).splitlines()
    return "\n".join(all_lines[-lines:]) + ("\n" if all_lines else "")


def remove(state_dir: Path, name: str) -> None:
    path = log_path(state_dir, name)
    for p in (path, path.with_name(path.name + ".1")):
        p.unlink(missing_ok=True)
