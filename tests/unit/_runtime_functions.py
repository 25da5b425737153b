"""Function code for the runner conformance tests: the same behaviours in each runtime.

The conformance handler picks its behaviour from ``event["action"]``. ``log`` waits until two
invocations are inside the handler (a rendezvous, not a sleep) so their output really overlaps.
"""

from __future__ import annotations

import os
from pathlib import Path

PYTHON_CONFORMANCE = """
import logging
import os
import threading

_both_inside = threading.Barrier(2, timeout=10)


def handler(event, context):
    action = event.get("action")
    if action is None:
        return {"saw": event}
    if action == "echo":
        return event
    if action == "context":
        return {"request_id": context.request_id, "aws_request_id": context.aws_request_id,
                "function_name": context.function_name,
                "function_version": context.function_version,
                "memory": context.memory_limit_in_mb,
                "remaining": context.get_remaining_time_in_millis()}
    if action == "env":
        return {name: os.environ.get(name) for name in event["names"]}
    if action == "fail":
        raise ValueError("boom")
    if action == "unserialisable":
        return {"x": object()}
    if action == "log":
        print(event["marker"], "before")
        _both_inside.wait()
        print(event["marker"], "after")
        return event["marker"]
    if action == "logging":
        logging.getLogger("fn").warning("via logging")
        return "ok"
    if action == "fd":
        os.system("echo from-a-subprocess; echo to-stderr >&2")
        os.write(1, b"raw-fd-write\\n")
        return "ok"
    if action == "flood":
        for i in range(4000):
            print("line %05d %s" % (i, "x" * 60))
        return "ok"
    raise KeyError(action)
"""

NODE_CONFORMANCE = """
let arrived = 0;
let release;
const bothInside = new Promise((resolve) => { release = resolve; });

exports.handler = async (event, context) => {
  switch (event.action) {
    case undefined: return { saw: event };
    case 'echo': return event;
    case 'context': return {
      request_id: context.requestId, aws_request_id: context.awsRequestId,
      function_name: context.functionName, function_version: context.functionVersion,
      memory: context.memoryLimitInMB, remaining: context.getRemainingTimeInMillis(),
    };
    case 'env': return Object.fromEntries(event.names.map((n) => [n, process.env[n] ?? null]));
    case 'fail': throw new ValueError('boom');
    case 'unserialisable': { const x = {}; x.self = x; return x; }
    case 'log':
      console.log(event.marker, 'before');
      if (++arrived === 2) release();
      await bothInside;
      process.stdout.write(event.marker + ' after\\n');
      return event.marker;
    case 'flood':
      for (let i = 0; i < 4000; i++) {
        console.log('line ' + String(i).padStart(5, '0') + ' ' + 'x'.repeat(60));
      }
      return 'ok';
    default: throw new Error('unknown action ' + event.action);
  }
};

class ValueError extends Error {
  constructor(message) { super(message); this.name = 'ValueError'; }
}
"""

# The shell runtime's bootstrap: the runner writes the event as compact-spaced json.dumps.
SHELL_BOOTSTRAP = r"""#!/bin/sh
event=$(cat)
case "$event" in
  '{}') printf '{"saw": {}}' ;;
  *'"action": "echo"'*) printf '%s' "$event" ;;
  *'"action": "context"'*)
    printf '{"request_id": "%s", "function_name": "%s", "function_version": "%s", "memory": %s}' \
      "$EASYFAAS_REQUEST_ID" "$EASYFAAS_FUNCTION_NAME" "$EASYFAAS_FUNCTION_VERSION" \
      "$EASYFAAS_FUNCTION_MEMORY_SIZE" ;;
  *'"action": "env"'*)
    printf '{"GREETING": "%s", "EASYFAAS_FUNCTION_NAME": "%s", ' \
      "$GREETING" "$EASYFAAS_FUNCTION_NAME"
    printf '"EASYFAAS_FUNCTION_VERSION": "%s", "EASYFAAS_FUNCTION_MEMORY_SIZE": "%s"}' \
      "$EASYFAAS_FUNCTION_VERSION" "$EASYFAAS_FUNCTION_MEMORY_SIZE" ;;
  *'"action": "fail"'*) echo "first line" >&2; echo "boom" >&2; exit 3 ;;
  *'"action": "text"'*) echo "plain text, not JSON" ;;
  *'"action": "sleep"'*) sleep 30 ;;
  *'"action": "log"'*)
    marker=$(printf '%s' "$event" | sed 's/.*"marker": "\([a-z0-9-]*\)".*/\1/')
    rendezvous=$(printf '%s' "$event" | sed 's/.*"dir": "\([^"]*\)".*/\1/')
    echo "$marker before" >&2
    touch "$rendezvous/$marker"
    i=0
    while [ "$(ls "$rendezvous" | wc -l)" -lt 2 ] && [ $i -lt 1000 ]; do
      sleep 0.01; i=$((i + 1))
    done
    echo "$marker after" >&2
    printf '"%s"' "$marker" ;;
  *) echo "unknown action" >&2; exit 2 ;;
esac
"""

PYTHON_ASYNC = """
import asyncio


async def handler(event, context):
    await asyncio.sleep(0)
    print("inside the event loop")
    return {"async": True, "id": context.request_id}
"""

NODE_CALLBACK = """
exports.handler = (event, context, callback) => {
  console.error('callback style');
  setImmediate(() => callback(null, { callback: true, id: context.awsRequestId }));
};
"""

NODE_CALLBACK_ERROR = """
exports.handler = (event, context, callback) => callback(new TypeError('bad input'));
"""

NODE_ESM = """
export const handler = async (event) => ({ esm: true, event });
"""

PYTHON_BROKEN_IMPORT = (
    "import requests_that_is_not_installed\n\ndef handler(event, context):\n    pass\n"
)
NODE_BROKEN_IMPORT = (
    "require('requests-that-is-not-installed');\nexports.handler = async () => 1;\n"
)

CONFORMANCE_FILES = {
    "python3": ("index.py", PYTHON_CONFORMANCE),
    "nodejs": ("index.js", NODE_CONFORMANCE),
    "shell": ("bootstrap", SHELL_BOOTSTRAP),
}


def write_function(task_dir: Path, files: dict[str, str]) -> Path:
    """Write a function's files; a ``bootstrap`` is made executable."""
    task_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = task_dir / name
        path.write_text(text)
        if name == "bootstrap":
            os.chmod(path, 0o755)
    return task_dir
