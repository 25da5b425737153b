"""Function bundles used by the end-to-end tests, and ways of putting them in a code dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path


def write_bundle(directory: Path, files: dict[str, str], executable: tuple[str, ...] = ()) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
        if name in executable:
            path.chmod(0o755)


def deploy(code_dir: Path, name: str, files: dict[str, str],
           executable: tuple[str, ...] = ()) -> None:
    """Put a function in the code dir the way ``cp -r`` does: straight into place."""
    staging = Path(tempfile.mkdtemp(prefix="fn"))
    try:
        write_bundle(staging / name, files, executable)
        subprocess.run(["cp", "-r", str(staging / name), str(code_dir) + "/"], check=True)
    finally:
        shutil.rmtree(staging)


def atomic_save(path: Path, text: str) -> None:
    """Save a file the way editors do: write a temp file beside it, then rename over it."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(textwrap.dedent(text).lstrip())
    os.replace(tmp, path)


def python_fn(body: str, manifest: str = "") -> dict[str, str]:
    files = {"index.py": body}
    if manifest:
        files["function.toml"] = manifest
    return files


HELLO = python_fn('''
    def handler(event, context):
        return {"message": "hello " + event.get("name", "world")}
''')

VERSIONED = '''
    def handler(event, context):
        return {"version": %d}
'''

PROBE = python_fn('''
    import os, socket

    def attempt(fn):
        try:
            return "ok: " + repr(fn())
        except Exception as e:
            return "denied: " + type(e).__name__

    def connect(port):
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.close()
        return True

    def handler(event, context):
        return {
            "uid": os.getuid(),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "read_host_file": attempt(lambda: open(event["host_file"]).read()),
            "read_shadow": attempt(lambda: open("/etc/shadow").read()),
            "list_state_dir": attempt(lambda: os.listdir(event["state_dir"])),
            "connect_api": attempt(lambda: connect(event["api_port"])),
            "write_task": attempt(lambda: open("/var/task/x", "w").write("x")),
            "write_tmp": attempt(lambda: open("/tmp/x", "w").write("x")),
        }
''')

SLEEPY = python_fn('''
    import subprocess, time

    def handler(event, context):
        if event.get("child"):
            subprocess.Popen(["sleep", str(event["child"])])
        time.sleep(event.get("seconds", 0))
        return {"slept": event.get("seconds", 0)}
''', manifest='''
    timeout = 1
    max_instances = 1
''')

MEMORY_HOG = python_fn('''
    def handler(event, context):
        hog = []
        for _ in range(event.get("mib", 512)):
            hog.append(bytearray(1024 * 1024))
        return {"held": len(hog)}
''', manifest='''
    memory = 64
''')

# Calls that wait in its one sandbox behind each other (with ``[scheduler]
# queue_in_sandbox_below_ms`` high). ``hold`` makes a call wait for ``/tmp/release`` in the
# sandbox, after making ``/tmp/<hold>`` there so that the test finds the sandbox.
QUEUED = python_fn('''
    import ctypes, os, time

    def handler(event, context):
        if event.get("hold"):
            open("/tmp/" + event["hold"], "w").close()
            while not os.path.exists("/tmp/release"):
                time.sleep(0.01)
        if event.get("mib"):
            hog = [bytearray(1024 * 1024) for _ in range(event["mib"])]
        if event.get("hold_interpreter_s"):  # C code that keeps every other thread waiting
            ctypes.PyDLL(None).sleep(event["hold_interpreter_s"])
        return {"n": event.get("n"), "pid": os.getpid()}
''', manifest='''
    memory = 64
    timeout = 2
    max_instances = 1
''')

FORK_BOMB = python_fn('''
    import os, time

    def handler(event, context):
        forked = 0
        try:
            while forked < 10000:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                forked += 1
        except OSError as e:
            return {"forked": forked, "error": type(e).__name__}
        return {"forked": forked, "error": None}
''')
