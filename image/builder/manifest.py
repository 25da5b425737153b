"""The lock (pinned Debian package versions) and manifest.json (what was built, sizes, sha256)."""

import hashlib
import json
import subprocess
from pathlib import Path

from .spec import Spec

ARTIFACTS = ("disk.raw", "vmlinuz", "initrd.img", "rootfs.squashfs")


def source_date_epoch(repo: Path) -> int:
    """The last commit's time: the same sources give the same timestamps in the image."""
    out = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%ct"],
                         check=True, capture_output=True, text=True).stdout
    return int(out)


def installed_packages(root: Path) -> dict[str, str]:
    out = subprocess.run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package} ${Version}\n"],
                         check=True, capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def read_lock(path: Path) -> dict[str, str]:
    lock: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            parts = line.split()
            if len(parts) != 2:
                raise SystemExit(f"{path}:{number}: expected 'package version', got {line!r}")
            lock[parts[0]] = parts[1]
    return lock


def write_lock(path: Path, packages: dict[str, str]) -> None:
    lines = [f"{name} {version}\n" for name, version in sorted(packages.items())]
    path.write_text("# Debian packages in the appliance, pinned (image/build.py writes it when "
                    "missing;\n# delete it to move to newer versions).\n" + "".join(lines))


def lock_diff(lock: dict[str, str], packages: dict[str, str]) -> str:
    changed = sorted(set(lock.items()) ^ set(packages.items()))
    return ", ".join(f"{name}={version}" for name, version in changed)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def write(out: Path, spec: Spec, kver: str, epoch: int, packages: dict[str, str]) -> None:
    data = {
        "name": spec.name,
        "kernel": kver,
        "cmdline": spec.cmdline,
        "root_label": spec.root_label,
        "source_date_epoch": epoch,
        "artifacts": {name: {"size": (out / name).stat().st_size, "sha256": _sha256(out / name)}
                      for name in ARTIFACTS},
        "packages": dict(sorted(packages.items())),
    }
    (out / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
