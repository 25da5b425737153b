"""Fork-per-request baseline: a sanic front that runs every call in a new ``python3`` process.

    python fork_app.py PORT PYTHON3   (bench/handlers must be on PYTHONPATH)
"""

import asyncio
import os
import sys

from sanic import Sanic, text
from sanic.request import Request
from sanic.response import HTTPResponse

CALL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fork_call.py")

app = Sanic("bench_fork")


@app.route("/<name>", methods=["GET", "POST"])
async def call(request: Request, name: str) -> HTTPResponse:
    proc = await asyncio.create_subprocess_exec(
        app.config.PYTHON3, CALL, name, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await proc.communicate(request.body or b"{}")
    except asyncio.CancelledError:
        # The client hung up (the load generator's run ended): the process must not go on
        # using the CPU into the next system's measurement.
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        return text(f"{name} exited with {proc.returncode}", status=500)
    return text(out.decode(), content_type="application/json")


if __name__ == "__main__":
    app.config.PYTHON3 = sys.argv[2]
    app.run(host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False,
            motd=False)
