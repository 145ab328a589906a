"""The API dialects beside the native route: Cohere v1/Jina and v2, TEI's wire format (answered on `/rerank`
by the native route when the body has `texts`), NVIDIA NIM `/v1/ranking`, vLLM `/score` `/v1/score`
`/v1/models`, and the multi-query batch.

Each dialect parses its wire body into `RerankQuery` objects, runs them on the model the body names through
admission control (the `Inference` dependency, gateway/api/deps.py), and renders the `RerankOutcome` objects
into its typed response model; errors come back in the dialect's own body, with the status
gateway/api/errors.py gives them. The HTTP app calls `include_dialects(app)` once.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from gateway.api.auth import require_api_key
from gateway.api.dialects import batch, cohere, nim, reranking, vllm


def include_dialects(app: FastAPI) -> None:
    """Mount every dialect router behind the API-key dependency (`/v1/models` too)."""
    for router in (cohere.router, cohere.v1_router, nim.router, vllm.router, batch.router):
        app.include_router(router, dependencies=[Depends(require_api_key)])
    # Last: its `{base}/reranking` matches any path ending so; it checks the API key itself.
    app.include_router(reranking.router)
