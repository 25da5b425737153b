"""Logging for a component process: one stderr handler, time + component + level per line.

The level is INFO unless ``$EASYFAAS_LOG_LEVEL`` says otherwise (``DEBUG``, ``WARNING``, ...).
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def setup(component: str) -> None:
    """Configure the root logger for ``easyfaas serve <component>`` (or the supervisor)."""
    level_name = os.environ.get("EASYFAAS_LOG_LEVEL", "INFO").upper()
    level = logging.getLevelName(level_name)
    bad_level = not isinstance(level, int)
    if bad_level:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter (sanic's own access/error loggers) only from WARNING up.
    for noisy in ("sanic", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if bad_level:
        logging.getLogger("easyfaas").warning(
            "%s: EASYFAAS_LOG_LEVEL=%s is not a log level; using INFO", component, level_name
        )
