"""Logging for a component process: journald under systemd, else one stderr handler.

Under systemd every record goes to the journal with structured fields lifted from the ids the
components already put in their lines (``fn=… inv=… sb=…`` → ``FUNCTION=``, ``INVOCATION_ID=``,
``SANDBOX=``), so ``journalctl FUNCTION=hello`` finds one function's lines. Elsewhere each line is
time + logger + level + message on stderr.

The level is INFO unless ``$EASYFAAS_LOG_LEVEL`` says otherwise (``DEBUG``, ``WARNING``, ...).
"""

from __future__ import annotations

import logging
import os
import re
import sys

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# Log-line token → journal field. Values end at whitespace or a separator after the id.
FIELDS = {"fn": "FUNCTION", "inv": "INVOCATION_ID", "sb": "SANDBOX"}
_TOKEN = re.compile(r"(?<![\w.-])(fn|inv|sb)=([^\s,;:()]+)")


class FieldFilter(logging.Filter):
    """Copies ``fn=`` / ``inv=`` / ``sb=`` tokens of the message into journal fields on the
    record (the first occurrence of each wins). Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        found: dict[str, str] = {}
        for key, value in _TOKEN.findall(record.getMessage()):
            found.setdefault(FIELDS[key], value)
        for field, value in found.items():
            setattr(record, field, value)
        return True


def journal_stream_is_stderr() -> bool:
    """True when stderr is the journal stream systemd connected (``$JOURNAL_STREAM`` is its
    ``device:inode``): a process whose stderr was redirected elsewhere keeps plain lines."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def make_handler(component: str) -> logging.Handler:
    """The handler for this process: journald (with fields) under systemd, else stderr."""
    if journal_stream_is_stderr():
        # Imported only here: off systemd it would cost every engine process ~2 MiB for nothing.
        from systemd import journal

        handler: logging.Handler = journal.JournalHandler(
            SYSLOG_IDENTIFIER=f"easyfaas-{component}"
        )
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handler.addFilter(FieldFilter())
        return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def setup(component: str) -> None:
    """Configure the root logger for ``easyfaas serve <component>`` (or the supervisor)."""
    level_name = os.environ.get("EASYFAAS_LOG_LEVEL", "INFO").upper()
    level = logging.getLevelName(level_name)
    bad_level = not isinstance(level, int)
    if bad_level:
        level = logging.INFO
    root = logging.getLogger()
    root.handlers[:] = [make_handler(component)]
    root.setLevel(level)
    # Third-party chatter (sanic's own access/error loggers) only from WARNING up.
    for noisy in ("sanic", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if bad_level:
        logging.getLogger("easyfaas").warning(
            "%s: EASYFAAS_LOG_LEVEL=%s is not a log level; using INFO", component, level_name
        )
