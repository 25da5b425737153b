"""Run the controller service alone in this process (for tests that kill it):
``python _controller_proc.py '<config overrides as JSON>'``; SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from easyfaas import config
from easyfaas.controller import service


async def main(overrides: dict) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await service.run(config.load([], overrides), stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(json.loads(sys.argv[1])))
