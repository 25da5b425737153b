"""Readiness and liveness for the service manager (systemd, or ``easyfaas up``).

Both speak the sd_notify protocol over ``$NOTIFY_SOCKET``; without it these calls do nothing, so a
component started by hand just runs.
"""

from __future__ import annotations

import asyncio
import os

from systemd import daemon


def ready(status: str = "") -> None:
    """Say the component serves (only call once it really does)."""
    if os.environ.get("NOTIFY_SOCKET"):
        daemon.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> None:
    if os.environ.get("NOTIFY_SOCKET"):
        daemon.notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` (systemd's advice), or
    None when the service manager wants no pings from this process (sd_watchdog_enabled rules)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. the parent that exec'd us)
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


async def watchdog() -> None:
    """Ping the watchdog from the event loop until cancelled; returns at once if none is armed.

    Deliberately a coroutine and not a thread: a blocked or stuck loop stops the pings, so the
    service manager kills and restarts a component that no longer serves.
    """
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        daemon.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
