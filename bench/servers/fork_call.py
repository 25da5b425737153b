"""One call in a fresh interpreter (CGI / classic watchdog): event JSON on stdin, result on stdout.

    python3 fork_call.py MODULE
"""

import importlib
import json
import sys

module = importlib.import_module(sys.argv[1])
event = json.loads(sys.stdin.read() or "{}")
sys.stdout.write(json.dumps(module.handler(event, None)))
