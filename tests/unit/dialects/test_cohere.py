"""Cohere v2 on the wire, v1/Jina parsing and rendering."""

from __future__ import annotations

import pydantic
import pytest
from dialect_fakes import DOCS, QUERY, overlap_outcome

from gateway.api.dialects import cohere
from gateway.domain import RerankOutcome, ScoredDocument
from gateway.errors import Overloaded, ValidationFailed


def test_v2_ranks_relevant_first_and_fills_meta(client, executor):
    r = client.post("/v2/rerank", json={"model": "x", "query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [item["index"] for item in body["results"]] == [1, 0]
    assert "document" not in body["results"][0]
    assert body["results"][0]["relevance_score"] > body["results"][1]["relevance_score"]
    assert body["meta"]["api_version"] == {"version": "2"}
    assert body["meta"]["billed_units"] == {"search_units": 1}
    tokens = executor.calls[0][0]
    expected = overlap_outcome(tokens).prompt_tokens
    assert body["meta"]["tokens"] == {"input_tokens": expected, "output_tokens": 0}
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert body["model"] == "overlap-model"
    [[query]] = executor.calls
    assert query.query == QUERY and query.documents == tuple(DOCS) and query.top_n == 2


def test_v2_accepts_neighbours_field_names(client, executor):
    r = client.post("/v2/rerank", json={"query": QUERY, "texts": DOCS, "top_k": 1, "return_text": True})
    assert r.status_code == 200, r.text
    [item] = r.json()["results"]
    assert item["index"] == 1 and item["document"] == {"text": DOCS[1]}
    r = client.post("/v2/rerank", json={"query": QUERY, "passages": [{"text": d} for d in DOCS]})
    assert r.json()["results"][0]["index"] == 1


def test_v2_errors_are_cohere_messages(client, executor):
    r = client.post("/v2/rerank", json={"documents": DOCS})
    assert r.status_code == 400
    assert set(r.json()) == {"message"} and "query" in r.json()["message"]
    r = client.post("/v2/rerank", json={"query": QUERY, "documents": []})
    assert r.status_code == 400 and "empty" in r.json()["message"]
    r = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "top_n": -1})
    assert r.status_code == 400
    executor.error = Overloaded("too many requests in flight", retry_after=2.5)
    r = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"
    assert r.json() == {"message": "too many requests in flight"}


def test_v2_broken_json_is_a_400(client):
    r = client.post("/v2/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "message" in r.json()


def test_v1_object_documents_rank_fields_and_original_documents_back():
    docs = [{"title": "Cats", "body": "the cat sat"}, {"title": "France", "body": "paris is the capital"}]
    req = cohere.CohereRerankRequest(query="capital of france", documents=docs, rank_fields=["title", "body"])
    q = cohere.to_query(req)
    assert q.documents[1] == "title: France\nbody: paris is the capital"
    outcome = overlap_outcome(q)
    body = cohere.render(req, outcome, version="1", default_return_documents=True)
    assert body.results[0].index == 1
    assert body.results[0].document == docs[1]
    assert body.meta.api_version.version == "1"


def test_v1_object_documents_need_text_or_rank_fields():
    req = cohere.CohereRerankRequest(query="q", documents=["a", {"title": "t"}])
    with pytest.raises(ValidationFailed, match=r"documents\[1\]"):
        cohere.to_query(req)
    with pytest.raises(pydantic.ValidationError, match="max_chunks_per_doc"):
        cohere.CohereRerankRequest(query="q", documents=[{"text": "a"}], max_chunks_per_doc=0)


def test_chunks_and_truncation_are_reported():
    req = cohere.CohereRerankRequest(query="q", documents=["long", "short"], max_chunks_per_doc=4)
    assert cohere.to_query(req).max_chunks_per_doc == 4
    outcome = RerankOutcome(
        results=(
            ScoredDocument(0, 2.0, 0.88, "reranker", chunk=(1200, 2400)),
            ScoredDocument(1, -1.0, 0.27, "reranker"),
        ),
        model="m",
        backend="fake",
        stages=("reranker",),
        top_n_applied=False,
        prompt_tokens=700,
        truncated_documents=3,
    )
    body = cohere.render(req, outcome, version="2", default_return_documents=False).model_dump(
        exclude_unset=True
    )
    assert body["results"][0]["chunk"] == {"start": 1200, "end": 2400}
    assert "chunk" not in body["results"][1]
    [warning] = body["meta"]["warnings"]
    assert warning.startswith("3 documents were")
