"""A stand-in component for supervisor tests, run as ``python -m _supervisor_helpers FLAGS``.

It appends ``start PID ARGV`` / ``stop PID`` to ``$FAKE_LOG``, says READY=1 like a real component
(unless ``$FAKE_MODE`` is ``exit``: then it dies before that) and runs until SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys

from easyfaas import notify


def record(line: str) -> None:
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(line + "\n")


def main() -> int:
    record(f"start {os.getpid()} {' '.join(sys.argv[1:])}")
    if os.environ.get("FAKE_MODE") == "exit":
        return 3
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    notify.ready()
    signal.sigwait({signal.SIGTERM})
    record(f"stop {os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
