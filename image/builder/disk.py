"""Step 4: the read-only root (squashfs), the EFI system partition and the GPT disk image.

No loop devices: every filesystem is made in a file and written into the disk at its offset."""

import subprocess
from pathlib import Path

from .spec import Spec

MIB = 1024 * 1024
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"


def squashfs(root: Path, out: Path) -> None:
    """mksquashfs takes every timestamp from SOURCE_DATE_EPOCH (set by build.py)."""
    out.unlink(missing_ok=True)
    subprocess.run(["nice", "-n", "10", "mksquashfs", str(root), str(out), "-comp", "zstd",
                    "-no-progress", "-quiet"], check=True)


def _mtools(tool: str, image: Path, *args: str) -> None:
    subprocess.run([tool, "-i", str(image), *args], check=True)


def esp(spec: Spec, root: Path, out_dir: Path, out: Path) -> None:
    """A FAT ESP with systemd-boot, the kernel, the initrd and one boot entry (mkfs.fat and
    mtools take every timestamp from SOURCE_DATE_EPOCH, set by build.py)."""
    out.unlink(missing_ok=True)
    volume_id = spec.esp_uuid.replace("-", "")[:8]
    subprocess.run(["mkfs.fat", "--invariant", "-i", volume_id, "-n", "ESP", "-C", str(out),
                    str(spec.esp_size_mb * 1024)], check=True, capture_output=True)
    loader = out_dir / "loader.conf"
    loader.write_text(f"timeout 0\ndefault {spec.name}.conf\n")
    entry = out_dir / f"{spec.name}.conf"
    entry.write_text(f"title EasyFaaS appliance\nlinux /{spec.name}/vmlinuz\n"
                     f"initrd /{spec.name}/initrd.img\noptions {spec.cmdline}\n")
    _mtools("mmd", out, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries",
            f"::/{spec.name}")
    copies = [(root / SYSTEMD_BOOT, "::/EFI/BOOT/BOOTX64.EFI"), (loader, "::/loader/loader.conf"),
              (entry, f"::/loader/entries/{spec.name}.conf"),
              (out_dir / "vmlinuz", f"::/{spec.name}/vmlinuz"),
              (out_dir / "initrd.img", f"::/{spec.name}/initrd.img")]
    for source, target in copies:
        _mtools("mcopy", out, str(source), target)  # times from SOURCE_DATE_EPOCH
    loader.unlink()
    entry.unlink()


def _mib(path: Path) -> int:
    return -(-path.stat().st_size // MIB)


def gpt(spec: Spec, esp_image: Path, root_image: Path, out: Path) -> None:
    """disk.raw: 1 MiB GPT head, ESP, root, 1 MiB backup GPT. /var is added on first boot."""
    esp_mib, root_mib = _mib(esp_image), _mib(root_image)
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate((1 + esp_mib + root_mib + 1) * MIB)
    sectors = MIB // 512
    script = (
        f"label: gpt\nlabel-id: {spec.disk_uuid}\nunit: sectors\n"
        f"start={sectors}, size={esp_mib * sectors}, type={ESP_TYPE}, uuid={spec.esp_uuid}, "
        f'name="esp"\n'
        f"start={(1 + esp_mib) * sectors}, size={root_mib * sectors}, type={ROOT_X86_64_TYPE}, "
        f'uuid={spec.root_uuid}, name="{spec.root_label}"\n'
    )
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)],
                   input=script.encode(), check=True)
    for image, start_mib in ((esp_image, 1), (root_image, 1 + esp_mib)):
        subprocess.run(["dd", f"if={image}", f"of={out}", "bs=1M", f"seek={start_mib}",
                        "conv=notrunc,fsync", "status=none"], check=True)
