"""Function records: versions, the live ``$LATEST`` pointer and the newest deploy error.

Everything is persisted to ``<state>/registry.json`` (write temp, fsync, rename) after each
change, so versions, errors and live pointers survive restarts. The record shape sent to other
components is documented in docs/internals.md ("Function record").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..funclog import stamp
from .store import Store

KEEP_VERSIONS = 5

Record = dict[str, Any]


class Registry:
    def __init__(self, path: Path, store: Store, keep_versions: int = KEEP_VERSIONS):
        self.path = path
        self.store = store
        self.keep_versions = keep_versions
        self._functions: dict[str, dict[str, Any]] = {}
        # Version numbers are never reused, even after a delete: a sandbox labelled name@3
        # must never be mistaken for a later, different name@3.
        self._next_version: dict[str, int] = {}

    def load(self) -> None:
        """Read ``registry.json``; a corrupt file stops the service rather than losing state."""
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (ValueError, OSError) as e:
            raise ConfigError(f"{self.path}: cannot read the function registry: {e}") from e
        self._functions = data.get("functions", {})
        self._next_version = data.get("next_version", {})

    def names(self) -> set[str]:
        return set(self._functions)

    def live_sha(self, name: str) -> str | None:
        fn = self._functions.get(name)
        if fn is None or fn["version"] is None:
            return None
        return str(fn["versions"][str(fn["version"])]["code_sha256"])

    def error(self, name: str) -> dict[str, Any] | None:
        fn = self._functions.get(name)
        return None if fn is None else fn["error"]

    def next_version(self, name: str) -> int:
        return self._next_version.get(name, 1)

    def referenced(self) -> set[str]:
        """Every snapshot hash some kept version still points at."""
        return {v["code_sha256"] for fn in self._functions.values()
                for v in fn["versions"].values()}

    def add_version(self, name: str, config: dict[str, Any], sha256: str, size: int) -> Record:
        """A new version from a validated snapshot; ``$LATEST`` moves to it, the error clears."""
        fn = self._function(name)
        number = self.next_version(name)
        self._next_version[name] = number + 1
        fn["versions"][str(number)] = {"version": number, "config": config,
                                       "code_sha256": sha256, "code_size": size,
                                       "last_modified": stamp()}
        for old in sorted(fn["versions"], key=int)[:-self.keep_versions]:
            del fn["versions"][old]
        fn["version"] = number
        fn["error"] = None
        self.save()
        return self.record(name)

    def set_error(self, name: str, error: dict[str, Any] | None) -> Record:
        self._function(name)["error"] = error
        self.save()
        return self.record(name)

    def remove(self, name: str) -> bool:
        if self._functions.pop(name, None) is None:
            return False
        self.save()
        return True

    def record(self, name: str) -> Record:
        """The function's record as every component sees it (raises ``KeyError`` if unknown)."""
        fn = self._functions[name]
        versions = {key: self._version(v) for key, v in fn["versions"].items()}
        live = versions.get(str(fn["version"])) if fn["version"] is not None else None
        empty = {"config": None, "code": None, "code_sha256": None, "code_size": None,
                 "last_modified": None}
        return {"name": name, "version": fn["version"],
                "state": "active" if live else "failed",
                **{key: (live or empty)[key] for key in empty},
                "versions": versions, "error": fn["error"]}

    def records(self) -> list[Record]:
        return [self.record(name) for name in sorted(self._functions)]

    def save(self) -> None:
        data = {"functions": self._functions, "next_version": self._next_version}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _function(self, name: str) -> dict[str, Any]:
        return self._functions.setdefault(name, {"version": None, "versions": {}, "error": None})

    def _version(self, v: dict[str, Any]) -> dict[str, Any]:
        return {**v, "code": str(self.store.path(v["code_sha256"]))}
