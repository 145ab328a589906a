"""The dialect routes around the stand-in executor (dialect_fakes.FakeExecutor)."""

from __future__ import annotations

import pytest
from dialect_fakes import FakeExecutor, dialect_app
from fastapi.testclient import TestClient


@pytest.fixture
def executor() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture
def client(executor: FakeExecutor) -> TestClient:
    return TestClient(dialect_app(executor))
