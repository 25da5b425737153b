"""A device provisioned without a token, and async calls across a hard power cut. One machine:
its first boot shows the generated token; then it loses power with calls still queued.

Needs root, QEMU and a built image (`make image`); run with `pytest vm-tests -m vm`.
"""

import re
from collections.abc import Iterator

import pytest
from _appliance import (
    Appliance,
    boot,
    deploy,
    invoke,
    record,
    running_machine,
    show_logs,
    wait_deployed,
)
from machine import retry

pytestmark = pytest.mark.vm

BANNER = "EasyFaaS management token (shown once"
SLOW = '''
    import time

    def handler(event, context):
        time.sleep(1)
        return {"n": event["n"]}
'''
CALLS = 12
TERMINAL = ("succeeded", "failed", "expired")


@pytest.fixture(scope="module")
def app(request: pytest.FixtureRequest) -> Iterator[Appliance]:
    with running_machine() as machine:
        appliance, seconds = boot(machine)
        print(f"first boot to ready: {seconds:.1f}s")
        record("first_boot_to_ready_s", round(seconds, 1))
        failed = request.session.testsfailed
        yield appliance
        if request.session.testsfailed > failed:
            show_logs(machine)


def console(app: Appliance) -> str:
    return app.machine.console_log.read_text(errors="replace")


def test_generated_token_is_shown_on_the_console_once(app: Appliance) -> None:
    token = app.machine.succeed("cat /var/lib/easyfaas/token").strip()
    retry(lambda _: BANNER in console(app), 120, "the token banner on the console")
    text = console(app)
    assert text.count(BANNER) == 1
    assert re.search(rf"^{re.escape(token)}\s*$", text, re.MULTILINE), text[-2000:]
    status = app.api("POST", "/v1/functions/managed", {"Code": "not base64!"},
                     {"Authorization": f"Bearer {token}"})[0]
    assert status == 400  # authenticated; the bundle itself is refused


def test_acknowledged_async_calls_survive_a_power_cut(app: Appliance) -> None:
    deploy(app.machine, "slow", {"index.py": SLOW})
    wait_deployed(app, "slow")
    ids = []
    for n in range(CALLS):
        status, _, out = invoke(app, "slow", {"n": n}, {"X-easyfaas-Invoke-Type": "event"})
        assert status == 202, out
        ids.append(out["invocationId"])
    app.machine.crash()
    rebooted, seconds = boot(app.machine)
    record("boot_to_ready_after_power_cut_s", round(seconds, 1))
    statuses: dict[str, dict[str, object]] = {}

    def all_terminal(_: bool) -> bool:
        for inv in ids:
            status, _, out = rebooted.api("GET", f"/v1/invocations/{inv}")
            assert status == 200, f"inv={inv} lost: {status} {out}"
            statuses[inv] = out
        return all(s["status"] in TERMINAL for s in statuses.values())

    retry(all_terminal, 240, "every acknowledged call to finish")
    assert [statuses[i]["result"] for i in ids] == [{"n": n} for n in range(CALLS)], statuses
    # The banner was for the first boot only: the console of this boot does not repeat it.
    assert BANNER not in console(rebooted)
