"""Sync request ids: UUID-shaped, unique within and across instances."""

from __future__ import annotations

import uuid

from easyfaas.requestid import RequestIds


def test_ids_are_version_4_uuids_and_unique() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(10000)]
    assert len(set(made)) == len(made)
    for text in made[:50]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_instances_do_not_collide() -> None:
    """Each process makes its own instance (after fork): their ids differ from the first one."""
    a, b = RequestIds(), RequestIds()
    assert {a.new() for _ in range(100)}.isdisjoint({b.new() for _ in range(100)})
