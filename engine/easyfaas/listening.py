"""A component's listening TCP socket and its published address (no HTTP stack imported)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .config import parse_listen


def bind(listen: str) -> socket.socket:
    """Bind ``HOST:PORT`` (port 0 picks a free one) and start listening."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def write_addr(path: Path, addr: str) -> None:
    """Publish the bound address for the CLI and tests, atomically: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(addr + "\n")
    os.replace(tmp, path)


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
