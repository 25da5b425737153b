"""Helpers for the engine scenarios: boot the appliance until it serves, talk to it from the host
over the forwarded ports, drop functions into its code dir, record measurements."""

import json
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machine import REPO, Image, Machine, MachineError, retry

ENGINE_UNITS = ("easyfaas-funclet.service", "easyfaas-stubs.service",
                "easyfaas-controller.service", "easyfaas-httptrigger.service")
CODE_DIR = "/var/lib/easyfaas/code"
RESULTS = REPO / "build/vm-tests/results.json"
# Python starts 12-15x slower under TCG: the engine needs minutes, not seconds, on a cold boot.
READY_TIMEOUT = 300.0


@dataclass
class Appliance:
    """A booted appliance and the host ports that reach its API (8001) and trigger (8080)."""

    machine: Machine
    api_port: int = 0
    trigger_port: int = 0

    def api(self, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        return http(self.api_port, method, path, body, headers)

    def trigger(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        return http(self.trigger_port, method, path, body)


def http(port: int, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None,
         timeout: float = 60.0) -> tuple[int, dict[str, str], Any]:
    """One HTTP call to 127.0.0.1:``port``; returns (status, headers, JSON body or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, got, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, got, raw = e.code, dict(e.headers), e.read()
    try:
        return status, got, json.loads(raw)
    except ValueError:
        return status, got, raw.decode(errors="replace")


def healthy(port: int) -> bool:
    """True once /healthz answers 200 on the host port (connection errors mean not yet)."""
    try:
        return http(port, "GET", "/healthz", timeout=10)[0] == 200
    except OSError:
        return False


def wait_engine_active(machine: Machine, timeout: float = READY_TIMEOUT) -> None:
    for unit in ENGINE_UNITS:
        machine.wait_for_unit(unit, timeout)


def serve(machine: Machine) -> Appliance:
    """Wait until every engine unit is active and /healthz answers from the host on both the
    forwarded API and trigger ports (the ports are forwarded once per QEMU process)."""
    wait_engine_active(machine)
    app = Appliance(machine, machine.forward_port(8001), machine.forward_port(8080))
    for port in (app.api_port, app.trigger_port):
        retry(lambda _, port=port: healthy(port), READY_TIMEOUT, f"/healthz on host port {port}")
    return app


def boot(machine: Machine) -> tuple[Appliance, float]:
    """Start the machine and wait until it serves; returns the seconds from QEMU start."""
    began = time.monotonic()
    machine.start()
    app = serve(machine)
    return app, time.monotonic() - began


def deploy(machine: Machine, name: str, files: dict[str, str]) -> None:
    """Drop a function dir into the code dir in one rename, as an operator's tool would."""
    stage = f"{CODE_DIR}/.stage-{name}"
    script = [f"rm -rf {stage} && mkdir -p {stage}"]
    for filename, text in files.items():
        script.append(f"cat >{stage}/{filename} <<'EOF'\n{textwrap.dedent(text).lstrip()}EOF")
    script.append(f"rm -rf {CODE_DIR}/{name} && mv {stage} {CODE_DIR}/{name}")
    machine.succeed("\n".join(script))


def update_file(machine: Machine, name: str, filename: str, text: str) -> None:
    """Replace one file of a live function the way editors save: temp file, then rename."""
    path = f"{CODE_DIR}/{name}/{filename}"
    machine.succeed(f"cat >{path}.swp <<'EOF'\n{textwrap.dedent(text).lstrip()}EOF\n"
                    f"mv {path}.swp {path}")


def wait_deployed(app: Appliance, name: str, code_sha: str = "",
                  timeout: float = 180.0) -> dict[str, Any]:
    """Wait until the API lists ``name`` (with a different CodeSha256 than ``code_sha``)."""
    found: dict[str, Any] = {}

    def live(_: bool) -> bool:
        status, _h, out = app.api("GET", f"/v1/functions/{name}")
        if status == 200 and out["Configuration"]["CodeSha256"] != code_sha:
            found.update(out)
            return True
        return False

    retry(live, timeout, f"function {name} to go live")
    return found


def invoke(app: Appliance, name: str, event: Any = None,
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    return app.api("POST", f"/v1/functions/{name}/invocations", event or {}, headers)


def record(key: str, value: object) -> None:
    """Add a measurement to build/vm-tests/results.json (kept across tests and runs)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def scopes(machine: Machine) -> list[str]:
    """The sandbox scopes systemd knows now (loaded units, any state)."""
    out = machine.succeed("systemctl list-units --all --plain --no-legend 'easyfaas-*.scope'")
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


@contextmanager
def running_machine(memory_mb: int = 1024,
                    credentials: dict[str, str] | None = None) -> Iterator[Machine]:
    """A machine in a short tmp dir (QEMU's unix sockets), always killed at the end."""
    with tempfile.TemporaryDirectory(prefix="efvm", dir="/tmp") as path:
        with Machine(Image.load(), Path(path), memory_mb=memory_mb,
                     credentials=credentials) as machine:
            try:
                yield machine
            except (MachineError, AssertionError):
                show_logs(machine)
                raise


def show_logs(machine: Machine) -> None:
    """Print what explains a failure: the engine's journal, else the console (a hung boot)."""
    try:
        print(machine.succeed("journalctl -b --no-pager -o cat -u 'easyfaas*' | tail -80"))
    except MachineError:
        print(machine.console_log.read_text(errors="replace")[-4000:])
