"""Jina's rerank shape on /v1/rerank through LlamaIndex's JinaRerank and Haystack's JinaRanker. Both read
`detail` from an error body and raise it as the message, so 401 and 429 must carry `detail`."""

from __future__ import annotations

import re
import threading

import httpx
import pytest
from conftest import PASSAGES, QUERY, RELEVANT, need_client, running_gateway

pytestmark = [pytest.mark.slow, pytest.mark.real_models, pytest.mark.clients]

MODEL = "jina-reranker-v2-base-multilingual"


def nodes():
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5) for i, t in enumerate(PASSAGES)]


def test_llamaindex_jina_rerank(gateway_url, api_key):
    module = need_client("llama_index.postprocessor.jinaai_rerank")
    # JinaRerank posts to f"{base_url}/rerank"
    reranker = module.JinaRerank(api_key=api_key, base_url=f"{gateway_url}/v1", model=MODEL, top_n=2)
    out = reranker.postprocess_nodes(nodes(), query_str=QUERY)
    assert out[0].node.id_ == f"n{RELEVANT}"
    assert len(out) == 2 and out[0].score > out[1].score


def test_llamaindex_jina_rerank_shows_the_401_message(gateway_url):
    module = need_client("llama_index.postprocessor.jinaai_rerank")
    reranker = module.JinaRerank(api_key="not-a-key", base_url=f"{gateway_url}/v1", model=MODEL, top_n=2)
    with pytest.raises(RuntimeError, match="invalid API key"):
        reranker.postprocess_nodes(nodes(), query_str=QUERY)


def test_llamaindex_jina_rerank_shows_the_429_message(real_model_repository, tmp_path, api_key):
    """A gateway with a 5 s deadline admits a request while its work, with what is queued, fits in 4 s (0.8 of
    the deadline). While a request of about 3.4 s of work runs (sized from the model's speed in /metrics,
    measured at load), a third of it more would not fit and is refused at once with 429 + Retry-After, and
    JinaRerank raises the server's message. The second request is priced at the speed measured by then, which
    moves while the first runs (long windows run slower than the warm-up's): it is refused as overloaded (429)
    while that speed stays between 0.3x and 1.9x the first's; only below 0.3x would it be too large alone (413)."""
    module = need_client("llama_index.postprocessor.jinaai_rerank")
    long_text = " ".join(PASSAGES) * 24  # two 512-token windows a document: 1,024 tokens of work each
    headers = {"Authorization": f"Bearer {api_key}"}
    with running_gateway(
        real_model_repository,
        tmp_path,
        RERANKER_REQUEST_TIMEOUT_S="5",
        RERANKER_MAX_CHUNKS_PER_DOC="2",
        RERANKER_KEEP="0",
        RERANKER_CACHE_SIZE="0",
    ) as url:
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        rate = re.search(r'^reranker_work_rate_tokens_per_second\{model="reranker"\} (\S+)$', metrics, re.M)
        assert rate and float(rate[1]) > 0, "the model's speed is measured at load"
        count = max(3, round(3.4 * float(rate[1]) / 1024))
        heavy = {"query": QUERY, "documents": [f"{i} {long_text}" for i in range(count)]}
        statuses: list[int] = []
        worker = threading.Thread(
            target=lambda: statuses.append(
                httpx.post(f"{url}/v1/rerank", json=heavy, headers=headers, timeout=60).status_code
            )
        )
        worker.start()
        try:
            for _ in range(40):  # until the heavy request is admitted and counted (bounded: 4 s)
                metrics = httpx.get(f"{url}/metrics", timeout=10).text
                if 'reranker_in_flight_requests{model="reranker"} 1.0' in metrics:
                    break
                threading.Event().wait(0.1)
            again = {"query": QUERY, "documents": [f"again {d}" for d in heavy["documents"][: count // 3]]}
            raw = httpx.post(f"{url}/v1/rerank", json=again, headers=headers, timeout=60)
            assert raw.status_code == 429, raw.text
            assert int(raw.headers["Retry-After"]) >= 1
            assert raw.json()["detail"] == raw.json()["message"]
            from llama_index.core.schema import NodeWithScore, TextNode

            same_size = [
                NodeWithScore(node=TextNode(text=f"node {d}", id_=f"n{i}"), score=0.5)
                for i, d in enumerate(heavy["documents"])
            ]
            reranker = module.JinaRerank(api_key=api_key, base_url=f"{url}/v1", model=MODEL, top_n=2)
            with pytest.raises(RuntimeError, match="request_timeout_s"):
                reranker.postprocess_nodes(same_size, query_str=QUERY)
        finally:
            worker.join(timeout=120)
        assert statuses and statuses[0] in (200, 504)


def test_haystack_jina_ranker(gateway_url, api_key, monkeypatch):
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    jina = need_client("haystack_integrations.components.rankers.jina")
    from haystack import Document
    from haystack.utils import Secret

    docs = [Document(content=text, meta={"n": i}) for i, text in enumerate(PASSAGES)]
    # JinaRanker posts to base_url itself; without top_k it sends "top_n": null (all documents)
    ranker = jina.JinaRanker(
        model=MODEL, api_key=Secret.from_token(api_key), base_url=f"{gateway_url}/v1/rerank"
    )
    out = ranker.run(query=QUERY, documents=docs)
    ranked = [d.meta["n"] for d in out["documents"]]
    assert ranked[0] == RELEVANT and sorted(ranked) == list(range(len(PASSAGES)))
    assert out["meta"]["usage"]["total_tokens"] > 0
    out = ranker.run(query=QUERY, documents=docs, top_k=2)
    assert out["documents"][0].meta["n"] == RELEVANT and len(out["documents"]) == 2
    bad = jina.JinaRanker(
        model=MODEL, api_key=Secret.from_token("wrong"), base_url=f"{gateway_url}/v1/rerank"
    )
    with pytest.raises(RuntimeError, match="invalid API key"):
        bad.run(query=QUERY, documents=docs)
