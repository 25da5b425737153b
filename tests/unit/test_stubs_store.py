"""Snapshot hashing and immutability, versions, GC and registry persistence."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from easyfaas.errors import ConfigError, ManifestError
from easyfaas.stubs import store as store_mod
from easyfaas.stubs.registry import Registry
from easyfaas.stubs.store import Store

CONFIG = {"runtime": "python3", "handler": "index.handler"}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    (tmp_path / "store").mkdir()
    return Store(tmp_path / "store")


def write_bundle(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def snapshot(store: Store, bundle: Path) -> tuple[str, Path]:
    staged = store.stage(bundle)
    return staged.sha256, store.commit(staged)


def test_same_content_same_hash_and_excludes(store: Store, tmp_path: Path) -> None:
    a = write_bundle(tmp_path / "a", {"index.py": "x", "lib/m.py": "y"})
    b = write_bundle(tmp_path / "b", {"index.py": "x", "lib/m.py": "y", ".index.py.swp": "z",
                                      "__pycache__/m.pyc": "c", ".git/HEAD": "h"})
    sha_a, path_a = snapshot(store, a)
    sha_b, path_b = snapshot(store, b)
    assert sha_a == sha_b and path_a == path_b == store.path(sha_a)
    assert sorted(p.relative_to(path_a).as_posix() for p in path_a.rglob("*")) == [
        "index.py", "lib", "lib/m.py"]
    assert [p.name for p in store.root.iterdir()] == [sha_a]  # no temp dirs left


def test_hash_covers_content_names_and_exec_bit(store: Store, tmp_path: Path) -> None:
    base = write_bundle(tmp_path / "a", {"index.py": "x"})
    sha1 = store.stage(base).sha256
    (base / "index.py").write_text("y")
    sha2 = store.stage(base).sha256
    (base / "index.py").chmod(0o755)
    sha3 = store.stage(base).sha256
    os.rename(base / "index.py", base / "other.py")
    sha4 = store.stage(base).sha256
    assert len({sha1, sha2, sha3, sha4}) == 4


def test_snapshot_modes_and_independence(store: Store, tmp_path: Path) -> None:
    src = write_bundle(tmp_path / "a", {"index.py": "x", "bin/tool": "t"})
    (src / "bin/tool").chmod(0o700)
    (src / "index.py").chmod(0o600)
    sha, path = snapshot(store, src)
    assert stat.S_IMODE((path / "bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((path / "index.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((path / "bin").stat().st_mode) == 0o755
    (src / "index.py").write_text("changed")
    assert (path / "index.py").read_text() == "x"


def test_symlinks(store: Store, tmp_path: Path) -> None:
    src = write_bundle(tmp_path / "a", {"index.py": "x"})
    (src / "alias.py").symlink_to("index.py")
    sha, path = snapshot(store, src)
    assert (path / "alias.py").read_text() == "x" and not (path / "alias.py").is_symlink()
    (tmp_path / "secret").write_text("s")
    (src / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(ManifestError, match="leak: symlink points outside the bundle") as info:
        store.stage(src)
    assert info.value.detail["file"] == "leak"
    assert [p.name for p in store.root.iterdir()] == [sha]


def test_limits(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_bundle(tmp_path / "a", {f"f{i}": "0123456789" for i in range(5)})
    monkeypatch.setattr(store_mod, "MAX_BUNDLE_FILES", 4)
    with pytest.raises(ManifestError, match="more than 4 files"):
        store.stage(src)
    monkeypatch.setattr(store_mod, "MAX_BUNDLE_FILES", 10)
    monkeypatch.setattr(store_mod, "MAX_BUNDLE_BYTES", 45)
    with pytest.raises(ManifestError, match="bundle is larger than"):
        store.stage(src)
    assert list(store.root.iterdir()) == []


def test_gc_keeps_referenced(store: Store, tmp_path: Path) -> None:
    sha1, _ = snapshot(store, write_bundle(tmp_path / "a", {"index.py": "1"}))
    sha2, _ = snapshot(store, write_bundle(tmp_path / "b", {"index.py": "2"}))
    store.gc({sha2})
    assert [p.name for p in store.root.iterdir()] == [sha2]


def test_registry_versions_persist_and_prune(store: Store, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.json", store, keep_versions=3)
    for i in range(5):
        record = reg.add_version("fn", CONFIG, f"sha{i}", 10 + i)
    assert record["version"] == 5 and record["state"] == "active"
    assert sorted(record["versions"], key=int) == ["3", "4", "5"]
    assert record["code"] == str(store.path("sha4")) and record["code_size"] == 14
    assert reg.referenced() == {"sha2", "sha3", "sha4"}
    reg.set_error("fn", {"message": "bad", "file": "function.toml", "key": None, "at": "t"})

    again = Registry(tmp_path / "registry.json", store, keep_versions=3)
    again.load()
    assert again.record("fn") == reg.record("fn")
    assert again.record("fn")["error"]["message"] == "bad"


def test_version_numbers_survive_delete(store: Store, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.json", store)
    reg.add_version("fn", CONFIG, "a", 1)
    assert reg.remove("fn") and not reg.remove("fn")
    assert reg.add_version("fn", CONFIG, "b", 1)["version"] == 2


def test_failed_record_and_corrupt_file(store: Store, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.json", store)
    record = reg.set_error("fn", {"message": "m", "file": None, "key": None, "at": "t"})
    assert record["state"] == "failed" and record["version"] is None and record["code"] is None
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(ConfigError, match="registry.json"):
        Registry(tmp_path / "registry.json", store).load()
