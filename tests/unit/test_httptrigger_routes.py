"""Route matching of the HTTP trigger."""

from __future__ import annotations

from typing import Any

import pytest

from easyfaas.httptrigger.routes import MethodNotAllowed, RouteTable


def record(name: str, *routes: tuple[str, list[str]]) -> dict[str, Any]:
    return {"name": name, "config": {"http": [{"path": p, "methods": m} for p, m in routes]}}


def test_function_prefix_serves_every_name() -> None:
    table = RouteTable()
    m = table.match("GET", "/function/hello/a/b/c")
    assert m is not None
    assert (m.function, m.path_parameters) == ("hello", {"proxy": "a/b/c"})
    assert m.resource == "/function/{name}/{proxy+}"
    m = table.match("DELETE", "/function/hello")
    assert m is not None
    assert (m.function, m.resource, m.path_parameters) == ("hello", "/function/{name}",
                                                          {"proxy": ""})
    assert table.match("GET", "/function/") is None


def test_manifest_routes_and_methods() -> None:
    table = RouteTable()
    table.replace([record("hi", ("/hi", ["GET"])), record("any", ("/any", []))])
    m = table.match("GET", "/hi")
    assert m is not None and m.function == "hi" and m.path_parameters is None
    with pytest.raises(MethodNotAllowed) as e:
        table.match("POST", "/hi")
    assert e.value.allowed == {"GET"}
    m = table.match("PATCH", "/any")
    assert m is not None and m.function == "any"
    assert table.match("GET", "/nope") is None


def test_precedence_literal_then_param_then_greedy() -> None:
    table = RouteTable()
    table.replace([
        record("greedy", ("/users/{proxy+}", ["ANY"])),
        record("param", ("/users/{id}", ["GET"])),
        record("literal", ("/users/me", ["GET"])),
    ])
    m = table.match("GET", "/users/me")
    assert m is not None and m.function == "literal"
    m = table.match("GET", "/users/42")
    assert m is not None and (m.function, m.path_parameters) == ("param", {"id": "42"})
    m = table.match("GET", "/users/42/photos")
    assert m is not None and (m.function, m.path_parameters) == ("greedy",
                                                                {"proxy": "42/photos"})
    # A method the parameter route does not allow falls through to the greedy one.
    m = table.match("POST", "/users/42")
    assert m is not None and m.function == "greedy"


def test_function_prefix_beats_manifest_routes() -> None:
    table = RouteTable()
    table.replace([record("other", ("/function/{proxy+}", []))])
    m = table.match("GET", "/function/hello")
    assert m is not None and m.function == "hello"


def test_live_updates_and_deletes() -> None:
    table = RouteTable()
    table.replace([record("a", ("/a", ["GET"]))])
    table.update(record("b", ("/b", ["GET"])))
    m = table.match("GET", "/b")
    assert m is not None and m.function == "b"
    table.update(record("a", ("/a2", ["GET"])))
    assert table.match("GET", "/a") is None
    table.delete("b")
    assert table.match("GET", "/b") is None
    table.replace([])
    assert table.routes() == []


def test_conflicting_routes_pick_one_owner_deterministically() -> None:
    table = RouteTable()
    table.replace([record("zeta", ("/x", ["GET"])), record("alpha", ("/x", ["GET"]))])
    m = table.match("GET", "/x")
    assert m is not None and m.function == "alpha"
