"""The engine and its Python dependencies as wheels, built on the host (the chroot has no PyPI)."""

import shutil
import subprocess
import tempfile
from pathlib import Path

LOCK = "python.lock"


def build(repo: Path, cache: Path, wheelhouse: Path) -> Path:
    """Build the wheelhouse; dependencies are pinned by image/python.lock (written when missing)."""
    lock = repo / "image" / LOCK
    wheelhouse.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="engine-src-") as tmp:
        # Build from a copy: setuptools would leave build/ and *.egg-info in the work tree.
        shutil.copy2(repo / "pyproject.toml", tmp)
        shutil.copytree(repo / "engine", Path(tmp) / "engine",
                        ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        argv = [str(repo / ".venv/bin/pip"), "wheel", "--quiet", "--cache-dir", str(cache),
                "-w", str(wheelhouse), tmp]
        if lock.exists():
            argv += ["--constraint", str(lock)]
        subprocess.run(argv, check=True)
    if not lock.exists():
        wheels = wheelhouse.glob("*.whl")
        pins = sorted(_pin(w.name) for w in wheels if not w.name.startswith("easyfaas-"))
        lock.write_text("# Python wheels in the appliance's engine venv (image/build.py).\n"
                        + "".join(p + "\n" for p in pins))
    return wheelhouse


def _pin(wheel_name: str) -> str:
    name, version = wheel_name.split("-")[:2]
    return f"{name.replace('_', '-').lower()}=={version}"
