"""Readiness and liveness for the service manager (systemd, or ``easyfaas up``).

Both speak the sd_notify protocol over ``$NOTIFY_SOCKET``; without it these calls do nothing, so a
component started by hand just runs.
"""

from __future__ import annotations

import os

from systemd import daemon


def ready(status: str = "") -> None:
    """Say the component serves (only call once it really does)."""
    if os.environ.get("NOTIFY_SOCKET"):
        daemon.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> None:
    if os.environ.get("NOTIFY_SOCKET"):
        daemon.notify("STOPPING=1")
