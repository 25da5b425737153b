"""Engine processes stay lean: every one starts in ``easyfaas.cli``, so what only client
commands or other backends need must not be imported on the way (docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Each check runs in a fresh interpreter: this test process has imported everything already.
SERVE_PATH = "import easyfaas.cli, easyfaas.supervisor, easyfaas.funclet.service"


def _loaded(code: str, modules: list[str]) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {modules!r} if sys.modules.get(m)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    return out.stdout.split()


@pytest.mark.parametrize("module", ["urllib.request", "zipfile", "http.client",
                                    "systemd.journal", "dbus_fast"])
def test_the_serve_path_does_not_import_client_or_other_backend_modules(module: str) -> None:
    assert _loaded(SERVE_PATH, [module]) == []


def test_client_commands_still_import_what_they_use() -> None:
    code = "from pathlib import Path\nfrom easyfaas import cli\n" \
           "cli.zip_dir(Path(cli.__file__).parent / 'funclet' / 'cgroups')"
    assert _loaded(code, ["zipfile"]) == ["zipfile"]


def test_refused_ssl_leaves_asyncio_serving_and_fails_closed() -> None:
    code = """
from easyfaas import cli
cli._refuse_imports(("ssl",))  # before asyncio, as dispatch does it
import asyncio

async def main() -> bytes:
    server = await asyncio.start_server(
        lambda r, w: (w.write(b"ok"), w.close()), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = await reader.read()
    writer.close()
    server.close()
    return data

assert asyncio.run(main()) == b"ok"
try:
    import ssl
except ImportError:
    print("refused")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["refused"]


def test_sanic_runs_its_app_module_without_uvloop() -> None:
    code = "from easyfaas import cli\ncli._refuse_imports(('uvloop',))\n" \
           "import easyfaas.httptrigger.service, sanic.compat\nprint(sanic.compat.UVLOOP_INSTALLED)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False"]
