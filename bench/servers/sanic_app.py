"""Bare sanic baseline: the handlers called in-process, one worker, no access log.

    python sanic_app.py PORT      (bench/handlers must be on PYTHONPATH)
"""

import sys

import hello
import primes
from sanic import Sanic, json
from sanic.request import Request
from sanic.response import HTTPResponse

HANDLERS = {"hello": hello.handler, "primes": primes.handler}

app = Sanic("bench_sanic")


@app.route("/<name>", methods=["GET", "POST"])
async def call(request: Request, name: str) -> HTTPResponse:
    event = request.json if request.body else {}
    return json(HANDLERS[name](event, None))


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False,
            motd=False)
