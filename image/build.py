#!/usr/bin/python3
"""Build the EasyFaaS appliance: `python3 image/build.py` as root (Debian's python3, no venv).

Outputs in build/image/: disk.raw (GPT, boots under UEFI), vmlinuz + initrd.img + rootfs.squashfs
(direct-kernel QEMU boots), manifest.json (locked package versions, sizes, sha256 of every file).
Same inputs and the same image/packages.lock give a byte-identical rootfs.squashfs."""

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from builder import customize, disk, initrd, manifest, rootfs, spec, wheels
from builder.log import step

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=REPO / "image/appliance.toml")
    p.add_argument("--out", type=Path, default=REPO / "build/image")
    p.add_argument("--cache", type=Path, default=REPO / "build/cache")
    p.add_argument("--lock", type=Path, default=REPO / "image/packages.lock",
                   help="pinned Debian packages; written from the build when missing")
    p.add_argument("--epoch", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", 0)) or None,
                   help="SOURCE_DATE_EPOCH (default: from the environment, else the last commit)")
    return p.parse_args()


def build(args: argparse.Namespace) -> None:
    desc = spec.load(args.spec)
    lock = manifest.read_lock(args.lock) if args.lock.exists() else None
    epoch = args.epoch or manifest.source_date_epoch(REPO)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    os.environ.update(env)  # chroot'ed tools (pip, py_compile) inherit it: hash-based .pyc
    out = args.out.resolve()
    root = out / "work/root"
    shutil.rmtree(out / "work", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    with step("engine wheelhouse (host pip)"):
        wheelhouse = wheels.build(REPO, args.cache / "wheels", out / "work/wheelhouse")
    with step(f"root tree with mmdebstrap ({len(lock or desc.packages)} packages requested)"):
        rootfs.build(desc, lock, root, args.cache / "debs", env)
    with step("appliance identity, overlay, users, units"):
        customize.set_identity(desc, root)
        customize.copy_overlay(REPO / "rootfs-overlay", root)
        customize.install_units(REPO / "units", root)
        customize.add_users(desc, root)
        customize.set_units(desc, root)
    with step(f"engine venv in {desc.venv}"):
        customize.install_engine(desc, root, wheelhouse)
        customize.install_runtimes(desc, root, REPO / "runtimes")
    with step("kernel and busybox initrd"):
        kver = initrd.build(desc, root, out, epoch)
        customize.refresh_modules(root, kver)
    packages = manifest.installed_packages(root)
    if lock is None:
        manifest.write_lock(args.lock, packages)
    elif packages != lock:
        raise SystemExit(f"installed packages differ from {args.lock}: "
                         f"{manifest.lock_diff(lock, packages)}")
    customize.clear_state(root)
    with step("read-only root (squashfs)"):
        disk.squashfs(root, out / "rootfs.squashfs")
    with step("EFI system partition and GPT disk"):
        disk.esp(desc, root, out, out / "work/esp.img")
        disk.gpt(desc, out / "work/esp.img", out / "rootfs.squashfs", out / "disk.raw")
    with step("manifest"):
        manifest.write(out, desc, kver, epoch, packages)
    shutil.rmtree(out / "work")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if os.geteuid() != 0:
        logging.error("build.py must run as root (mmdebstrap, chroot)")
        return 1
    start = time.monotonic()
    with step("appliance image"):
        build(parse_args())
    logging.info("done in %.0fs", time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
