"""The sandbox check: ask the funclet to load a snapshot's handler in a throwaway sandbox."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..errors import ManifestError
from ..wire import Client, RemoteError
from . import manifest
from .pipeline import FuncletUnavailable

# Loading a handler is a cold start; the function's own timeout bounds the import, this bounds
# everything around it (sandbox setup, a busy funclet).
SETUP_ALLOWANCE_S = 30.0
# Only a failed load is the bundle's fault; anything else (bad request, no capacity) is retried.
_BUNDLE_FAULTS = ("ManifestError",)


class FuncletValidator:
    """A ``pipeline.Validator`` backed by the funclet's ``validate`` op."""

    def __init__(self, socket: Path):
        self.client = Client(str(socket))

    async def __call__(self, name: str, config: manifest.FunctionConfig, code: Path,
                       version: int) -> None:
        try:
            await asyncio.wait_for(
                self.client.call("validate", runtime=config["runtime"], code=str(code),
                                 handler=config["handler"], env=config["env"],
                                 memory=config["memory"], timeout=config["timeout"],
                                 name=name, version=version),
                config["timeout"] + SETUP_ALLOWANCE_S)
        except RemoteError as e:
            if e.error.get("type") not in _BUNDLE_FAULTS:
                raise FuncletUnavailable(f"funclet error: {e}") from e
            raise ManifestError(f"{_handler_file(code, config)}: {e}",
                                file=_handler_file(code, config)) from e
        except (OSError, TimeoutError) as e:
            raise FuncletUnavailable(f"funclet unreachable: {e!r}") from e

    async def close(self) -> None:
        await self.client.close()


def _handler_file(code: Path, config: manifest.FunctionConfig) -> str:
    candidates = manifest.handler_files(config["runtime"], config["handler"])
    return next((c for c in candidates if (code / c).is_file()), candidates[0])
