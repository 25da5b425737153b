"""The deploy pipeline: code dir entry → snapshot → static checks → sandbox load → new version.

``ingest(name)`` re-reads the whole ``<code_dir>/<name>`` and makes the registry agree with it:
a new version if the content changed and is valid, the error on the record if it is not (the live
version keeps serving), or no function at all if the directory is gone. Ingests of one name are
serialised; different names proceed independently.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import funclog
from ..config import Config
from ..errors import ManifestError
from . import manifest
from .registry import Record, Registry
from .store import Store

log = logging.getLogger("easyfaas.stubs")

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0

# (name, config, snapshot path, version it would become) -> None, or ManifestError
Validator = Callable[[str, manifest.FunctionConfig, Path, int], Awaitable[None]]
Notify = Callable[[dict[str, Any]], None]


class FuncletUnavailable(Exception):
    """The sandbox check could not run (not the bundle's fault): retry later, promote nothing."""


class Pipeline:
    def __init__(self, cfg: Config, registry: Registry, store: Store, validator: Validator,
                 notify: Notify):
        self.cfg = cfg
        self.registry = registry
        self.store = store
        self.validator = validator
        self.notify = notify
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Committed snapshots not yet in the registry, counted: two functions may be validating
        # the same content at once.
        self._inflight: Counter[str] = Counter()
        self._ignored: set[str] = set()
        self._backoff: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks[name]

    async def rescan(self) -> None:
        """Ingest every function in the code dir and every one the registry knows about."""
        on_disk = {p.name for p in self.cfg.code_dir.iterdir() if not p.name.startswith(".")}
        for name in sorted(on_disk | self.registry.names()):
            await self.ingest(name)

    async def ingest(self, name: str) -> None:
        if not NAME.match(name):
            if name not in self._ignored:
                self._ignored.add(name)
                log.warning("ignoring %s in the code dir: function names must match %s",
                            self.cfg.code_dir / name, NAME.pattern)
            return
        async with self._locks[name]:
            self._cancel_retry(name)
            bundle = self.cfg.code_dir / name
            if not bundle.is_dir() or bundle.is_symlink():
                self._remove(name, bundle)
                return
            self._ignored.discard(name)
            try:
                await self.deploy(name, bundle)
            except ManifestError as e:
                self.reject(name, e)
            except OSError as e:
                # Unreadable files, or the directory changed under the copy; in the latter case
                # the watcher's next event ingests again.
                self.reject(name, ManifestError(f"cannot read the bundle: {e}", file=None))
            except FuncletUnavailable as e:
                self._retry_later(name, e)

    async def deploy(self, name: str, bundle: Path,
                     install: Callable[[], None] | None = None) -> Record:
        """Snapshot and check ``bundle``; if it is new and valid, call ``install`` (puts it in
        the code dir, for uploads) and make it ``$LATEST``. Caller holds ``lock(name)``."""
        staged = await asyncio.to_thread(self.store.stage, bundle)
        try:
            config = await asyncio.to_thread(manifest.load, staged.path)
        except BaseException:
            self.store.discard(staged)
            raise
        if staged.sha256 == self.registry.live_sha(name):
            self.store.discard(staged)
            if install:
                install()
            return self._clear_error(name)
        code = self.store.commit(staged)
        self._inflight[staged.sha256] += 1
        try:
            await self.validator(name, config, code, self.registry.next_version(name))
            if install:
                install()
            record = self.registry.add_version(name, config, staged.sha256, staged.size)
        finally:
            self._inflight[staged.sha256] -= 1
            if not self._inflight[staged.sha256]:
                del self._inflight[staged.sha256]
            self._gc()
        self._backoff.pop(name, None)
        log.info("deployed fn=%s ver=%s sha256=%s", name, record["version"], staged.sha256[:12])
        self.notify({"event": "update", "function": record})
        return record

    def reject(self, name: str, e: ManifestError) -> None:
        """Put the error on the record (the live version keeps serving); log it once."""
        self._backoff.pop(name, None)
        old = self.registry.error(name)
        message, file = str(e), e.detail.get("file")
        if old and old["message"] == message and old["file"] == file:
            return
        error = {"message": message, "file": file, "key": e.detail.get("key"),
                 "at": funclog.stamp()}
        log.warning("fn=%s bundle rejected, live version unchanged: %s", name, message)
        funclog.append(self.cfg.state_dir, name, f"{error['at']} DEPLOY ERROR {message}")
        self.notify({"event": "update", "function": self.registry.set_error(name, error)})

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _clear_error(self, name: str) -> Record:
        if self.registry.error(name) is None:
            return self.registry.record(name)
        log.info("fn=%s bundle is back to the live version; error cleared", name)
        record = self.registry.set_error(name, None)
        self.notify({"event": "update", "function": record})
        return record

    def _remove(self, name: str, bundle: Path) -> None:
        if bundle.exists() and name not in self._ignored:
            self._ignored.add(name)
            log.warning("ignoring %s: a function must be a directory (not a file or symlink)",
                        bundle)
        if self.registry.remove(name):
            log.info("removed fn=%s", name)
            self.notify({"event": "delete", "name": name})
            self._gc()

    def _gc(self) -> None:
        # Runs on the loop thread: a concurrent commit cannot slip in between computing the
        # referenced set and deleting.
        self.store.gc(self.registry.referenced() | set(self._inflight))

    def _retry_later(self, name: str, e: FuncletUnavailable) -> None:
        delay = self._backoff.get(name, RETRY_FIRST_S)
        self._backoff[name] = min(delay * 2, RETRY_MAX_S)
        level = logging.WARNING if delay == RETRY_FIRST_S else logging.DEBUG
        log.log(level, "fn=%s not promoted: cannot validate in a sandbox (%s); retry in %.1fs",
                name, e, delay)
        self._timers[name] = asyncio.get_running_loop().call_later(delay, self.schedule, name)

    def _cancel_retry(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def schedule(self, name: str) -> None:
        """Ingest ``name`` in the background (the watcher's and the retry timer's entry)."""
        self._timers.pop(name, None)
        task = asyncio.create_task(self.ingest(name))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(name, done))

    def _finished(self, name: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("fn=%s ingest failed unexpectedly", name, exc_info=task.exception())
