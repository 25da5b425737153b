"""Watch the code dir with inotify (pyinotify on the asyncio loop) and report changed functions.

Every event is mapped to its top-level directory name (the function), debounced per name — a
little quiet time lets a ``cp -r`` or rsync finish, a cap keeps a busy writer from starving the
deploy — and then handed to ``on_change(name)``, which re-reads that whole directory. A kernel
queue overflow loses events, so it triggers ``on_overflow()`` (a full rescan).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pyinotify

from .store import excluded

log = logging.getLogger("easyfaas.stubs")

QUIET_S = 0.05
MAX_DELAY_S = 0.3
# IN_MOVE_SELF is needed even though it says nothing new: pyinotify uses it to update the paths
# of the watches inside a renamed directory.
MASK = (pyinotify.IN_CREATE | pyinotify.IN_DELETE | pyinotify.IN_MODIFY | pyinotify.IN_ATTRIB
        | pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_FROM | pyinotify.IN_MOVED_TO
        | pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF)


class Debouncer:
    """Call ``fire(key)`` once ``quiet`` seconds pass without a ``poke(key)``, but no later than
    ``max_delay`` after the first poke."""

    def __init__(self, fire: Callable[[str], None], quiet: float = QUIET_S,
                 max_delay: float = MAX_DELAY_S):
        self.fire = fire
        self.quiet = quiet
        self.max_delay = max_delay
        self._pending: dict[str, tuple[float, asyncio.TimerHandle]] = {}

    def poke(self, key: str) -> None:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        first = now
        if key in self._pending:
            first, handle = self._pending[key]
            handle.cancel()
        delay = min(self.quiet, first + self.max_delay - now)
        self._pending[key] = (first, loop.call_later(max(delay, 0.0), self._fire, key))

    def cancel(self) -> None:
        for _, handle in self._pending.values():
            handle.cancel()
        self._pending.clear()

    def _fire(self, key: str) -> None:
        del self._pending[key]
        self.fire(key)


class _Events(pyinotify.ProcessEvent):  # type: ignore[misc]
    def my_init(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def process_IN_Q_OVERFLOW(self, event: pyinotify.Event) -> None:
        self.watcher.overflowed()

    def process_default(self, event: pyinotify.Event) -> None:
        self.watcher.event(event)


class Watcher:
    def __init__(self, root: Path, on_change: Callable[[str], None],
                 on_overflow: Callable[[], None]):
        self.root = root
        self.on_overflow = on_overflow
        self.debouncer = Debouncer(on_change)
        # pyinotify logs an ERROR whenever a watched directory moves out of the tree; here that
        # is an ordinary user action (``mv fn /elsewhere``), handled in ``event``.
        logging.getLogger("pyinotify").setLevel(logging.CRITICAL)
        self._wm = pyinotify.WatchManager()
        self._notifier = pyinotify.Notifier(self._wm, _Events(watcher=self))
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Watch the whole tree (new dirs are added as they appear); raises if it cannot."""
        self._wm.add_watch(str(self.root), MASK, rec=True, auto_add=True, quiet=False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._wm.get_fd(), self._read)
        log.info("watching %s", self.root)

    def stop(self) -> None:
        self.debouncer.cancel()
        if self._loop is not None:
            self._loop.remove_reader(self._wm.get_fd())
        self._notifier.stop()

    def _read(self) -> None:
        self._notifier.read_events()
        self._notifier.process_events()

    def overflowed(self) -> None:
        log.warning("inotify queue overflowed in %s; rescanning every function", self.root)
        self.on_overflow()

    def event(self, event: pyinotify.Event) -> None:
        if event.mask & pyinotify.IN_IGNORED:
            return
        path = Path(event.pathname)
        if "-unknown-path" in event.path or not path.is_relative_to(self.root):
            # pyinotify marks a directory moved out of the tree so; its watch is of no use now.
            self._wm.rm_watch(event.wd, quiet=True)
            return
        parts = path.relative_to(self.root).parts
        if parts and not any(excluded(part) for part in parts):
            self.debouncer.poke(parts[0])
