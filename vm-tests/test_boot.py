"""The appliance boots to multi-user with a read-only root and a writable /var it made itself.

Needs root, QEMU and a built image (`make image`); run with `pytest vm-tests -m vm`.
"""

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from machine import Image, Machine

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def image() -> Image:
    return Image.load()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short paths: QEMU's unix sockets live here (sun_path is limited to 107 bytes).
    with tempfile.TemporaryDirectory(prefix="efvm", dir="/tmp") as path:
        yield Path(path)


def assert_booted(machine: Machine) -> None:
    machine.wait_for_unit("multi-user.target")
    state = machine.execute("systemctl is-system-running --wait", timeout=60)[1].strip()
    assert state == "running", machine.succeed("systemctl --failed --no-pager")


def test_boots_read_only_with_var_partition_and_forwarded_port(image: Image, workdir: Path) -> None:
    with Machine(image, workdir) as machine:
        machine.start()
        assert_booted(machine)
        assert "ro" in machine.succeed("findmnt -no OPTIONS /").split(",")
        machine.fail("touch /usr/probe")
        assert machine.succeed("findmnt -no SOURCE,FSTYPE /var").split() == ["/dev/vda3", "ext4"]
        assert machine.succeed("lsblk -no PARTLABEL /dev/vda3").strip() == "easyfaas-var"
        # systemd-repart let /var take the rest of the 2 GiB disk.
        assert int(machine.succeed("lsblk -bno SIZE /dev/vda3")) > 1024**3
        machine.succeed("/opt/easyfaas/bin/python -c 'import easyfaas, orjson, sanic, systemd'")
        # The engine's config is in place and a guest port is reachable from the host (8090:
        # the engine itself has 8080 and 8001).
        machine.succeed("systemd-run --unit=probe-http "
                        "python3 -m http.server --directory /etc/easyfaas 8090")
        machine.wait_for_open_port(8090)
        port = machine.forward_port(8090)
        body = subprocess.run(["curl", "-sf", "--max-time", "30",
                               f"http://127.0.0.1:{port}/engine.toml"],
                              check=True, capture_output=True, text=True).stdout
        assert "[http]" in body


def test_var_survives_a_reboot_and_a_power_cut(image: Image, workdir: Path) -> None:
    with Machine(image, workdir) as machine:
        machine.start()
        machine.wait_for_unit("var.mount")
        machine.succeed("echo kept >/var/lib/probe && sync")
        machine.reboot()
        # The test shell starts before local filesystems: wait for /var before looking.
        machine.wait_for_unit("var.mount")
        assert machine.succeed("cat /var/lib/probe").strip() == "kept"
        machine.crash()
        machine.start()
        assert_booted(machine)
        assert machine.succeed("cat /var/lib/probe").strip() == "kept"


def test_disk_image_boots_under_uefi(image: Image, workdir: Path) -> None:
    with Machine(image, workdir, uefi=True) as machine:
        machine.start()
        assert_booted(machine)
        machine.succeed("test -d /sys/firmware/efi")
        assert machine.succeed("findmnt -no SOURCE /").strip() == "/dev/vda2"


def test_production_image_has_no_test_shell(image: Image) -> None:
    listing = subprocess.run(["unsquashfs", "-l", str(image.disk.parent / "rootfs.squashfs")],
                             check=True, capture_output=True, text=True).stdout
    assert "backdoor" not in listing
    assert "/usr/bin/python3" in listing.replace("squashfs-root", "")
    esp = subprocess.run(["mdir", "-i", f"{image.disk}@@1M", f"::/{image.name}"],
                         check=True, capture_output=True, text=True).stdout
    assert "test-overlay" not in esp
