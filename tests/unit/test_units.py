"""The systemd units in units/: what systemd itself says about them (verify, security), their
contract with the engine (notify, watchdog, ordering, limits), and the users and directories
the sysusers/tmpfiles files make. Runs the host's systemd 252 tools against a temp root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from easyfaas import token
from easyfaas.errors import ConfigError

UNITS = Path(__file__).resolve().parents[2] / "units"
COMPONENTS = ("funclet", "stubs", "controller", "httptrigger")
UNPRIVILEGED = ("stubs", "controller", "httptrigger")
EXEC = "/opt/easyfaas/bin/easyfaas"


def parse(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values...]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def service(component: str) -> dict[str, list[str]]:
    return parse(UNITS / f"easyfaas-{component}.service")["Service"]


def unit(component: str) -> dict[str, list[str]]:
    return parse(UNITS / f"easyfaas-{component}.service")["Unit"]


def words(values: list[str]) -> list[str]:
    return " ".join(values).split()


# ---- systemd-analyze -------------------------------------------------------------------------


def security(name: str, threshold: int = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--threshold={threshold}",
         "--no-pager", str(UNITS / name)],
        capture_output=True, text=True, timeout=60,
    )


def exposure(result: subprocess.CompletedProcess[str]) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@pytest.mark.parametrize("component", UNPRIVILEGED)
def test_unprivileged_units_expose_at_most_2(component: str) -> None:
    result = security(f"easyfaas-{component}.service", threshold=20)
    assert result.returncode == 0, result.stdout + result.stderr
    assert exposure(result) <= 2.0


def test_funclet_stays_as_hardened_as_it_is_now() -> None:
    result = security("easyfaas-funclet.service", threshold=40)
    assert result.returncode == 0, result.stdout + result.stderr
    assert exposure(result) <= 3.5


def test_every_remaining_funclet_exposure_is_justified_in_a_comment() -> None:
    text = (UNITS / "easyfaas-funclet.service").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    flagged = re.findall(r"^✗ (\S+?=)", security("easyfaas-funclet.service").stdout, re.M)
    assert flagged, "systemd-analyze flagged nothing: is the parsing still right?"
    missing = sorted({name for name in flagged if name not in comments})
    assert not missing, f"exposures without a justification comment: {missing}"


@pytest.fixture
def fake_root(tmp_path: Path) -> Iterator[Path]:
    """A root with the host's system units, our units in /etc and the engine's executable (a
    stub: verify checks that ExecStart binaries exist, the image has the real one)."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin").mkdir()
    for tool in ("echo", "touch"):
        shutil.copy2(f"/usr/bin/{tool}", root / "usr/bin" / tool)
    exe = root / EXEC.lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    yield root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    unit_dir = root / "etc/systemd/system"
    names = sorted(p.name for p in unit_dir.iterdir())
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", f"--root={root}", *names],
        capture_output=True, text=True, timeout=60, cwd=unit_dir,
    )


def install_units(root: Path) -> None:
    for path in UNITS.glob("easyfaas*"):
        if path.suffix in (".service", ".target", ".slice"):
            shutil.copy2(path, root / "etc/systemd/system" / path.name)


def test_systemd_analyze_verify_is_clean(fake_root: Path) -> None:
    install_units(fake_root)
    result = verify(fake_root)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_verify_harness_reports_a_broken_unit(fake_root: Path) -> None:
    """Warnings keep verify's exit status 0: only empty output means clean (as checked above)."""
    install_units(fake_root)
    broken = fake_root / "etc/systemd/system/easyfaas-stubs.service"
    broken.write_text(broken.read_text() + "TasksMax=lots\n")
    assert "Invalid maximum tasks value" in verify(fake_root).stderr


# ---- the units' contract with the engine -----------------------------------------------------


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_units_notify_watchdog_restart_and_limit(component: str) -> None:
    svc = service(component)
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    assert svc["ExecStart"] == [f"{EXEC} serve {component}"]
    assert svc["Restart"] == ["on-failure"] and svc["RestartSec"]
    assert re.fullmatch(r"\d+s", svc["WatchdogSec"][0])
    assert int(svc["TimeoutStartSec"][0].rstrip("s")) >= 120  # TCG guests start Python slowly
    assert svc["MemoryMax"] and svc["TasksMax"]
    assert unit(component)["PartOf"] == ["easyfaas.target"]


@pytest.mark.parametrize(
    ("component", "after"),
    [("stubs", {"easyfaas-funclet.service"}),
     ("controller", {"easyfaas-funclet.service", "easyfaas-stubs.service"}),
     ("httptrigger", {"easyfaas-controller.service"})],
)
def test_start_order_is_funclet_stubs_controller_httptrigger(
    component: str, after: set[str]
) -> None:
    u = unit(component)
    assert after <= set(words(u["After"]))
    assert after <= set(words(u["Wants"]))


def test_target_pulls_in_every_component_and_is_enabled_by_multi_user() -> None:
    target = parse(UNITS / "easyfaas.target")
    wanted = set(words(target["Unit"]["Wants"]))
    assert {f"easyfaas-{c}.service" for c in COMPONENTS} <= wanted
    assert target["Install"]["WantedBy"] == ["multi-user.target"]


