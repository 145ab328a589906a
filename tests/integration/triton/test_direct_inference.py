"""Direct inference on the real tritonserver: KServe v2 HTTP/JSON (the README's curl) and tritonclient gRPC.

Triton runs the exported fp32 `model.onnx` (python backend + ONNX Runtime); its logits must equal local
ONNX Runtime's on the same file within 1e-4, and rank the relevant documents first.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from export.triton_local import TritonServer
from gateway.backends.base import EncodedBatch
from gateway.backends.triton import TritonScorer

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.real_models]

MODEL = "reranker"
TOLERANCE = 1e-4


def _reference(local_session, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return local_session.run(["logits"], inputs)[0].reshape(-1)


def _assert_meaningful(logits: np.ndarray) -> None:
    # DOCUMENTS: 0 and 2 answer the query, 1 and 3 are off topic.
    assert min(logits[0], logits[2]) > max(logits[1], logits[3])


def test_metadata_matches_the_manifest(triton_server: TritonServer, reranker_folder) -> None:
    manifest = json.loads((reranker_folder / "manifest.json").read_text())
    response = httpx.get(f"{triton_server.http_url}/v2/models/{MODEL}", timeout=10)
    response.raise_for_status()
    metadata = response.json()
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        (t["name"], "INT64", [-1, -1]) for t in manifest["inputs"]
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("logits", "FP32", [-1, 1])
    ]
    config = httpx.get(f"{triton_server.http_url}/v2/models/{MODEL}/config", timeout=10).json()
    assert config["backend"] == "python"
    assert config["max_batch_size"] > 0
    assert "dynamic_batching" in config


def test_kserve_v2_http_json(triton_server: TritonServer, encode, pairs, local_session) -> None:
    query, documents = pairs
    inputs = encode(query, documents)
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": "INT64",
                "data": array.reshape(-1).tolist(),
            }
            for name, array in inputs.items()
        ],
        "outputs": [{"name": "logits"}],
    }
    response = httpx.post(f"{triton_server.http_url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "logits" and output["datatype"] == "FP32"
    assert output["shape"] == [len(documents), 1]
    logits = np.asarray(output["data"], dtype=np.float32)
    reference = _reference(local_session, inputs)
    assert np.abs(logits - reference).max() <= TOLERANCE
    _assert_meaningful(logits)


def test_kserve_v2_http_rejects_a_wrong_input(triton_server: TritonServer) -> None:
    body = {"inputs": [{"name": "nope", "shape": [1, 2], "datatype": "INT64", "data": [101, 102]}]}
    response = httpx.post(f"{triton_server.http_url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert "error" in response.json()


def test_tritonclient_grpc(triton_server: TritonServer, encode, pairs, local_session) -> None:
    import tritonclient.grpc as grpcclient

    query, documents = pairs
    inputs = encode(query, documents)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        assert client.is_model_ready(MODEL)
        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = client.infer(
            MODEL, tensors, outputs=[grpcclient.InferRequestedOutput("logits")], client_timeout=60
        )
    finally:
        client.close()
    logits = result.as_numpy("logits").reshape(-1)
    assert np.abs(logits - _reference(local_session, inputs)).max() <= TOLERANCE
    _assert_meaningful(logits)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_scorer_splits_batches_larger_than_the_model_accepts(
    triton_server: TritonServer, encode, pairs, local_session, protocol: str
) -> None:
    query, documents = pairs
    inputs = encode(query, documents * 20)  # 100 rows > max_batch_size 64: two requests, one answer
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url

    async def score() -> tuple:
        scorer = TritonScorer(url, protocol, MODEL, tuple(inputs), timeout_s=60)
        try:
            assert await scorer.ready()
            return await scorer.score(EncodedBatch(inputs)), scorer.max_batch_size
        finally:
            await scorer.close()

    scores, max_batch_size = asyncio.run(score())
    assert max_batch_size is not None and max_batch_size < 100
    assert scores.backend == f"triton-{protocol}"
    assert scores.logits.dtype == np.float32 and scores.logits.shape == (100,)
    assert np.abs(scores.logits - _reference(local_session, inputs)).max() <= TOLERANCE
