"""A dialect app around the stand-in executor (dialect_fakes.FakeExecutor)."""

from __future__ import annotations

from typing import Any

import pytest
from dialect_fakes import FakeExecutor
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from gateway.api.dialects import include_dialects, tei
from gateway.config import Settings


@pytest.fixture
def executor() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture
def client(executor: FakeExecutor) -> TestClient:
    app = FastAPI()
    settings = Settings(model_repository="does-not-exist")
    app.state.settings = settings
    app.state.admission = executor
    include_dialects(app, settings)

    @app.post("/rerank")
    async def tei_route(request: Request) -> Any:  # stands in for the seed route's `texts` dispatch
        return await tei.rerank_tei(request, await request.json())

    return TestClient(app)
