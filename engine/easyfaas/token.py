"""The management bearer token: made once, on first start, into ``<state>/token`` (0600)."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path


def ensure(path: Path) -> str:
    """Return the token at ``path``, creating it (atomically, mode 0600) if there is none."""
    try:
        return read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        # link() fails if another process won the race: then its token is the token.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return read(path)


def read(path: Path) -> str:
    return path.read_text().strip()


def matches(expected: str, authorization: str | None) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), expected.encode())
