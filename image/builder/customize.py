"""Step 2: turn the installed tree into the appliance (identity, overlay, users, units, engine)."""

import os
import shutil
import subprocess
from pathlib import Path

from .spec import Spec


def chroot(root: Path, *argv: str) -> None:
    """Run ``argv`` in the root with a fixed environment (the host's PIP_* etc. stay outside)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
           "SOURCE_DATE_EPOCH": os.environ["SOURCE_DATE_EPOCH"]}
    subprocess.run(["chroot", str(root), *argv], check=True, env=env)


def set_identity(spec: Spec, root: Path) -> None:
    (root / "etc/hostname").write_text(spec.hostname + "\n")
    # Empty means "uninitialized": systemd makes a machine id at boot, so copies of the image
    # never share one.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def copy_overlay(overlay: Path, root: Path) -> None:
    """Copy ``overlay`` over the root, owned by root, keeping symlinks as they are."""
    (root / "etc/resolv.conf").unlink(missing_ok=True)  # mmdebstrap copied the host's
    subprocess.run(["cp", "-rT", "--no-preserve=ownership", "--preserve=mode,links",
                    str(overlay), str(root)], check=True)


def install_units(units: Path, root: Path) -> None:
    """The engine's units, sysusers.d and tmpfiles.d files (units/, see docs/units.md)."""
    system = root / "usr/lib/systemd/system"
    for unit in sorted(units.iterdir()):
        if unit.suffix in (".service", ".target", ".slice"):
            shutil.copyfile(unit, system / unit.name)
    shutil.copyfile(units / "easyfaas.sysusers", root / "usr/lib/sysusers.d/easyfaas.conf")
    shutil.copyfile(units / "easyfaas.tmpfiles", root / "usr/lib/tmpfiles.d/easyfaas.conf")


def add_users(spec: Spec, root: Path) -> None:
    """Create every sysusers.d user now: the root (and so /etc/passwd) is read-only at run time."""
    if spec.users:
        lines = [f'u {u.name} {u.uid} "EasyFaaS {u.name}" {u.home} /usr/sbin/nologin\n'
                 for u in spec.users]
        (root / "usr/lib/sysusers.d/easyfaas-appliance.conf").write_text("".join(lines))
    chroot(root, "systemd-sysusers")


def set_units(spec: Spec, root: Path) -> None:
    if spec.enable:
        subprocess.run(["systemctl", f"--root={root}", "enable", *spec.enable], check=True)
    if spec.mask:
        subprocess.run(["systemctl", f"--root={root}", "mask", *spec.mask], check=True)


def install_runtimes(spec: Spec, root: Path, runtimes: Path) -> None:
    """The function runners (runtimes/), where the funclet looks for them: beside the package's
    site-packages, as the repo's runtimes/ is beside engine/ (``plan.runtimes_dir``)."""
    (lib,) = (root / spec.venv.lstrip("/") / "lib").glob("python3.*")
    shutil.copytree(runtimes, lib / "runtimes", ignore=shutil.ignore_patterns("__pycache__"))


def install_engine(spec: Spec, root: Path, wheelhouse: Path) -> None:
    """A venv at ``spec.venv`` with the engine from the host-built wheelhouse (no network)."""
    inside = Path("/tmp/wheelhouse")
    shutil.copytree(wheelhouse, root / inside.relative_to("/"))
    try:
        # --system-site-packages: Debian's python3-systemd satisfies systemd-python, so the
        # appliance needs no compiler and no libsystemd-dev.
        chroot(root, "python3", "-m", "venv", "--system-site-packages", spec.venv)
        pip = f"{spec.venv}/bin/pip"
        chroot(root, pip, "install", "--quiet", "--no-index", "--no-cache-dir",
               "--find-links", str(inside), "easyfaas")
        # The appliance never installs anything at run time: no pip in production. (setuptools
        # stays: sanic needs it at run time.)
        chroot(root, pip, "uninstall", "--quiet", "--yes", "pip")
    finally:
        shutil.rmtree(root / inside.relative_to("/"))


def refresh_modules(root: Path, kver: str) -> None:
    """Re-index the kernel modules: dpkg left out the excluded driver trees."""
    chroot(root, "depmod", kver)


def clear_state(root: Path) -> None:
    """Empty /var, /boot and /tmp: the root is read-only, /var is its own partition."""
    for top in ("var", "boot", "tmp"):
        for entry in (root / top).iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
