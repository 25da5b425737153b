"""Safe extraction of uploaded zip bundles.

Everything a zip can lie about is checked before or while writing: names (``..``, absolute,
duplicates), entry types (symlinks, devices, fifos), entry count, declared and actual sizes (zip
bombs). Any rejection removes the temp dir, so nothing is left anywhere.
"""

from __future__ import annotations

import io
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import InvalidParameter
from .store import MAX_BUNDLE_BYTES, MAX_BUNDLE_FILES

_CHUNK = 1024 * 1024
_UNIX = 3  # ZipInfo.create_system of zips made on Unix: external_attr carries st_mode


def extract_to_temp(data: bytes, parent: Path) -> Path:
    """Extract ``data`` into a new dot-prefixed dir in ``parent`` (hidden from the watcher)."""
    tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=parent))
    try:
        _extract(data, tmp)
    except InvalidParameter:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError,
            OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InvalidParameter(f"Code: cannot extract the zip file: {e}") from e
    return tmp


def _extract(data: bytes, dest: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_BUNDLE_FILES:
            raise InvalidParameter(f"Code: zip has {len(infos)} entries, "
                                   f"more than the limit of {MAX_BUNDLE_FILES}")
        declared = sum(info.file_size for info in infos)
        if declared > MAX_BUNDLE_BYTES:
            raise _too_big()
        names: list[str] = []
        names_seen: set[str] = set()
        for info in infos:
            name = _check_entry(info)
            if name in names_seen:
                raise InvalidParameter(f"Code: zip entry '{name}' appears more than once")
            names_seen.add(name)
            names.append(name)
        total = 0
        for info, name in zip(infos, names, strict=True):
            total += _write_entry(zf, info, dest / name, MAX_BUNDLE_BYTES - total)
    for directory in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)


def _check_entry(info: zipfile.ZipInfo) -> str:
    """The entry's safe relative name; raises for anything that could escape or is not a plain
    file or directory."""
    raw = info.filename
    path = PurePosixPath(raw)
    if not raw or "\\" in raw or "\0" in raw or path.is_absolute() or ".." in path.parts:
        raise InvalidParameter(f"Code: zip entry '{raw}' has an unsafe path")
    if info.create_system == _UNIX:
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise InvalidParameter(f"Code: zip entry '{raw}' is a symlink; symlinks are not "
                                   "allowed in uploads")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise InvalidParameter(f"Code: zip entry '{raw}' is not a regular file or directory")
    return path.as_posix()


def _write_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    # The declared size may lie: stop at whichever of it and the remaining budget is smaller.
    limit = min(info.file_size, budget)
    with zf.open(info) as src, target.open("xb") as dst:
        while chunk := src.read(min(_CHUNK, limit - size + 1)):
            size += len(chunk)
            if size > limit:
                raise _too_big() if size > budget else InvalidParameter(
                    f"Code: zip entry '{info.filename}' is larger than it declares")
            dst.write(chunk)
    executable = info.create_system == _UNIX and (info.external_attr >> 16) & 0o111
    target.chmod(0o755 if executable else 0o644)
    return size


def _too_big() -> InvalidParameter:
    return InvalidParameter(f"Code: bundle is larger than {MAX_BUNDLE_BYTES // 2**20} MiB "
                            "uncompressed")
