"""A timed-step logger in the style of mkosi: each step says what it does and how long it took."""

import contextlib
import logging
import time
from collections.abc import Iterator

log = logging.getLogger("easyfaas.image")


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Log ``title`` on entry and the elapsed seconds on exit (or on failure)."""
    log.info("‣ %s", title)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        log.error("✗ %s failed after %.1fs", title, time.monotonic() - start)
        raise
    log.info("✓ %s (%.1fs)", title, time.monotonic() - start)
