"""Safe zip extraction: every malicious zip is rejected and leaves nothing behind."""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from easyfaas.errors import InvalidParameter
from easyfaas.stubs import archive


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # duplicate names are what one test wants
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def unix_entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def with_declared_size(data: bytes, size: int) -> bytes:
    """Rewrite the uncompressed size of the (only) entry in both of its headers."""
    out = bytearray(data)
    local = out.index(b"PK\x03\x04")
    struct.pack_into("<I", out, local + 22, size)
    central = out.index(b"PK\x01\x02")
    struct.pack_into("<I", out, central + 24, size)
    return bytes(out)


def test_good_zip_keeps_exec_bit(tmp_path: Path) -> None:
    data = make_zip([("index.py", b"x = 1\n"), (unix_entry("bin/run", 0o100755), b"#!/bin/sh\n"),
                     ("lib/", b"")])
    out = archive.extract_to_temp(data, tmp_path)
    assert out.parent == tmp_path and out.name.startswith(".upload-")
    assert (out / "index.py").read_bytes() == b"x = 1\n"
    assert stat.S_IMODE((out / "index.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "bin/run").stat().st_mode) == 0o755
    assert (out / "lib").is_dir()


@pytest.mark.parametrize("data,fragment", [
    (make_zip([("../x", b"evil")]), "unsafe path"),
    (make_zip([("a/../../x", b"evil")]), "unsafe path"),
    (make_zip([("/etc/x", b"evil")]), "unsafe path"),
    (make_zip([("ok.py", b""), (unix_entry("link", 0o120777), b"/etc/passwd")]), "symlink"),
    (make_zip([(unix_entry("dev", 0o020644), b"")]), "not a regular file"),
    (make_zip([(unix_entry("fifo", 0o010644), b"")]), "not a regular file"),
    (make_zip([("a.py", b"1"), ("a.py", b"2")]), "more than once"),
    (with_declared_size(make_zip([("big", b"x")]), 2**31), "larger than 256 MiB"),
    (with_declared_size(make_zip([("liar", b"x" * 5000)]), 10), "cannot extract"),
    (make_zip([(f"f{i}", b"") for i in range(10_001)]), "more than the limit of 10000"),
    (b"not a zip at all", "cannot extract"),
])
def test_rejected_and_nothing_written(tmp_path: Path, data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidParameter, match=fragment):
        archive.extract_to_temp(data, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert not Path("/etc/x").exists()


def test_file_and_dir_with_same_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter):
        archive.extract_to_temp(make_zip([("a", b"file"), ("a/b", b"under")]), tmp_path)
    assert list(tmp_path.iterdir()) == []
