"""The real `python -m gateway` over the exported stand-ins, driven over HTTP."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import pytest

from gateway.api.schemas import RerankResponse
from gateway.backends.gpu_probe import NvmlProbe

pytestmark = [pytest.mark.slow, pytest.mark.real_models]

QUERY = "How many people live in Berlin?"
BERLIN = "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers."
NYC = "New York City is famous for the Metropolitan Museum of Art."
FILLER = [
    "The Eiffel Tower is in Paris.",
    "Cats sleep for most of the day.",
    "Photosynthesis converts light into chemical energy.",
    "The stock market closed higher on Friday.",
    "Berlin is the capital of Germany.",
]


def test_berlin_ranks_the_population_passage_first_on_the_seed_route(gateway_process):
    r = httpx.post(
        gateway_process.url + "/rerank", json={"query": QUERY, "documents": [NYC, BERLIN]}, timeout=30
    )
    assert r.status_code == 200, r.text
    body = RerankResponse.model_validate(r.json())
    assert [res.index for res in body.results] == [1, 0]
    assert (
        body.results[0].text == BERLIN and body.results[0].relevance_score > body.results[1].relevance_score
    )
    assert body.backend == "onnx-cpu" and body.stages == ["reranker"]
    assert body.model == "minilm-l6-rerank-standin"


def test_berlin_on_the_cohere_route(gateway_process):
    r = httpx.post(
        gateway_process.url + "/v1/rerank",
        json={"query": QUERY, "documents": [NYC, BERLIN], "top_n": 1, "return_documents": True},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    [best] = r.json()["results"]
    assert best["index"] == 1 and best["document"] == {"text": BERLIN}


def test_two_stages_run_above_keep_and_cut_documents_follow(gateway_process):
    docs = [NYC, *FILLER, BERLIN]
    r = httpx.post(gateway_process.url + "/rerank", json={"query": QUERY, "documents": docs}, timeout=30)
    body = RerankResponse.model_validate(r.json())
    assert body.stages == ["prefilter", "reranker"]
    assert [res.stage for res in body.results] == ["reranker"] * 3 + ["prefilter"] * 4
    assert sorted(res.index for res in body.results) == list(range(len(docs)))


def test_repeated_request_hits_the_cache(gateway_process):
    payload = {"query": "How big is Berlin?", "documents": [BERLIN, NYC, "Berlin is large."], "keep": 0}
    first = RerankResponse.model_validate(
        httpx.post(gateway_process.url + "/rerank", json=payload, timeout=30).json()
    )
    second = RerankResponse.model_validate(
        httpx.post(gateway_process.url + "/rerank", json=payload, timeout=30).json()
    )
    assert first.cache_hits == 0 and second.cache_hits == 3 and second.backend == "cache"
    assert [r.index for r in first.results] == [r.index for r in second.results]
    metrics = httpx.get(gateway_process.url + "/metrics").text
    assert re.search(
        r'reranker_cache_lookups_total\{model="reranker",result="hit",stage="reranker"\} [1-9]', metrics
    )


def test_long_document_chunks_find_the_relevant_window(gateway_process):
    filler = " ".join(FILLER[:4]) + " "
    doc = filler * 12 + BERLIN + " " + filler * 12
    payload = {"query": QUERY, "documents": [doc], "max_chunks_per_doc": 8, "max_length": 128, "keep": 0}
    body = RerankResponse.model_validate(
        httpx.post(gateway_process.url + "/rerank", json=payload, timeout=60).json()
    )
    [res] = body.results
    assert res.chunk is not None and "3,520,031" in doc[res.chunk[0] : res.chunk[1]]


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"query": "", "documents": [BERLIN]}, 422, "query"),
        ({"query": QUERY}, 422, "documents"),
        ({"query": QUERY, "documents": [{"title": "x"}]}, 422, "documents"),
        ({"query": QUERY, "documents": [BERLIN], "top_k": -1}, 422, "top_k"),
        ({"query": QUERY, "documents": ["d"] * 51}, 413, "max_documents is 50"),
        # with truncation on (the default) they are cut to the limits instead: test_long_inputs_are_cut
        ({"query": QUERY, "documents": [BERLIN, "x" * 5001], "truncate": False}, 413, "document 1 has 5001"),
        ({"query": "q" * 201, "documents": [BERLIN], "truncate": False}, 413, "max_query_chars is 200"),
        ({"query": QUERY, "documents": ["x" * 4500] * 49}, 413, "max_body_bytes"),
    ],
)
def test_bad_input_matrix(gateway_process, payload, status, needle):
    r = httpx.post(gateway_process.url + "/rerank", json=payload, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_long_inputs_are_cut_to_the_limits_when_truncating(gateway_process):
    payload = {"query": QUERY + " " + "q" * 300, "documents": ["x" * 6000, BERLIN]}
    r = httpx.post(gateway_process.url + "/rerank", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["index"] == 1
    assert "1 document(s) were cut to max_document_chars (5000 characters)" in body["warnings"]
    assert "the query was cut to max_query_chars (200 characters)" in body["warnings"]


def test_empty_documents_and_malformed_json(gateway_process):
    r = httpx.post(gateway_process.url + "/rerank", json={"query": QUERY, "documents": []}, timeout=30)
    assert r.status_code == 200 and r.json()["results"] == []
    bad = httpx.post(
        gateway_process.url + "/rerank", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 422


def test_ops_routes_and_request_id_in_the_log(gateway_process):
    health = httpx.get(gateway_process.url + "/health").json()
    gpu = NvmlProbe().probe()  # what this machine really has (False on a CPU machine, True where CUDA works)
    assert health["models_loaded"] == ["reranker", "prefilter"] and health["cuda_available"] is gpu.available
    info = httpx.get(gateway_process.url + "/info").json()
    # int8 on the CPU; the CUDA provider, when the gateway took it (enough free memory), serves fp16 or fp32
    on_cuda = info["device"].get("cuda") == "used"
    assert on_cuda <= gpu.available, info["device"]
    expected = ("fp16", "fp32") if on_cuda else ("int8",)
    assert info["models"]["reranker"]["variant"] in expected and info["max_input_length"] == 512
    r = httpx.post(
        gateway_process.url + "/rerank",
        json={"query": QUERY, "documents": [BERLIN]},
        headers={"X-Request-ID": "it-req-42"},
        timeout=30,
    )
    assert r.headers["x-request-id"] == "it-req-42"
    line = r"it-req-42 POST /rerank 200 [\d.]+ms model=reranker docs=1"
    for _ in range(40):  # the access line is written after the response is sent (bounded: 2 s)
        if re.search(line, gateway_process.log_text()):
            break
        time.sleep(0.05)
    assert re.search(line, gateway_process.log_text())
    metrics = httpx.get(gateway_process.url + "/metrics").text
    assert 'reranker_requests_total{method="POST",model="reranker",route="/rerank",status="200"}' in metrics
    assert "reranker_process_rss_bytes" in metrics


def test_bad_configuration_fails_fast_with_the_variable_named():
    proc = subprocess.run(
        [sys.executable, "-m", "gateway"],
        env={"RERANKER_KEEP": "-5", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "RERANKER_KEEP" in proc.stderr
