"""Uploads and deletes over the API: the ``put`` and ``delete`` ops of stubs.sock.

An upload becomes an ordinary code dir entry: it is extracted into a dot-prefixed temp dir of the
code dir (the watcher ignores those), gets its ``function.toml`` from the request, is validated
like any bundle and only then renamed into ``<code_dir>/<name>``. A rejected upload leaves nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ..errors import FunctionNotFound, InvalidParameter, ServiceUnavailable
from . import manifest
from .pipeline import NAME, FuncletUnavailable, Pipeline
from .registry import Record

log = logging.getLogger("easyfaas.stubs")

# EasyFaaS create body → manifest key. Description and Version carry nothing we store; Code is
# the zip, which travels as the frame's payload.
BODY_KEYS = {"Runtime": "runtime", "Handler": "handler", "Timeout": "timeout",
             "MemorySize": "memory", "PodConcurrentQuota": "concurrency"}
IGNORED_BODY_KEYS = ("Code", "Description", "Version")
# Temp dirs of uploads and deletes in the code dir; dot-prefixed so they are never a function.
TEMP_PREFIXES = (".upload-", ".replace-", ".delete-")


def manifest_from_body(body: dict[str, Any]) -> dict[str, Any]:
    """The manifest keys for an EasyFaaS create body; unknown keys are an error."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in BODY_KEYS:
            out[BODY_KEYS[key]] = value
        elif key == "Environment":
            variables = value.get("Variables", {}) if isinstance(value, dict) else None
            if not isinstance(variables, dict) or set(value) - {"Variables"}:
                raise InvalidParameter('Environment must be {"Variables": {"NAME": "value"}}')
            out["env"] = variables
        elif key not in IGNORED_BODY_KEYS:
            known = ", ".join(sorted([*BODY_KEYS, "Environment", *IGNORED_BODY_KEYS]))
            raise InvalidParameter(f"unknown parameter '{key}' (known: {known})", key=key)
    return out


def to_toml(data: dict[str, Any]) -> str:
    """Write checked manifest keys as ``function.toml`` (JSON strings are valid TOML strings)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in data.items()
             if key not in ("env", "http") and value is not None]
    if data.get("env"):
        lines += ["", "[env]", *(f"{json.dumps(k)} = {json.dumps(v)}"
                                 for k, v in data["env"].items())]
    for route in data.get("http", []):
        lines += ["", "[[http]]", f"path = {json.dumps(route['path'])}",
                  f"methods = {json.dumps(route['methods'])}"]
    return "\n".join(lines) + "\n"


async def put(pipeline: Pipeline, name: str, data: dict[str, Any], payload: bytes) -> Record:
    """Deploy ``payload`` (zip bytes) with manifest keys ``data`` as function ``name``."""
    if not NAME.match(name):
        raise InvalidParameter(f"function name '{name}' must match {NAME.pattern}", key="name")
    checked = manifest.parse(data)  # fail on bad keys before touching the disk
    # Only the keys given, so that a missing runtime is still inferred from the files.
    toml = to_toml({key: checked[key] for key in data})
    code_dir = pipeline.cfg.code_dir
    # Imported on the first upload: zipfile and its compressors are ~2 MiB an idle stubs
    # process would otherwise hold (docs/performance.md).
    from . import archive

    tmp = await asyncio.to_thread(archive.extract_to_temp, payload, code_dir)
    try:
        (tmp / manifest.MANIFEST).write_text(toml, "utf-8")
        async with pipeline.lock(name):
            record = await pipeline.deploy(name, tmp, lambda: _install(tmp, code_dir / name))
    except FuncletUnavailable as e:
        raise ServiceUnavailable(f"cannot validate '{name}' in a sandbox right now ({e}); "
                                 "nothing was changed, try again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("uploaded fn=%s ver=%s", name, record["version"])
    return record


async def delete(pipeline: Pipeline, name: str) -> None:
    """Remove ``<code_dir>/<name>`` and return once the function is gone."""
    target = pipeline.cfg.code_dir / name
    if not NAME.match(name) or not (target.exists() or name in pipeline.registry.names()):
        raise FunctionNotFound(f"function '{name}' does not exist", name=name)
    if target.exists():
        trash = _aside(target, ".delete-")
        await asyncio.to_thread(shutil.rmtree, trash)
    await pipeline.ingest(name)
    log.info("deleted fn=%s", name)


def clean_leftovers(code_dir: Path) -> None:
    """Remove temp dirs of uploads/deletes interrupted by a crash."""
    for prefix in TEMP_PREFIXES:
        for leftover in code_dir.glob(prefix + "*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _install(tmp: Path, target: Path) -> None:
    """Swap the validated upload into place; the old dir is moved aside first so the code dir
    never holds a mix of the two."""
    tmp.chmod(0o755)
    if not target.exists():
        os.rename(tmp, target)
        return
    trash = _aside(target, ".replace-")
    os.rename(tmp, target)
    shutil.rmtree(trash, ignore_errors=True)


def _aside(target: Path, prefix: str) -> Path:
    """Rename ``target`` to a fresh dot-prefixed name next to it (ignored by the watcher, and
    still inside the watched tree so its watches stay consistent)."""
    aside = target.with_name(f"{prefix}{target.name}-{uuid.uuid4().hex[:12]}")
    os.rename(target, aside)
    return aside
