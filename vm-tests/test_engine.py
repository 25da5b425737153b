"""The engine on the appliance, driven from the host: readiness, deploys, limits, restarts,
provisioning and a reboot. One machine for the module (booting under TCG costs minutes); the
tests run in file order and the reboot comes last.

Needs root, QEMU and a built image (`make image`); run with `pytest vm-tests -m vm`.
"""

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _appliance import (
    ENGINE_UNITS,
    Appliance,
    boot,
    deploy,
    invoke,
    record,
    running_machine,
    scopes,
    serve,
    show_logs,
    update_file,
    wait_deployed,
    wait_engine_active,
)
from machine import retry

pytestmark = pytest.mark.vm

TOKEN = "vm-test-management-token-0123456789"

GREET = '''
    def handler(event, context):
        return {"version": %d}
'''
ROUTE = '''
    runtime = "python3"
    handler = "index.handler"
    memory = 64
    timeout = 10

    [[http]]
    path = "/greet"
    methods = ["GET"]
'''
HOG = '''
    def handler(event, context):
        hog = []
        for _ in range(event.get("mib", 256)):
            hog.append(bytearray(1024 * 1024))
        return {"held": len(hog)}
'''
BOMB = '''
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
'''
LIMITED = 'runtime = "python3"\nhandler = "index.handler"\nmemory = 64\ntimeout = 20\n'


@pytest.fixture(scope="module")
def app(request: pytest.FixtureRequest) -> Iterator[Appliance]:
    with running_machine(credentials={"easyfaas.token": TOKEN}) as machine:
        appliance, seconds = boot(machine)
        print(f"boot to ready: {seconds:.1f}s")
        record("boot_to_ready_s", round(seconds, 1))
        failed = request.session.testsfailed
        yield appliance
        if request.session.testsfailed > failed:
            show_logs(machine)


class Hammer:
    """A host thread calling ``call`` until stopped; keeps every answer (or exception)."""

    def __init__(self, call: Any) -> None:
        self.call, self.answers = call, []  # type: list[Any]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.answers.append(self.call())
            except OSError as e:
                self.answers.append(e)

    def __enter__(self) -> "Hammer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_engine_units_active_and_healthy_from_the_host(app: Appliance) -> None:
    for unit in ENGINE_UNITS:
        assert app.machine.succeed(f"systemctl is-active {unit}").strip() == "active"
    assert app.api("GET", "/healthz")[:3:2] == (200, {"status": "ok", "missing": []})
    # The trigger port answers too (an unknown route is the trigger's own 404).
    assert app.trigger("GET", "/no-such-route")[0] == 404
    assert app.api("GET", "/v1/runtimes")[2]["funclet"]["backend"] == "systemd"


def test_users_permissions_and_hardening_as_documented(app: Appliance) -> None:
    m = app.machine
    lines = m.succeed("ps -eo user:20,args | grep '[e]asyfaas serve'").splitlines()
    users = {line.split()[-1]: line.split()[0] for line in lines}
    assert users == {"funclet": "root", "stubs": "easyfaas", "controller": "easyfaas",
                     "httptrigger": "easyfaas"}, lines
    assert m.succeed("id -u easyfaas-sandbox; id -g easyfaas-sandbox").split() == ["64000"] * 2
    assert m.succeed("stat -c '%a %U %G' /run/easyfaas").strip() == "2770 root easyfaas"
    for sock in ("funclet", "stubs", "controller"):
        assert m.succeed(f"stat -c '%a %G' /run/easyfaas/{sock}.sock").strip() == "660 easyfaas"
    assert m.succeed("stat -c '%a %U' /var/lib/easyfaas/token").strip() == "600 easyfaas"
    # A python3 runner's record of the answers it kept back: the controller's user reads it.
    kept = m.succeed("stat -c '%a %U %G' /run/easyfaas/sb/*/sock/runner.sock.kept").splitlines()
    assert kept and set(kept) == {"640 easyfaas-sandbox easyfaas"}, kept
    m.succeed("runuser -u easyfaas -- cat /run/easyfaas/sb/*/sock/runner.sock.kept")
    assert m.succeed("stat -c '%a %U %G' /var/lib/easyfaas/code").strip() == \
        "2775 easyfaas easyfaas"
    # The watchdog is armed and journald gets the components' structured fields.
    for unit in ENGINE_UNITS:
        assert m.succeed(f"systemctl show -P WatchdogUSec {unit}").strip() in ("30s", "1min")
    m.succeed("journalctl -b --no-pager SYSLOG_IDENTIFIER=easyfaas-controller | grep -q .")


