"""Function logs: the controller's appender keeps files open and still follows rotations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from easyfaas import funclog


def test_appender_writes_what_tail_shows(tmp_path: Path) -> None:
    out = funclog.Appender(tmp_path)
    out.append("f", "one\n")
    out.append("f", "two\n")
    out.append("g", "other\n")
    assert funclog.tail(tmp_path, "f") == "one\ntwo\n"
    assert funclog.tail(tmp_path, "g") == "other\n"
    out.close()


def test_appender_rotates_past_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(funclog, "MAX_BYTES", 100)
    out = funclog.Appender(tmp_path)
    for i in range(30):
        out.append("f", f"record {i:02d}\n")  # 10 bytes each
    path = funclog.log_path(tmp_path, "f")
    assert path.with_name("f.log.1").stat().st_size > 100
    assert path.stat().st_size <= 100
    assert funclog.tail(tmp_path, "f", 3) == "record 27\nrecord 28\nrecord 29\n"
    out.close()


def test_appender_follows_a_rotation_by_another_writer(tmp_path: Path) -> None:
    """Another writer (stubs) rotated the file: within RECHECK_S the appender follows."""
    out = funclog.Appender(tmp_path)
    out.RECHECK_S = 0.0  # check on every append
    out.append("f", "before\n")
    path = funclog.log_path(tmp_path, "f")
    os.replace(path, path.with_name("f.log.1"))
    out.append("f", "after\n")
    assert path.read_text() == "after\n"
    assert path.with_name("f.log.1").read_text() == "before\n"
    out.close()


def test_appender_closes_the_oldest_file_at_its_limit(tmp_path: Path) -> None:
    out = funclog.Appender(tmp_path)
    out.MAX_OPEN = 2
    for name in ("a", "b", "c", "a"):
        out.append(name, f"{name}\n")
    assert len(out._open) == 2
    assert [funclog.tail(tmp_path, n) for n in "abc"] == ["a\na\n", "b\n", "c\n"]
    out.close()
    assert out._open == {}
