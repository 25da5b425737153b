"""Function management over the API: the EasyFaaS create body → stubs ``put``, and records →
the Lambda-shaped answers clients expect."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from .. import wire
from ..errors import InvalidParameter, InvalidRequestContent, ServiceUnavailable
from ..errors import from_wire as error_from_wire
from .registry import Record


def configuration(name: str, record: Record, entry: Record, version: Any) -> dict[str, Any]:
    """``Configuration`` of one version (``entry`` holds its config/code fields)."""
    cfg = entry.get("config") or {}
    return {
        "FunctionName": name,
        "Runtime": cfg.get("runtime"),
        "Handler": cfg.get("handler"),
        "MemorySize": cfg.get("memory"),
        "Timeout": cfg.get("timeout"),
        "CodeSha256": entry.get("code_sha256"),
        "CodeSize": entry.get("code_size"),
        "Version": None if version is None else str(version),
        "LastModified": entry.get("last_modified") or record.get("last_modified"),
        "Environment": {"Variables": dict(cfg.get("env") or {})},
        "State": record.get("state"),
        "Concurrency": cfg.get("concurrency"),
        "MaxInstances": cfg.get("max_instances"),
    }


def lambda_shape(record: Record) -> dict[str, Any]:
    """A stubs record in the shape of ``GET /v1/functions/<name>``."""
    name = record["name"]
    versions = record.get("versions") or {}
    return {
        "Configuration": configuration(name, record, record, record.get("version")),
        "Versions": [configuration(name, record, versions[v], v)
                     for v in sorted(versions, key=int)],
        "LastError": record.get("error"),
        "Http": list((record.get("config") or {}).get("http") or []),
    }


def parse_create_body(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """Split the EasyFaaS create body into (fields for stubs, zip bytes)."""
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as e:
        raise InvalidRequestContent(f"the request body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise InvalidRequestContent("the request body must be a JSON object")
    code = body.pop("Code", None)
    if not isinstance(code, str) or not code:
        raise InvalidParameter("Code (a base64-encoded zip) is required")
    try:
        archive = base64.b64decode(code, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidParameter(f"Code is not valid base64: {e}") from e
    return body, archive


async def peer_call(client: wire.Client, op: str, payload: bytes = b"",
                    **fields: Any) -> wire.Header:
    """Call another component, turning its errors back into the engine's error classes."""
    try:
        header, _ = await client.call(op, payload, **fields)
    except wire.RemoteError as e:
        raise error_from_wire(e.error) from e
    except OSError as e:
        raise ServiceUnavailable(f"{client.path} unavailable: {e}") from e
    return header


async def put_function(stubs: wire.Client, name: str, raw: bytes) -> Record:
    """Create or update ``name`` from an EasyFaaS create body; returns the new record."""
    body, archive = parse_create_body(raw)
    header = await peer_call(stubs, "put", archive, name=name, body=body)
    record: Record = header["function"]
    return record
