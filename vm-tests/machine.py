"""Drive the appliance under QEMU, in the style of the NixOS test driver.

A ``Machine`` boots build/image (direct kernel on ``-M microvm``, or the whole disk under UEFI)
with a test-only overlay (vm-tests/overlay) that adds a root shell on a virtio-serial port. Every
wait goes through ``retry``; every command has a timeout; QEMU is always killed on exit.
"""

import base64
import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("easyfaas.vmtest")

REPO = Path(__file__).resolve().parent.parent
OVERLAY = Path(__file__).resolve().parent / "overlay"
OVMF = Path("/usr/share/ovmf/OVMF.fd")
BACKDOOR_PORT = "easyfaas.backdoor"
READY = b"easyfaas-backdoor-ready\n"


class MachineError(Exception):
    """The machine did not do what the test asked (boot, command, wait)."""


def retry(fn: Callable[[bool], bool], timeout: float, what: str) -> None:
    """Call ``fn(last_try)`` until it returns True; raise MachineError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        last_try = time.monotonic() >= deadline
        if fn(last_try):
            return
        if last_try:
            raise MachineError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)  # polling interval of the condition, not a synchronisation


@dataclass(frozen=True)
class Image:
    """The build outputs a VM needs, as described by build/image/manifest.json."""

    vmlinuz: Path
    initrd: Path
    disk: Path
    cmdline: str
    name: str

    @classmethod
    def load(cls, out_dir: Path = REPO / "build/image") -> "Image":
        manifest = json.loads((out_dir / "manifest.json").read_text())
        return cls(out_dir / "vmlinuz", out_dir / "initrd.img", out_dir / "disk.raw",
                   manifest["cmdline"], manifest["name"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _qemu_probe(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@functools.cache
def kvm_works(image: Image) -> bool:
    """Try KVM for real (once per image): boot the kernel to a panic. On this project's build
    machines /dev/kvm exists but guests hang."""
    if os.environ.get("EASYFAAS_VM_ACCEL") in ("tcg", "kvm"):
        return os.environ["EASYFAAS_VM_ACCEL"] == "kvm"
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-M", "microvm", "-m", "256", "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", str(image.vmlinuz), "-append", "console=ttyS0 panic=-1 root=/dev/none"]
    with _qemu_probe(argv) as proc:
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            return False
    return b"Kernel panic" in out


class Machine:
    """One QEMU guest with its files in ``workdir`` (the caller's, e.g. a tmp dir). Use as a
    context manager: QEMU is killed when the block ends, whatever happened."""

    def __init__(self, image: Image, workdir: Path, *, uefi: bool = False, memory_mb: int = 512,
                 cpus: int = 2, boot_timeout: float = 120.0,
                 credentials: dict[str, str] | None = None) -> None:
        self.image, self.workdir, self.uefi = image, workdir, uefi
        # systemd system credentials handed in through SMBIOS type 11, as on a real device.
        self.credentials = credentials or {}
        self.memory_mb, self.cpus, self.boot_timeout = memory_mb, cpus, boot_timeout
        self.console_log = workdir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._shell: socket.socket | None = None
        self._replies = b""
        self._accel: str | None = None
        self._disk = self._prepare_disk()

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # --- disk and boot files -------------------------------------------------------------

    def _overlay_cpio(self) -> Path:
        out = self.workdir / "test-overlay.cpio"
        names = sorted(str(p.relative_to(OVERLAY)) for p in OVERLAY.rglob("*"))
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "-O", str(out)],
                       cwd=OVERLAY, input="".join(n + "\n" for n in names).encode(), check=True)
        return out

    def _prepare_disk(self) -> Path:
        """A private disk: a qcow2 on top of disk.raw, or (UEFI) a raw copy whose ESP also
        loads the test overlay. Either way 2 GiB, so first boot has room for /var."""
        overlay = self._overlay_cpio()
        if not self.uefi:
            initrd = self.workdir / "initrd-test.img"
            # The kernel unpacks concatenated archives in turn; the uncompressed one goes first
            # (after a gzip stream it expects another compressed archive).
            initrd.write_bytes(overlay.read_bytes() + self.image.initrd.read_bytes())
            disk = self.workdir / "disk.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                            str(self.image.disk), str(disk), "2G"], check=True)
            return disk
        disk = self.workdir / "disk.raw"
        shutil.copyfile(self.image.disk, disk)
        os.truncate(disk, 2 * 1024**3)
        esp = f"{disk}@@1M"
        entry = self.workdir / "entry.conf"
        name = self.image.name
        subprocess.run(["mcopy", "-i", esp, f"::/loader/entries/{name}.conf", str(entry)],
                       check=True)
        lines = entry.read_text().splitlines()
        lines.insert(lines.index(f"initrd /{name}/initrd.img"),
                     f"initrd /{name}/test-overlay.cpio")
        entry.write_text("\n".join(lines) + "\n")
        subprocess.run(["mcopy", "-o", "-i", esp, str(entry), f"::/loader/entries/{name}.conf"],
                       check=True)
        subprocess.run(["mcopy", "-i", esp, str(overlay), f"::/{name}/test-overlay.cpio"],
                       check=True)
        return disk

    def qemu_argv(self, accel: str) -> list[str]:
        """The QEMU command line: microvm + direct kernel, or q35 + OVMF for UEFI boots."""
        # microvm has no SMBIOS: a machine handed credentials boots its kernel on q35.
        pc = self.uefi or bool(self.credentials)
        bus = "pci" if pc else "device"
        argv = ["qemu-system-x86_64", "-accel", accel, "-m", str(self.memory_mb),
                "-smp", str(self.cpus), "-nodefaults", "-no-user-config", "-display", "none",
                "-no-reboot", "-serial", f"file:{self.console_log}",
                "-qmp", f"unix:{self.workdir / 'qmp.sock'},server=on,wait=off",
                "-chardev",
                f"socket,id=shell,path={self.workdir / 'shell.sock'},server=on,wait=off",
                "-device", f"virtio-serial-{bus}",
                "-device", f"virtserialport,chardev=shell,name={BACKDOOR_PORT}",
                "-netdev", "user,id=n0", "-device", f"virtio-net-{bus},netdev=n0",
                "-drive", f"id=d0,file={self._disk},format={self._disk.suffix[1:]},if=none",
                "-device", f"virtio-blk-{bus},drive=d0"]
        for name, value in self.credentials.items():
            argv += ["-smbios", f"type=11,value=io.systemd.credential:{name}={value}"]
        if self.uefi:
            return [*argv, "-M", "q35", "-bios", str(OVMF)]
        # microvm hangs in ~10% of boots without tsc_early_khz; panic=-1 makes a panic end QEMU.
        cmdline = f"{self.image.cmdline} tsc_early_khz=2600000 panic=-1"
        return [*argv, "-M", "q35" if pc else "microvm", "-kernel", str(self.image.vmlinuz),
                "-initrd", str(self.workdir / "initrd-test.img"), "-append", cmdline]

    # --- power ---------------------------------------------------------------------------

    def start(self, attempts: int = 2) -> None:
        """Boot until the test shell answers; a boot that hangs is killed and retried."""
        if self._accel is None:
            self._accel = "kvm" if kvm_works(self.image) else "tcg"
        for attempt in range(1, attempts + 1):
            log.info("vm: starting (accel=%s, attempt %d/%d)", self._accel, attempt, attempts)
            began = time.monotonic()
            self.process = subprocess.Popen(self.qemu_argv(self._accel), stdin=subprocess.DEVNULL)
            try:
                self._connect_shell()
                log.info("vm: shell up after %.1fs", time.monotonic() - began)
                return
            except MachineError:
                log.warning("vm: boot attempt %d failed; console: %s", attempt, self.console_log)
                self.kill()
        raise MachineError(f"no boot after {attempts} attempts, see {self.console_log}")

    def _connect_shell(self) -> None:
        path = str(self.workdir / "shell.sock")

        def ready(_: bool) -> bool:
            if self.process is None or self.process.poll() is not None:
                raise MachineError("QEMU exited during boot")
            if self._shell is None:
                if not os.path.exists(path):
                    return False
                shell = socket.socket(socket.AF_UNIX)
                try:
                    shell.connect(path)
                except ConnectionRefusedError:  # QEMU made the file but does not listen yet
                    shell.close()
                    return False
                shell.settimeout(0.2)
                self._shell = shell
            with contextlib.suppress(TimeoutError):
                self._replies += self._shell.recv(4096)
            return READY in self._replies

        retry(ready, self.boot_timeout, "the test shell")
        self._replies = self._replies.split(READY, 1)[1]

    def kill(self) -> None:
        """Kill QEMU at once (no guest shutdown) and forget the shell connection."""
        if self._shell is not None:
            self._shell.close()
            self._shell, self._replies = None, b""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def crash(self) -> None:
        """A hard power cut: the guest gets no chance to flush anything."""
        log.info("vm: crash")
        self.kill()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Clean power-off from inside; waits for QEMU to exit."""
        log.info("vm: shutdown")
        assert self._shell is not None and self.process is not None
        self._shell.sendall(f"10 {base64.b64encode(b'systemctl poweroff').decode()}\n".encode())
        process = self.process
        retry(lambda _: process.poll() is not None, timeout, "QEMU to exit after poweroff")
        self.kill()

    def reboot(self) -> None:
        """Power off cleanly and boot again on the same disk."""
        self.shutdown()
        self.start()

    # --- commands ------------------------------------------------------------------------

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run ``command`` with bash as root in the guest; returns (status, stdout+stderr).
        The guest kills the command after ``timeout`` s (status 124/137); if even then no
        answer comes, the machine is killed and MachineError raised."""
        if self._shell is None:
            raise MachineError("machine is not running")
        encoded = base64.b64encode(command.encode()).decode()
        self._shell.sendall(f"{timeout:.0f} {encoded}\n".encode())
        shell = self._shell

        def reply(_: bool) -> bool:
            with contextlib.suppress(TimeoutError):
                self._replies += shell.recv(65536)
            return b"\n" in self._replies

        try:
            retry(reply, timeout + 15, f"an answer to {command!r}")
        except MachineError:
            self.kill()  # a late answer would be taken for the next command's
            raise
        line, self._replies = self._replies.split(b"\n", 1)
        output, status = line.rsplit(b" ", 1)
        return int(status), base64.b64decode(output).decode(errors="replace")

    def succeed(self, command: str, timeout: float = 60.0) -> str:
        status, output = self.execute(command, timeout)
        if status != 0:
            raise MachineError(f"command failed (status {status}): {command!r}\n{output}")
        return output

    def fail(self, command: str, timeout: float = 60.0) -> str:
        status, output = self.execute(command, timeout)
        if status == 0:
            raise MachineError(f"command succeeded unexpectedly: {command!r}\n{output}")
        return output

    def wait_until_succeeds(self, command: str, timeout: float = 120.0) -> str:
        output = ""

        def attempt(_: bool) -> bool:
            nonlocal output
            status, output = self.execute(command, timeout=min(timeout, 30))
            return status == 0

        retry(attempt, timeout, repr(command))
        return output

    def wait_for_unit(self, unit: str, timeout: float = 120.0) -> None:
        """Wait until ``unit`` is active; fail at once if it failed."""

        def active(_: bool) -> bool:
            state = self.execute(f"systemctl show -P ActiveState {unit}", 10)[1].strip()
            if state == "failed":
                raise MachineError(f"unit {unit} failed:\n" + self.execute(
                    f"systemctl status --no-pager {unit}; journalctl -b --no-pager -u {unit}")[1])
            return state == "active"

        retry(active, timeout, f"unit {unit}")

    def wait_for_open_port(self, port: int, timeout: float = 60.0) -> None:
        self.wait_until_succeeds(f"ss -Htln 'sport = :{port}' | grep -q .", timeout)

    def forward_port(self, guest_port: int) -> int:
        """Forward a free port on the host's 127.0.0.1 to ``guest_port``; returns the host port."""
        host_port = free_port()
        answer = self._qmp("human-monitor-command", {
            "command-line": f"hostfwd_add n0 tcp:127.0.0.1:{host_port}-:{guest_port}"})
        if answer.get("return"):  # HMP reports errors as text
            raise MachineError(f"hostfwd_add failed: {answer['return']}")
        return host_port

    def copy_from_host(self, source: Path, target: str) -> None:
        """Copy a file from the host to ``target`` in the guest (small files: via the shell)."""
        data = base64.b64encode(Path(source).read_bytes()).decode()
        self.succeed(f"mkdir -p \"$(dirname '{target}')\" && base64 -d >'{target}' <<'EOF'\n"
                     f"{data}\nEOF")

    def _qmp(self, command: str, arguments: dict[str, str]) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.workdir / "qmp.sock"))
            stream = s.makefile("rwb")
            stream.readline()  # greeting
            for request in ({"execute": "qmp_capabilities"},
                            {"execute": command, "arguments": arguments}):
                stream.write(json.dumps(request).encode() + b"\n")
                stream.flush()
                answer: dict[str, object] = json.loads(stream.readline())
                while "event" in answer:
                    answer = json.loads(stream.readline())
            return answer
