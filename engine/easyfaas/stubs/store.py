"""The content-addressed snapshot store: ``<store>/<sha256>/`` holds one immutable copy of a bundle.

A snapshot is first copied into ``<store>/.tmp-*`` (hashing as it goes) and then renamed to its
hash, so a half-written snapshot never has a real name and sandboxes never see a half-copied
directory. The hash covers the sorted relative paths, each file's executable bit and content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ManifestError

log = logging.getLogger("easyfaas.stubs")

MAX_BUNDLE_BYTES = 256 * 1024 * 1024
MAX_BUNDLE_FILES = 10_000
_CHUNK = 1024 * 1024


def excluded(name: str) -> bool:
    """Editor/rsync temp files, hidden files and bytecode caches are never part of a bundle."""
    return name.startswith(".") or name == "__pycache__"


@dataclass(frozen=True)
class Staged:
    """A fully copied snapshot waiting in its temp dir for ``commit``."""

    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class _Entry:
    rel: str
    source: Path
    executable: bool


class Store:
    def __init__(self, root: Path):
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def stage(self, bundle: Path) -> Staged:
        """Copy ``bundle`` into a temp dir of the store; raises ``ManifestError`` if it cannot
        be a bundle (symlink out of it, special file, too big, too many files)."""
        entries = _scan(bundle)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            digest, size = _copy(entries, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Staged(tmp, digest, size)

    def commit(self, staged: Staged) -> Path:
        """Give a staged snapshot its final name (reusing an identical existing one)."""
        final = self.path(staged.sha256)
        if final.is_dir():
            self.discard(staged)
            return final
        os.rename(staged.path, final)
        _fsync_dir(self.root)
        return final

    def discard(self, staged: Staged) -> None:
        shutil.rmtree(staged.path, ignore_errors=True)

    def clean_tmp(self) -> None:
        """Remove temp dirs left by a crash (only safe before any staging starts)."""
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def gc(self, keep: set[str]) -> None:
        """Remove every snapshot whose hash is not in ``keep``."""
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or entry.name in keep:
                continue
            log.info("removing unreferenced snapshot sha256=%s", entry.name)
            shutil.rmtree(entry, ignore_errors=True)


def _scan(bundle: Path) -> list[_Entry]:
    root = bundle.resolve()
    entries: list[_Entry] = []
    for dirpath, dirnames, filenames in os.walk(bundle):
        dirnames[:] = [d for d in dirnames if not excluded(d)]
        here = Path(dirpath)
        # os.walk lists symlinks to directories as dirs without following them.
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            if excluded(name):
                continue
            path = here / name
            rel = path.relative_to(bundle).as_posix()
            entries.append(_entry(path, rel, root))
            if len(entries) > MAX_BUNDLE_FILES:
                raise ManifestError(f"bundle has more than {MAX_BUNDLE_FILES} files")
    return sorted(entries, key=lambda e: e.rel)


def _entry(path: Path, rel: str, root: Path) -> _Entry:
    source = path
    if path.is_symlink():
        source = path.resolve()
        if not source.is_relative_to(root):
            raise ManifestError(f"{rel}: symlink points outside the bundle "
                                f"(to {os.readlink(path)}); copy the file instead", file=rel)
        if source.is_dir():
            raise ManifestError(f"{rel}: symlinks to directories are not supported", file=rel)
    if not source.is_file():
        raise ManifestError(f"{rel}: not a regular file (or a dangling symlink)", file=rel)
    return _Entry(rel, source, bool(source.stat().st_mode & 0o111))


def _copy(entries: list[_Entry], dest: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    for entry in entries:
        target = dest / entry.rel
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        file_hash, size = _copy_file(entry.source, target, MAX_BUNDLE_BYTES - total)
        total += size
        target.chmod(0o755 if entry.executable else 0o644)
        mark = b"x" if entry.executable else b"-"
        digest.update(entry.rel.encode() + b"\0" + mark + b"\0" + file_hash + b"\n")
    # mkdir's mode is masked by the umask (and ignored for parents): sandboxes run as another
    # uid and must be able to read the snapshot, so set modes explicitly.
    for directory in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)
    _fsync_dir(dest)
    return digest.hexdigest(), total


def _copy_file(source: Path, target: Path, budget: int) -> tuple[bytes, int]:
    """Copy one file, hashing it; fails once the bundle's size budget is used up (the file may
    grow while it is copied, so the check is on bytes actually read)."""
    file_hash = hashlib.sha256()
    size = 0
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            if size > budget:
                raise ManifestError(f"bundle is larger than {MAX_BUNDLE_BYTES // 2**20} MiB")
            file_hash.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return file_hash.digest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