def test_every_unit_has_memory_and_task_limits() -> None:
    paths = [*UNITS.glob("*.service"), *UNITS.glob("*.slice")]
    assert len(paths) == 6
    for path in paths:
        section = parse(path).get("Service") or parse(path)["Slice"]
        assert section.get("MemoryMax") and section.get("TasksMax"), path.name


@pytest.mark.parametrize("component", UNPRIVILEGED)
def test_unprivileged_components_run_as_the_engine_user_without_capabilities(
    component: str,
) -> None:
    svc = service(component)
    assert svc["User"] == ["easyfaas"] and svc["Group"] == ["easyfaas"]
    assert svc["CapabilityBoundingSet"] == [""]
    assert svc["NoNewPrivileges"] == ["yes"] and svc["ProtectSystem"] == ["strict"]


def test_stubs_has_no_network_at_all() -> None:
    svc = service("stubs")
    assert svc["PrivateNetwork"] == ["yes"] and svc["RestrictAddressFamilies"] == ["AF_UNIX"]


def test_funclet_is_root_with_a_delegated_subtree() -> None:
    svc = service("funclet")
    assert "User" not in svc and svc["Delegate"] == ["yes"]
    assert "CAP_SYS_ADMIN" in words(svc["CapabilityBoundingSet"])


def test_controller_loads_the_token_credential() -> None:
    assert service("controller")["LoadCredential"] == ["easyfaas.token"]


def test_token_banner_only_without_a_provisioned_token_and_only_once() -> None:
    banner = parse(UNITS / "easyfaas-token-banner.service")
    assert banner["Unit"]["ConditionCredential"] == ["!easyfaas.token"]
    marker = banner["Unit"]["ConditionPathExists"][0].lstrip("!")
    assert f"/bin/touch {marker}" in banner["Service"]["ExecStart"]
    assert banner["Service"]["TTYPath"] == ["/dev/console"]


# ---- users and directories -------------------------------------------------------------------


def _ids(root: Path, db: str, name: str) -> tuple[int, int]:
    for line in (root / "etc" / db).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3] if db == "passwd" else fields[2])
    raise AssertionError(f"{name} not in {db}")


def test_sysusers_and_tmpfiles_make_the_permission_model(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for cmd in (["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "easyfaas.sysusers")],
                ["systemd-tmpfiles", f"--root={tmp_path}", "--create",
                 str(UNITS / "easyfaas.tmpfiles")]):
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    engine_uid, engine_gid = _ids(tmp_path, "passwd", "easyfaas")
    assert _ids(tmp_path, "passwd", "easyfaas-sandbox") == (64000, 64000)
    assert engine_uid != 64000 and engine_gid != 64000

    def owner_mode(rel: str) -> tuple[int, int, int]:
        st = os.stat(tmp_path / rel)
        return st.st_uid, st.st_gid, st.st_mode & 0o7777

    assert owner_mode("run/easyfaas") == (0, engine_gid, 0o2770)
    assert owner_mode("var/lib/easyfaas") == (engine_uid, engine_gid, 0o750)
    assert owner_mode("var/lib/easyfaas/store") == (engine_uid, engine_gid, 0o755)
    assert owner_mode("var/lib/easyfaas/code") == (engine_uid, engine_gid, 0o2775)


# ---- provisioning: the token credential ------------------------------------------------------


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$CREDENTIALS_DIRECTORY`` as systemd sets it for the controller's LoadCredential=."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_provided_token_is_used_and_stored(tmp_path: Path, credentials: Path) -> None:
    path = tmp_path / "state/token"
    (credentials / "easyfaas.token").write_text("provisioned-token-0123456789\n")
    assert token.ensure(path) == "provisioned-token-0123456789"
    assert token.read(path) == "provisioned-token-0123456789"
    assert path.stat().st_mode & 0o777 == 0o600


def test_provided_token_replaces_a_generated_one(tmp_path: Path, credentials: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "token"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    generated = token.ensure(path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    (credentials / "easyfaas.token").write_text("a-new-provisioned-token")
    assert token.ensure(path) == "a-new-provisioned-token" != generated
    assert token.read(path) == "a-new-provisioned-token"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials", "token"]


def test_without_a_credential_a_token_is_made_once(tmp_path: Path, credentials: Path) -> None:
    path = tmp_path / "token"
    first = token.ensure(path)
    assert len(first) >= 32 and token.ensure(path) == first


@pytest.mark.parametrize("bad", ["short", "has a space in the middle", "", "x" * 600])
def test_an_unusable_credential_is_an_error_and_changes_nothing(
    tmp_path: Path, credentials: Path, bad: str
) -> None:
    path = tmp_path / "token"
    path.write_text("the-existing-token-value\n")
    (credentials / "easyfaas.token").write_text(bad)
    with pytest.raises(ConfigError, match="easyfaas.token"):
        token.ensure(path)
    assert token.read(path) == "the-existing-token-value"