def test_function_dropped_in_the_code_dir_is_served_and_updated_without_errors(
        app: Appliance) -> None:
    deploy(app.machine, "greet", {"index.py": GREET % 1, "function.toml": ROUTE})
    first = wait_deployed(app, "greet")
    retry(lambda _: app.trigger("GET", "/greet")[0] == 200, 120, "/greet to answer")
    assert app.trigger("GET", "/greet")[2] == {"version": 1}
    with Hammer(lambda: app.trigger("GET", "/greet")) as hammer:
        update_file(app.machine, "greet", "index.py", GREET % 2)
        wait_deployed(app, "greet", first["Configuration"]["CodeSha256"])
        retry(lambda _: app.trigger("GET", "/greet")[2] == {"version": 2}, 120, "version 2")
        retry(lambda _: len(hammer.answers) > 5, 60, "hammer answers after the swap")
    bodies = [a if isinstance(a, Exception) else a[::2] for a in hammer.answers]
    assert bodies and all(b in ((200, {"version": 1}), (200, {"version": 2})) for b in bodies), \
        bodies
    assert bodies[-1] == (200, {"version": 2})


def test_memory_hog_and_fork_bomb_are_contained(app: Appliance) -> None:
    deploy(app.machine, "hog", {"index.py": HOG, "function.toml": LIMITED})
    deploy(app.machine, "bomb", {"index.py": BOMB, "function.toml": LIMITED})
    wait_deployed(app, "hog")
    wait_deployed(app, "bomb")
    with Hammer(lambda: app.trigger("GET", "/greet")) as hammer:
        status, headers, out = invoke(app, "hog", {"mib": 256})
        assert status == 200 and headers.get("X-easyfaas-Function-Error") == "Unhandled", out
        assert out["errorType"] == "Runtime.OutOfMemory", out
        status, _, out = invoke(app, "bomb")
        assert status == 200 and out["error"] == "BlockingIOError", out
        assert 0 < out["forked"] < 64
        retry(lambda _: len(hammer.answers) > 3, 60, "other calls during the hog and bomb")
    assert all(not isinstance(a, Exception) and a[0] == 200 for a in hammer.answers), \
        hammer.answers
    for unit in ENGINE_UNITS:
        assert app.machine.succeed(f"systemctl is-active {unit}").strip() == "active"
    assert invoke(app, "hog", {"mib": 1})[2] == {"held": 1}


def live_scopes(app: Appliance) -> set[str]:
    funclet = app.api("GET", "/v1/runtimes")[2]["funclet"]
    return {sb["id"] for sb in funclet["sandboxes"]}


def restart_by_sigkill(app: Appliance, unit: str) -> None:
    """kill -9 the unit's main process and wait for systemd to bring it back serving."""
    m = app.machine
    restarts = int(m.succeed(f"systemctl show -P NRestarts {unit}"))
    m.succeed(f"kill -9 $(systemctl show -P MainPID {unit})")
    retry(lambda _: int(m.succeed(f"systemctl show -P NRestarts {unit}")) > restarts, 60,
          f"{unit} to be restarted")
    wait_engine_active(m)
    retry(lambda _: app.api("GET", "/healthz")[0] == 200, 300, "/healthz after the restart")


@pytest.mark.parametrize("unit", ["easyfaas-controller.service", "easyfaas-funclet.service"])
def test_killed_component_is_restarted_and_leaves_no_scopes(app: Appliance, unit: str) -> None:
    assert app.trigger("GET", "/greet")[0] == 200  # at least one live sandbox beforehand
    before = scopes(app.machine)
    assert before, "no sandbox scopes before the kill"
    restart_by_sigkill(app, unit)
    retry(lambda _: app.trigger("GET", "/greet")[:3:2] == (200, {"version": 2}), 180,
          "/greet after the restart")

    def only_owned(_: bool) -> bool:
        units = scopes(app.machine)
        owned = {f"{s.split('-', 2)[2].removesuffix('.scope')}" for s in units}
        return owned <= live_scopes(app)

    retry(only_owned, 60, "only scopes the funclet owns")


def test_management_token_comes_from_the_credential(app: Appliance) -> None:
    def create(token: str) -> int:
        body: dict[str, Any] = {"Runtime": "python3", "Handler": "index.handler",
                                "Code": "not base64!"}
        return app.api("POST", "/v1/functions/managed", body,
                       {"Authorization": f"Bearer {token}"})[0]

    assert create("some-other-token-0123456789") == 403
    # Past authentication a bad bundle is a 400: the credential's token was accepted.
    assert create(TOKEN) == 400
    assert app.machine.succeed("cat /var/lib/easyfaas/token").strip() == TOKEN
    assert "management token" not in app.machine.console_log.read_text(errors="replace")


def test_reboot_keeps_functions_and_the_root_read_only(app: Appliance) -> None:
    app.machine.reboot()
    rebooted = serve(app.machine)
    retry(lambda _: rebooted.trigger("GET", "/greet")[:3:2] == (200, {"version": 2}), 180,
          "/greet after the reboot")
    assert "ro" in app.machine.succeed("findmnt -no OPTIONS /").split(",")
    app.machine.fail("touch /opt/easyfaas/probe")
