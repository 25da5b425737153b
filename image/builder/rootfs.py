"""Step 1: the root tree, installed by mmdebstrap from the Debian mirror (pinned by the lock)."""

import shlex
import subprocess
from pathlib import Path

from .spec import Spec

HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")


def sources(spec: Spec) -> list[str]:
    return [
        f"deb {spec.mirror} {spec.suite} main",
        f"deb {spec.mirror} {spec.suite}-updates main",
        f"deb {spec.security} {spec.suite}-security main",
    ]


def install_list(spec: Spec, lock: dict[str, str] | None) -> list[str]:
    """The packages to install: the description's list, or every locked package at its version."""
    if lock is None:
        return list(spec.packages)
    missing = sorted(set(spec.packages) - set(lock))
    if missing:
        raise SystemExit(f"lock file lacks packages from appliance.toml: {', '.join(missing)}")
    return [f"{name}={version}" for name, version in sorted(lock.items())]


def mmdebstrap_argv(spec: Spec, lock: dict[str, str] | None, root: Path, cache: Path) -> list[str]:
    """The mmdebstrap command line; downloaded .debs are kept in ``cache`` between builds."""
    argv = [
        "mmdebstrap", "--variant=essential", "--mode=root", "--format=directory",
        f"--hook-dir={HOOKS}", "--aptopt=Acquire::Retries 3",
        "--include=" + ",".join(install_list(spec, lock)),
        "--skip=download/empty",
        f"--setup-hook=mkdir -p {shlex.quote(str(cache))} \"$1\"/var/cache/apt/archives/",
        f"--setup-hook=sync-in {shlex.quote(str(cache))} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {shlex.quote(str(cache))}",
    ]
    if lock is not None:
        # mmdebstrap installs the Essential set first, at the newest versions the mirror has;
        # once bookworm-security carries a newer one than the lock (seen: libpam 1.5.2-6+deb12u3
        # over the locked deb12u2), the locked versions are downgrades, which apt refuses.
        # The lock is the truth: the result is still checked against it after the build.
        argv.append("--aptopt=APT::Get::allow-downgrades \"true\"")
    for pattern in spec.exclude:
        argv.append(f"--dpkgopt=path-exclude={pattern}")
    for pattern in spec.include:
        argv.append(f"--dpkgopt=path-include={pattern}")
    return [*argv, spec.suite, str(root), *sources(spec)]


def build(spec: Spec, lock: dict[str, str] | None, root: Path, cache: Path,
          env: dict[str, str]) -> None:
    """Install the tree into ``root`` (an empty or missing directory)."""
    # INITRD=No: the kernel's postinst would build a 13 MB initramfs-tools initrd we never use.
    argv = ["nice", "-n", "10", *mmdebstrap_argv(spec, lock, root, cache)]
    subprocess.run(argv, check=True, env={**env, "INITRD": "No"})
