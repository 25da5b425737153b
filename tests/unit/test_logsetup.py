"""Component logging: plain stderr lines by hand, journald with structured fields under systemd."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import pytest
from systemd import journal

from easyfaas import logsetup


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("easyfaas.controller", logging.INFO, __file__, 1, msg, args, None)


def test_filter_lifts_ids_into_journal_fields() -> None:
    rec = record("fn=%s ver=%s sb=%s inv=%s timed out", "hello", 3, "sb-0a1b2c", "r-42")
    assert logsetup.FieldFilter().filter(rec)
    assert (rec.FUNCTION, rec.SANDBOX, rec.INVOCATION_ID) == ("hello", "sb-0a1b2c", "r-42")


def test_filter_keeps_the_first_of_repeated_ids_and_ignores_lookalikes() -> None:
    rec = record("route /a claimed by fn=one and fn=two; xfn=nope, fn=three wins")
    logsetup.FieldFilter().filter(rec)
    assert rec.FUNCTION == "one"
    assert not hasattr(rec, "SANDBOX") and not hasattr(rec, "INVOCATION_ID")


def test_filter_stops_ids_at_punctuation() -> None:
    rec = record("cannot write the function log fn=hello: disk full")
    logsetup.FieldFilter().filter(rec)
    assert rec.FUNCTION == "hello"


def stderr_stream_id() -> str:
    """``device:inode`` of the current stderr: what ``$JOURNAL_STREAM`` holds under systemd."""
    st = os.fstat(sys.stderr.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_plain_stderr_lines_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = logsetup.make_handler("stubs")
    assert type(handler) is logging.StreamHandler and handler.stream is sys.stderr


def test_stderr_redirected_away_from_the_journal_stays_plain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # systemd's stream, but stderr is elsewhere now
    assert type(logsetup.make_handler("stubs")) is logging.StreamHandler


def test_journal_under_systemd_with_identifier_and_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", stderr_stream_id())
    handler = logsetup.make_handler("controller")
    assert isinstance(handler, journal.JournalHandler)
    sent: list[tuple[str, dict[str, Any]]] = []
    # Only the transport (journald's socket, absent here) is replaced.
    handler.send = lambda MESSAGE, **fields: sent.append((MESSAGE, fields))
    logger = logging.getLogger("easyfaas.test-logsetup")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("fn=%s inv=%s timed out", "hello", "r-1")
    finally:
        logger.removeHandler(handler)
    [(message, fields)] = sent
    assert message == "easyfaas.test-logsetup: fn=hello inv=r-1 timed out"
    assert fields["SYSLOG_IDENTIFIER"] == "easyfaas-controller"
    assert (fields["FUNCTION"], fields["INVOCATION_ID"]) == ("hello", "r-1")
    assert fields["PRIORITY"] == str(journal.LOG_WARNING)


def test_setup_installs_exactly_one_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setenv("EASYFAAS_LOG_LEVEL", "debug")
    try:
        logsetup.setup("funclet")
        assert len(root.handlers) == 1 and root.level == logging.DEBUG
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
