"""The declarative image description (image/appliance.toml) as one frozen, typed object."""

import dataclasses
import tomllib
import uuid
from pathlib import Path


class SpecError(Exception):
    """appliance.toml is missing a key or has a value of the wrong kind."""


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    uid: int
    home: str


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    hostname: str
    disk_uuid: str
    esp_uuid: str
    root_uuid: str
    esp_size_mb: int
    cmdline: str
    suite: str
    mirror: str
    security: str
    packages: tuple[str, ...]
    exclude: tuple[str, ...]
    include: tuple[str, ...]
    enable: tuple[str, ...]
    mask: tuple[str, ...]
    initrd_modules: tuple[str, ...]
    users: tuple[User, ...]
    venv: str

    @property
    def root_label(self) -> str:
        return f"{self.name}-root"


def _get(table: dict[str, object], key: str, kind: type, where: str) -> object:
    if key not in table:
        raise SpecError(f"{where}: missing key '{key}'")
    value = table[key]
    if not isinstance(value, kind):
        raise SpecError(f"{where}: '{key}' must be {kind.__name__}")
    if kind is list and not all(isinstance(v, str) for v in value):  # type: ignore[attr-defined]
        raise SpecError(f"{where}: '{key}' must be a list of strings")
    return value


def _strings(table: dict[str, object], key: str, where: str) -> tuple[str, ...]:
    return tuple(_get(table, key, list, where))  # type: ignore[arg-type]


def _table(data: dict[str, object], key: str, path: Path) -> dict[str, object]:
    return _get(data, key, dict, str(path))  # type: ignore[return-value]


def _user(table: dict[str, object], where: str) -> User:
    return User(
        name=str(_get(table, "name", str, where)),
        uid=int(_get(table, "uid", int, where)),  # type: ignore[call-overload]
        home=str(_get(table, "home", str, where)),
    )


def load(path: Path) -> Spec:
    """Read and check ``path``; errors name the file and the key."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    image, debian = _table(data, "image", path), _table(data, "debian", path)
    units, initrd = _table(data, "units", path), _table(data, "initrd", path)
    engine = _table(data, "engine", path)
    where = f"{path} [image]"
    uuids = {k: str(_get(image, k, str, where)) for k in ("disk_uuid", "esp_uuid", "root_uuid")}
    for key, value in uuids.items():
        try:
            uuid.UUID(value)
        except ValueError:
            raise SpecError(f"{where}: '{key}' is not a UUID: {value!r}") from None
    users = tuple(_user(u, f"{path} [[users]]") for u in data.get("users", []))
    return Spec(
        name=str(_get(image, "name", str, where)),
        hostname=str(_get(image, "hostname", str, where)),
        esp_size_mb=int(_get(image, "esp_size_mb", int, where)),  # type: ignore[call-overload]
        cmdline=str(_get(image, "cmdline", str, where)),
        suite=str(_get(debian, "suite", str, f"{path} [debian]")),
        mirror=str(_get(debian, "mirror", str, f"{path} [debian]")),
        security=str(_get(debian, "security", str, f"{path} [debian]")),
        packages=tuple(sorted(_strings(debian, "packages", f"{path} [debian]"))),
        exclude=_strings(debian, "exclude", f"{path} [debian]"),
        include=_strings(debian, "include", f"{path} [debian]"),
        enable=_strings(units, "enable", f"{path} [units]"),
        mask=_strings(units, "mask", f"{path} [units]"),
        initrd_modules=_strings(initrd, "modules", f"{path} [initrd]"),
        users=users,
        venv=str(_get(engine, "venv", str, f"{path} [engine]")),
        **uuids,
    )
