"""The python3 runner's record of the answers it kept back, as the controller reads it: in
order, up to a torn or stale entry, and only from a plain file."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from _runtime_helpers import PYTHON_RUNNER, load_module

from easyfaas import wire
from easyfaas.controller.kept import KeptAnswers, parse

runner = load_module(PYTHON_RUNNER, "easyfaas_runner_under_test")


def _frame(rid: int, body: bytes = b"{}") -> bytes:
    return wire.encode({"ok": True, "id": rid}, body)


def _ids(path: Path) -> list[int]:
    kept = KeptAnswers.open(str(path))
    assert kept is not None
    try:
        return [header["id"] for header, _ in kept.read()]
    finally:
        kept.close()


def test_answers_read_back_in_order_until_a_torn_or_stale_entry(tmp_path: Path) -> None:
    sock = tmp_path / "runner.sock"
    record = runner.KeptRecord(str(sock) + ".kept")
    assert record.add(_frame(1, b"x" * 100)) and record.add(_frame(2))
    assert _ids(sock) == [1, 2]
    assert oct(os.stat(str(sock) + ".kept").st_mode & 0o777) == "0o640"
    # Sent, rewound, one shorter answer kept: what follows it is left from before.
    record.rewind()
    assert record.add(_frame(3))
    assert _ids(sock) == [3]
    # The runner died writing the second entry.
    assert record.add(_frame(4, b"y" * 50))
    data = (tmp_path / "runner.sock.kept").read_bytes()
    assert [h["id"] for h, _ in parse(data)] == [3, 4]
    end = 2 * 8 + len(_frame(3)) + len(_frame(4, b"y" * 50))
    assert [h["id"] for h, _ in parse(data[:end - 10])] == [3]
    assert parse(b"\0" * 64) == []


def test_the_record_is_bounded(tmp_path: Path) -> None:
    record = runner.KeptRecord(str(tmp_path / "runner.sock.kept"))
    assert not record.add(_frame(1, b"z" * runner.RECORD_MAX))  # sent at once instead
    assert record.add(_frame(1))


def test_only_a_plain_file_is_opened(tmp_path: Path) -> None:
    assert KeptAnswers.open(str(tmp_path / "none.sock")) is None
    (tmp_path / "secret").write_bytes(_frame(1))
    (tmp_path / "link.sock.kept").symlink_to(tmp_path / "secret")
    assert KeptAnswers.open(str(tmp_path / "link.sock")) is None
    os.mkfifo(tmp_path / "fifo.sock.kept")
    assert KeptAnswers.open(str(tmp_path / "fifo.sock")) is None
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "s.sock.kept"))
        assert KeptAnswers.open(str(tmp_path / "s.sock")) is None
