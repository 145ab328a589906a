"""The HTTP layer's dependencies: what a route may ask for, declared once, bound once when the app is built.

The composition root (gateway/app.py) hands `create_http_app` a `Services` record; `bind(app, services)` makes
it what `get_services` answers, and each route names the part it uses in its signature
(`inference: InferenceDep`, `keys: ApiKeysDep`, `models: ModelsDep`), as FastAPI dependencies. No handler
reaches into `app.state`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Request

from gateway import metrics
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import ClientDisconnected
from gateway.pipeline import Reranker
from gateway.registry import ServedModel, ServedModels


class RunsQueries(Protocol):
    """Admission control (gateway/admission.py): limits, admission by queued work, the timeout, then
    `reranker` (the served model the request picked; None: the default) ranks the queries."""

    async def run(
        self, queries: Sequence[RerankQuery], reranker: Reranker | None = None
    ) -> list[RerankOutcome]: ...


def _no_gpu() -> dict[str, Any]:
    return {"available": False, "reason": "unknown (no probe)"}


@dataclass(frozen=True)
class Services:
    """What the composition root hands the HTTP layer: the served models, admission control, the API keys,
    and two facts about the runtimes that /health and /info report (so this layer never imports a runtime)."""

    models: ServedModels[Reranker]
    admission: RunsQueries
    api_keys: tuple[str, ...] = ()
    gpu: Callable[[], dict[str, Any]] = _no_gpu  # the GPU probe (NVML only, cheap), run once at start-up
    describe_repository: Callable[[], dict[str, Any]] = dict  # the manifests, for /info before models load


async def get_services() -> Services:
    """Answered by the record `bind` gives the app; unbound, a route cannot run. (Every dependency here is
    async: FastAPI runs a plain `def` one in its thread pool, a hop per request for nothing.)"""
    raise RuntimeError("the app's services were never bound: call gateway.api.deps.bind(app, services)")


def bind(app: FastAPI, services: Services) -> None:
    """Make `services` what every route's dependencies are drawn from (once, when the app is built)."""

    async def bound() -> Services:
        return services

    app.dependency_overrides[get_services] = bound


def bound_services(app: FastAPI) -> Services:
    """The record `bind` gave `app` (for tests that reach admission control)."""
    provider = app.dependency_overrides.get(get_services, get_services)
    services: Services = asyncio.run(provider())
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_models(services: ServicesDep) -> ServedModels[Reranker]:
    return services.models


async def get_api_keys(services: ServicesDep) -> tuple[str, ...]:
    return services.api_keys


ModelsDep = Annotated[ServedModels[Reranker], Depends(get_models)]
ApiKeysDep = Annotated[tuple[str, ...], Depends(get_api_keys)]

CANCEL_GRACE_S = 1.0  # how long an abandoned request waits for its cancelled work to give back its place


@dataclass(frozen=True)
class Inference:
    """One request's way to the pipeline: the model its body names, through admission control, while its
    client is watched."""

    request: Request
    admission: RunsQueries
    models: ServedModels[Reranker]

    def model(self, name: str | None) -> ServedModel[Reranker]:
        """The served model `name` picks (None: the default); UnknownModel when several are served and none
        answers to it."""
        return self.models.resolve(name)

    async def run(self, queries: Sequence[RerankQuery], *, model: str | None = None) -> list[RerankOutcome]:
        """All inference goes through admission control: limits, admission by queued work, the timeout.

        While the work runs, the client's connection is watched (vLLM's `listen_for_disconnect`): when the
        client has gone (its own timeout, a closed tab), the work is cancelled at once, which drops its queued
        batches and gives back its place in admission control, and counted in
        `reranker_cancelled_requests_total`."""
        served = self.model(model)
        request = self.request
        request.state.model = served.name  # the `model` of its metrics and access-log line
        request.state.documents = sum(len(q.documents) for q in queries)  # for the access log
        work = asyncio.ensure_future(self.admission.run(list(queries), reranker=served.pipeline))
        left = asyncio.ensure_future(_client_left(request))
        try:
            await asyncio.wait({work, left}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                await asyncio.wait({work}, timeout=CANCEL_GRACE_S)  # its place is given back before we answer
                metrics.CANCELLED.labels("client_disconnected", served.name).inc()
                raise ClientDisconnected("the client closed the connection; the request's work was stopped")
        finally:
            for task in (work, left):
                if not task.done():
                    task.cancel()  # the work finished, or this handler was cancelled itself (server shutdown)
        outcomes = list(work.result())
        request.state.outcomes = outcomes  # the timing headers are written from them
        return outcomes


async def _client_left(request: Request) -> None:
    """Returns once the client has closed the connection. The body was read before the work started, so the
    server's next message for this request is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def get_inference(request: Request, services: ServicesDep) -> Inference:
    return Inference(request, services.admission, services.models)


InferenceDep = Annotated[Inference, Depends(get_inference)]
