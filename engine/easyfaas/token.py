"""The management bearer token in ``<state>/token`` (0600).

It comes from outside when the device was provisioned with one: the systemd credential
``easyfaas.token`` (``LoadCredential=easyfaas.token`` in the controller's unit; a VM gets it with
``-smbios type=11,value=io.systemd.credential:easyfaas.token=…``). Otherwise one is made on first
start. Either way it lands in the token file, so ``easyfaas token`` prints it.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from pathlib import Path

from .errors import ConfigError

CREDENTIAL = "easyfaas.token"
# It travels in an ``Authorization: Bearer`` header: printable ASCII without spaces, and long
# enough not to be guessable.
_VALID = re.compile(r"[\x21-\x7e]{16,512}")


def provided() -> str | None:
    """The token from ``$CREDENTIALS_DIRECTORY/easyfaas.token``, or None without one.
    A credential that is present but unusable is an error (never silently replaced)."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        value = (Path(directory) / CREDENTIAL).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the credential {CREDENTIAL}: {e.strerror}") from e
    if not _VALID.fullmatch(value):
        raise ConfigError(f"the credential {CREDENTIAL} is not a usable token: it must be "
                          "16 to 512 printable ASCII characters without spaces")
    return value


def ensure(path: Path) -> str:
    """Return the management token: the provided credential (stored into ``path``), else the
    token at ``path``, creating one (atomically, mode 0600) if there is none."""
    given = provided()
    if given is not None:
        if _read_or_none(path) != given:
            os.replace(_write_temp(path, given), path)
        return given
    existing = _read_or_none(path)
    if existing is not None:
        return existing
    tmp = _write_temp(path, secrets.token_urlsafe(32))
    try:
        # link() fails if another process won the race: then its token is the token.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return read(path)


def _read_or_none(path: Path) -> str | None:
    try:
        return read(path)
    except FileNotFoundError:
        return None


def _write_temp(path: Path, value: str) -> Path:
    """``value`` in a fresh, fsynced 0600 file next to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    return tmp


def read(path: Path) -> str:
    return path.read_text().strip()


def matches(expected: str, authorization: str | None) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), expected.encode())
