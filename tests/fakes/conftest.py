"""Fixtures for the fake API server's own tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.apiserver import FakeApiServer


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.2) as fake:
        yield fake
