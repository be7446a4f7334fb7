"""Fixtures shared by the Kubernetes source tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.apiserver import FakeApiServer


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """A fresh fake API server per test; bookmarks every 0.2 s so watch tests need not wait long."""
    with FakeApiServer(bookmark_interval=0.2) as fake:
        yield fake
