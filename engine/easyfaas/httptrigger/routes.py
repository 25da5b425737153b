"""The trigger's route table: which function serves a request, kept live from stubs records.

Order of precedence:
1. ``/function/<name>`` and ``/function/<name>/<rest...>`` — every function, always.
2. Manifest ``[[http]]`` routes: a path made only of literal segments beats one with
   ``{param}`` segments, which beats one ending in a greedy ``{proxy+}``; then more segments win.
A path that matches a route but not its methods is a 405, not a 404.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("easyfaas.httptrigger")

FUNCTION_PREFIX = "/function/"
ANY_METHOD = frozenset({"ANY", "*"})


@dataclass(frozen=True)
class Route:
    path: str
    methods: frozenset[str]  # upper case; empty means every method
    function: str

    @property
    def segments(self) -> list[str]:
        return [s for s in self.path.split("/") if s]

    def allows(self, method: str) -> bool:
        return not self.methods or method.upper() in self.methods

    def sort_key(self) -> tuple[int, int, int, str]:
        segs = self.segments
        greedy = int(bool(segs) and segs[-1].endswith("+}"))
        params = sum(1 for s in segs if s.startswith("{"))
        return (greedy, params, -len(segs), self.path)

    def match(self, path: str) -> dict[str, str] | None:
        """Path parameters if ``path`` matches this route, else ``None``."""
        parts = [s for s in path.split("/") if s]
        params: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            if seg.startswith("{") and seg.endswith("+}"):
                if i >= len(parts):
                    return None
                params[seg[1:-2]] = "/".join(parts[i:])
                return params
            if i >= len(parts):
                return None
            if seg.startswith("{") and seg.endswith("}"):
                params[seg[1:-1]] = parts[i]
            elif seg != parts[i]:
                return None
        return params if len(parts) == len(self.segments) else None


@dataclass(frozen=True)
class Match:
    function: str
    resource: str
    path_parameters: dict[str, str] | None


class MethodNotAllowed(Exception):
    def __init__(self, allowed: frozenset[str]):
        super().__init__("method not allowed")
        self.allowed = allowed


def routes_of(record: dict[str, Any]) -> list[Route]:
    """The manifest routes of one stubs function record (``config.http``)."""
    http = (record.get("config") or {}).get("http") or []
    out = []
    for entry in http:
        methods = frozenset(str(m).upper() for m in entry.get("methods") or [])
        if methods & ANY_METHOD:
            methods = frozenset()
        out.append(Route(str(entry["path"]), methods, str(record["name"])))
    return out


class RouteTable:
    """Manifest routes by function; replaced wholesale on a snapshot, per function on updates."""

    def __init__(self) -> None:
        self._by_function: dict[str, list[Route]] = {}
        self._ordered: list[Route] = []

    def replace(self, records: list[dict[str, Any]]) -> None:
        self._by_function = {str(r["name"]): routes_of(r) for r in records}
        self._rebuild()

    def update(self, record: dict[str, Any]) -> None:
        self._by_function[str(record["name"])] = routes_of(record)
        self._rebuild()

    def delete(self, name: str) -> None:
        self._by_function.pop(name, None)
        self._rebuild()

    def routes(self) -> list[Route]:
        return list(self._ordered)

    def _rebuild(self) -> None:
        ordered = sorted(
            (r for routes in self._by_function.values() for r in routes),
            key=lambda r: (r.sort_key(), r.function),
        )
        seen: dict[tuple[str, frozenset[str]], str] = {}
        for r in ordered:
            owner = seen.setdefault((r.path, r.methods), r.function)
            if owner != r.function:
                log.warning("route %s claimed by fn=%s and fn=%s; fn=%s wins",
                            r.path, owner, r.function, owner)
        self._ordered = ordered

    def match(self, method: str, path: str) -> Match | None:
        """The function for ``method path``; ``None`` if no route; ``MethodNotAllowed``."""
        if path.startswith(FUNCTION_PREFIX):
            name, _, rest = path[len(FUNCTION_PREFIX):].partition("/")
            if name:
                resource = "/function/{name}/{proxy+}" if rest else "/function/{name}"
                return Match(name, resource, {"proxy": rest})
        allowed: set[str] = set()
        for route in self._ordered:
            params = route.match(path)
            if params is None:
                continue
            if route.allows(method):
                return Match(route.function, route.path, params or None)
            allowed |= route.methods
        if allowed:
            raise MethodNotAllowed(frozenset(allowed))
        return None
