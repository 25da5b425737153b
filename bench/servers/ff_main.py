"""functions-framework baseline: one HTTP function per handler.

    functions-framework --source ff_main.py --target hello --port PORT
"""

import flask
import hello as _hello
import primes as _primes


def hello(request: flask.Request) -> dict:
    return _hello.handler(request.get_json(silent=True) or {}, None)


def primes(request: flask.Request) -> dict:
    return _primes.handler(request.get_json(silent=True) or {}, None)
