"""The engine's configuration: one typed, frozen object, loaded once and passed explicitly.

Sources, later wins: ``/usr/lib/easyfaas/engine.toml`` < ``/etc/easyfaas/engine.toml`` <
``/etc/easyfaas/engine.toml.d/*.toml`` (sorted); ``--config FILE`` replaces that search; command
line flags override single keys. Unknown keys and wrong types are errors naming file and key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError

DEFAULT_FILES = (Path("/usr/lib/easyfaas/engine.toml"), Path("/etc/easyfaas/engine.toml"))
DEFAULT_DROPIN_DIR = Path("/etc/easyfaas/engine.toml.d")


@dataclass(frozen=True)
class Paths:
    code_dir: str = "/var/lib/easyfaas/code"
    state_dir: str = "/var/lib/easyfaas"
    # Sockets and per-sandbox dirs; empty means "<state_dir>/run", so that several engines with
    # different state dirs never share sockets.
    run_dir: str = ""


@dataclass(frozen=True)
class Listen:
    listen: str = "127.0.0.1:8080"


@dataclass(frozen=True)
class Api:
    listen: str = "127.0.0.1:8001"
    # Invoking needs the bearer token too when true; management always needs it.
    invoke_requires_token: bool = False


@dataclass(frozen=True)
class Sandbox:
    uid: int = 64000
    gid: int = 64000
    pids_max: int = 64
    tmp_size_mb: int = 64
    # Pre-started cold sandboxes kept per runtime.
    pool_size: int = 2
    # All sandboxes together may hold at most this much memory; idle ones are evicted first.
    memory_budget_mb: int = 2048
    # CPU weight is proportional to memory: this many weight units per 128 MiB.
    cpu_weight_per_128mb: int = 100
    # Sandboxes run SCHED_BATCH: a woken sandbox does not preempt the running task (the engine,
    # another sandbox) but waits for the scheduler's tick, so the engine finishes its turn and
    # calls are handled in batches. False: SCHED_OTHER, a woken sandbox may preempt at once.
    batch_scheduling: bool = True
    # "auto" picks systemd scopes when systemd is PID 1, else cgroup v2, else v1.
    cgroup_backend: str = "auto"
    python3: str = "/usr/bin/python3"
    nodejs: str = "/usr/bin/node"


@dataclass(frozen=True)
class Scheduler:
    idle_timeout_s: float = 60.0
    max_instances: int = 8
    # Sandboxes per CPU for a function whose calls compute rather than wait (0: no such cap).
    instances_per_cpu: int = 4
    queue_size: int = 64
    queue_timeout_s: float = 10.0
    # At its cap, a call of a function whose calls run shorter than this on average (ms) may
    # wait inside a busy sandbox, behind its running call (0: never) ...
    queue_in_sandbox_below_ms: float = 2.0
    # ... with at most this many calls waiting in one sandbox (0: never).
    queue_in_sandbox_depth: int = 4


@dataclass(frozen=True)
class Async:
    retries: int = 2
    backoff_s: float = 1.0
    max_age_s: float = 6 * 3600.0
    workers: int = 4


@dataclass(frozen=True)
class Config:
    paths: Paths = field(default_factory=Paths)
    http: Listen = field(default_factory=Listen)
    api: Api = field(default_factory=Api)
    sandbox: Sandbox = field(default_factory=Sandbox)
    scheduler: Scheduler = field(default_factory=Scheduler)
    # "async" is a keyword, so the TOML table [async] maps to this field.
    async_: Async = field(default_factory=Async, metadata={"toml": "async"})

    # Derived paths, in one place so every component agrees on them.
    @property
    def run_dir(self) -> Path:
        return Path(self.paths.run_dir or Path(self.paths.state_dir) / "run")

    @property
    def code_dir(self) -> Path:
        return Path(self.paths.code_dir)

    @property
    def state_dir(self) -> Path:
        return Path(self.paths.state_dir)

    @property
    def store_dir(self) -> Path:
        return self.state_dir / "store"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "token"

    @property
    def instance_id(self) -> str:
        """A short name unique to this state dir: keeps cgroups of side-by-side engines apart."""
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()
        return "easyfaas-" + digest[:8]

    def socket(self, component: str) -> Path:
        return self.run_dir / f"{component}.sock"


def _toml_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("toml", f.name))


def _build(cls: type, data: dict[str, Any], source: str, prefix: str) -> Any:
    hints = get_type_hints(cls)
    fields = {_toml_name(f): f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{where}' (known: {known})")
        f = fields[key]
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{where}' must be a table")
            kwargs[f.name] = _build(typ, value, source, where + ".")  # type: ignore[arg-type]
            continue
        kwargs[f.name] = _check_type(value, typ, source, where)
    return cls(**kwargs)


def _check_type(value: Any, typ: Any, source: str, where: str) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise ConfigError(
            f"{source}: '{where}' must be {typ.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e


def default_files() -> list[Path]:
    files = [p for p in DEFAULT_FILES if p.exists()]
    if DEFAULT_DROPIN_DIR.is_dir():
        files += sorted(DEFAULT_DROPIN_DIR.glob("*.toml"))
    return files


def load(files: list[Path] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate every file (each on its own, so errors name the right file), then
    merge them and apply ``overrides`` (a nested dict shaped like the TOML)."""
    merged: dict[str, Any] = {}
    for path in default_files() if files is None else files:
        data = _read(path)
        _build(Config, data, str(path), "")
        merged = _merge(merged, data)
    if overrides:
        _build(Config, overrides, "command line", "")
        merged = _merge(merged, overrides)
    return _build(Config, merged, "configuration", "")  # type: ignore[no-any-return]


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)
