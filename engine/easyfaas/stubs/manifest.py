"""``function.toml``: parse and check a bundle's manifest, or infer one when it is absent.

Every problem is a ``ManifestError`` whose message starts with the file it is about and whose
detail carries ``file`` and, for manifest keys, ``key`` — so a person can fix it without
reading the engine's code.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ManifestError

MANIFEST = "function.toml"
RUNTIMES = ("nodejs", "python3", "shell")
KNOWN_KEYS = ("concurrency", "env", "handler", "http", "max_instances", "memory", "runtime",
              "timeout")
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
MEMORY_RANGE = (16, 4096)
MAX_TIMEOUT = 900.0
MAX_CONCURRENCY = 1000

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# module path (dots for Python packages, slashes for Node.js dirs) + "." + function name
_HANDLER = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*\.[A-Za-z_$][A-Za-z0-9_$]*$")

FunctionConfig = dict[str, Any]


def load(bundle: Path) -> FunctionConfig:
    """The checked configuration of the bundle at ``bundle`` (manifest or inferred)."""
    path = bundle / MANIFEST
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise _error(f"not valid TOML: {e}") from e
    config = parse(data)
    if "runtime" not in data and "handler" in data:
        config["runtime"] = _runtime_for_handler(bundle, config["handler"])
    elif "runtime" not in data:
        config["runtime"], config["handler"] = infer(bundle)
    if config["runtime"] == "shell":
        config["handler"] = "bootstrap"
    check_handler_file(bundle, config["runtime"], config["handler"])
    return config


def parse(data: dict[str, Any]) -> FunctionConfig:
    """Check manifest keys and fill in defaults; ``runtime`` defaults to python3 here."""
    for key in data:
        if key not in KNOWN_KEYS:
            raise _error(f"unknown key '{key}' (known: {', '.join(KNOWN_KEYS)})", key)
    runtime = _typed(data, "runtime", str, "python3")
    if runtime not in RUNTIMES:
        raise _error(f"runtime '{runtime}' is not supported (supported: {', '.join(RUNTIMES)})",
                     "runtime")
    handler = _typed(data, "handler", str, "index.handler")
    if runtime != "shell" and (not _HANDLER.match(handler) or ".." in handler.split("/")):
        raise _error(f"handler '{handler}' must look like 'module.function'", "handler")
    max_instances = data.get("max_instances")
    if max_instances is not None:
        _int_in(data, "max_instances", 1, 10_000)
    return {
        "runtime": runtime,
        "handler": handler,
        "memory": _int_in(data, "memory", *MEMORY_RANGE, default=128),
        "timeout": _timeout(data.get("timeout", 3)),
        "concurrency": _int_in(data, "concurrency", 1, MAX_CONCURRENCY, default=1),
        "max_instances": max_instances,
        "env": _env(data.get("env", {})),
        "http": _routes(data.get("http", [])),
    }


def infer(bundle: Path) -> tuple[str, str]:
    """(runtime, handler) for a bundle without a ``runtime`` key, from the files it has."""
    for filename, runtime, handler in (("index.py", "python3", "index.handler"),
                                       ("handler.py", "python3", "handler.handler"),
                                       ("index.js", "nodejs", "index.handler")):
        if (bundle / filename).is_file():
            return runtime, handler
    if _executable(bundle / "bootstrap"):
        return "shell", "bootstrap"
    raise _error("no 'runtime' given and none can be inferred: add index.py, handler.py, "
                 "index.js or an executable bootstrap, or set runtime", "runtime")


def _runtime_for_handler(bundle: Path, handler: str) -> str:
    """The runtime whose file for ``handler`` exists (python3 when neither does, so the error
    names the Python file)."""
    for runtime in ("python3", "nodejs"):
        if any((bundle / f).is_file() for f in handler_files(runtime, handler)):
            return runtime
    return "python3"


def handler_files(runtime: str, handler: str) -> list[str]:
    """The files (relative to the bundle) any one of which provides ``handler``."""
    if runtime == "shell":
        return ["bootstrap"]
    module = handler.rsplit(".", 1)[0]
    if runtime == "python3":
        base = module.replace(".", "/")
        return [f"{base}.py", f"{base}/__init__.py"]
    return [f"{module}{ext}" for ext in (".js", ".mjs", ".cjs")]


def check_handler_file(bundle: Path, runtime: str, handler: str) -> None:
    candidates = handler_files(runtime, handler)
    if runtime == "shell":
        if not _executable(bundle / "bootstrap"):
            raise ManifestError("bootstrap: the shell runtime needs an executable file "
                                "'bootstrap' (chmod +x bootstrap)", file="bootstrap")
        return
    if not any((bundle / c).is_file() for c in candidates):
        raise ManifestError(f"{candidates[0]}: handler '{handler}' needs "
                            f"{' or '.join(candidates)}, which does not exist",
                            file=candidates[0], key="handler")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _error(message: str, key: str | None = None) -> ManifestError:
    return ManifestError(f"{MANIFEST}: {message}", file=MANIFEST, key=key)


def _typed(data: dict[str, Any], key: str, typ: type, default: Any) -> Any:
    value = data.get(key, default)
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise _error(f"'{key}' must be {_kind(typ)}, got {_kind(type(value))} {value!r}", key)
    return value


def _int_in(data: dict[str, Any], key: str, low: int, high: int, default: int = 0) -> int:
    value: int = _typed(data, key, int, default)
    if not low <= value <= high:
        raise _error(f"'{key}' must be between {low} and {high}, got {value}", key)
    return value


def _timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error(f"'timeout' must be a number of seconds, got {value!r}", "timeout")
    if not 0 < value <= MAX_TIMEOUT:
        raise _error(f"'timeout' must be > 0 and at most {MAX_TIMEOUT:g} seconds, got {value}",
                     "timeout")
    return float(value)


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _error(f"'env' must be a table of NAME = \"value\", got {value!r}", "env")
    for name, item in value.items():
        if not _ENV_NAME.match(name):
            raise _error(f"env name '{name}' is not a valid variable name", f"env.{name}")
        if name.startswith("EASYFAAS_"):
            raise _error(f"env name '{name}' is reserved for the engine", f"env.{name}")
        if not isinstance(item, str):
            raise _error(f"env '{name}' must be a string, got {item!r} (quote it)", f"env.{name}")
    return dict(value)


def _routes(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _error("'http' must be an array of tables ([[http]])", "http")
    return [_route(item, f"http[{i}]") for i, item in enumerate(value)]


def _route(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _error(f"'{where}' must be a table with 'path' and 'methods'", where)
    for key in item:
        if key not in ("path", "methods"):
            raise _error(f"unknown key '{where}.{key}' (known: methods, path)", f"{where}.{key}")
    path = item.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise _error(f"'{where}.path' must be a string starting with '/', got {path!r}",
                     f"{where}.path")
    methods = item.get("methods", list(HTTP_METHODS))
    if not isinstance(methods, list) or not methods:
        raise _error(f"'{where}.methods' must be a non-empty list of HTTP methods",
                     f"{where}.methods")
    for method in methods:
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            raise _error(f"'{where}.methods': {method!r} is not one of {', '.join(HTTP_METHODS)}",
                         f"{where}.methods")
    return {"path": path, "methods": sorted({m.upper() for m in methods})}


def _kind(typ: type) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean", float: "a number",
            dict: "a table", list: "an array"}.get(typ, typ.__name__)
