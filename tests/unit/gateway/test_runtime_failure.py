"""A local ONNX Runtime error with no fallback left is a backend failure: 424 with a short message (the
runtime's own text goes to the log only), never a 500."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.backends.onnx_local import OnnxScorer

SECRET = "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running MatMul node /internal/path"


class BrokenSession:
    """Answers like an ONNX Runtime session over our graph, and fails every run."""

    class _Arg:
        def __init__(self, name: str) -> None:
            self.name = name

    def get_inputs(self):
        return [self._Arg("input_ids"), self._Arg("attention_mask")]

    def get_outputs(self):
        return [self._Arg("logits")]

    def get_providers(self):
        return ["CPUExecutionProvider"]

    def run(self, output_names, input_feed):
        raise RuntimeError(SECRET)


def test_a_runtime_error_answers_424_with_a_short_message(make_reranker, caplog) -> None:
    reranker, ce, _ = make_reranker(prefilter=False, cache_size=0)
    broken = OnnxScorer(BrokenSession(), name="onnx-cpu")
    ce.score = broken.score
    with TestClient(create_app(reranker.settings, reranker)) as client, caplog.at_level(logging.WARNING):
        native = client.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
        cohere = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
    assert native.status_code == 424, native.text
    assert native.json()["error_type"] == "backend" and "onnx-cpu inference failed" in native.json()["error"]
    assert cohere.status_code == 424, cohere.text
    assert "RUNTIME_EXCEPTION" not in native.text + cohere.text, "the runtime's text stays in the log"
    assert "RUNTIME_EXCEPTION" in caplog.text
