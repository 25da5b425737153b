"""Shared test configuration: tiers are selected with markers (see pyproject.toml)."""

from __future__ import annotations

import os

import pytest


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Integration tests need root for namespaces and cgroups. Fail loudly instead of skipping:
    # a skipped tier must never look like a passing one. Deselect with -m "not root".
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root (real namespaces and cgroups); run it as root")
