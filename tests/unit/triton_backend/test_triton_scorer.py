"""TritonScorer without a server: failures become BackendFailed (with a reason), never tritonclient errors;
the metadata check refuses a model that does not match the tokenizer; large batches are split and re-joined
in order. A fake client stands in for tritonclient's async clients (the real server is in
tests/integration/triton)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from gateway.backends.base import EncodedBatch, Scorer
from gateway.backends.triton import TritonScorer
from gateway.errors import BackendFailed

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def batch(rows: int, names: tuple[str, ...] = NAMES) -> EncodedBatch:
    ids = np.arange(rows * 6, dtype=np.int64).reshape(rows, 6)
    return EncodedBatch({name: ids.copy() for name in names})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    sock.close()


class FakeResult:
    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def as_numpy(self, name: str) -> np.ndarray:
        return self.logits


class FakeClient:
    """Answers like Triton serving a BERT cross-encoder; logits = first input_ids column (order check)."""

    def __init__(self, *, inputs: tuple[str, ...] = NAMES, max_batch_size: int = 4, fail_infer: bool = False):
        self.inputs, self.max_batch_size, self.fail_infer = inputs, max_batch_size, fail_infer
        self.infer_rows: list[int] = []
        self.closed = False

    async def get_model_metadata(self, model_name, model_version="", **kwargs):
        return {
            "name": model_name,
            "inputs": [{"name": n, "datatype": "INT64", "shape": ["-1", "-1"]} for n in self.inputs],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": ["-1", "1"]}],
        }

    async def get_model_config(self, model_name, model_version="", **kwargs):
        config = {"name": model_name, "max_batch_size": self.max_batch_size}
        return {"config": config} if kwargs.get("as_json") else config

    async def infer(self, model_name, inputs, **kwargs):
        if self.fail_infer:
            from tritonclient.utils import InferenceServerException

            raise InferenceServerException("model crashed", status="StatusCode.INTERNAL")
        shape = inputs[0].shape()
        self.infer_rows.append(shape[0])
        # The tensor's bytes (private accessors: HTTP's _get_binary_data, gRPC's _get_content).
        tensor = inputs[0]
        raw = tensor._get_binary_data() if hasattr(tensor, "_get_binary_data") else tensor._get_content()
        first = np.frombuffer(raw, dtype=np.int64)
        return FakeResult(first.reshape(shape)[:, :1].astype(np.float32))

    async def is_server_ready(self, **kwargs):
        return True

    async def is_model_ready(self, model_name, model_version="", **kwargs):
        return True

    async def close(self):
        self.closed = True


def scorer_with(client: FakeClient, protocol: str = "grpc", names: tuple[str, ...] = NAMES) -> TritonScorer:
    scorer = TritonScorer("127.0.0.1:1", protocol, "reranker", names, timeout_s=5)
    scorer._new_client = lambda: client  # type: ignore[method-assign]
    return scorer


def test_is_a_scorer() -> None:
    scorer = TritonScorer("localhost:8001", "grpc", "reranker", NAMES, 1.0)
    assert isinstance(scorer, Scorer)
    assert scorer.name == "triton-grpc" and scorer.max_batch_size is None
    assert TritonScorer("http://localhost:8000/", "http").url == "localhost:8000"
    with pytest.raises(ValueError):
        TritonScorer("localhost:8001", "tcp")  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_batches_larger_than_the_model_accepts_are_split_and_rejoined_in_order(protocol: str) -> None:
    client = FakeClient(max_batch_size=4)
    scorer = scorer_with(client, protocol)
    work = batch(10)
    scores = asyncio.run(scorer.score(work))
    assert scores.backend == f"triton-{protocol}"
    assert scorer.max_batch_size == 4
    assert sorted(client.infer_rows) == [2, 4, 4]
    np.testing.assert_array_equal(scores.logits, work.inputs["input_ids"][:, 0].astype(np.float32))
    assert scores.logits.dtype == np.float32


def test_a_served_model_that_does_not_match_the_tokenizer_is_refused() -> None:
    scorer = scorer_with(FakeClient(inputs=("input_ids", "attention_mask")))

    async def run() -> bool:
        with pytest.raises(BackendFailed, match="token_type_ids") as caught:
            await scorer.score(batch(2))
        assert caught.value.reason == "mismatch"  # type: ignore[attr-defined]
        return await scorer.ready()

    assert asyncio.run(run()) is False, "a mismatched model is not ready for us"


def test_ready_checks_the_model_once() -> None:
    client = FakeClient(max_batch_size=8)
    scorer = scorer_with(client)
    assert asyncio.run(scorer.ready()) is True
    assert scorer.max_batch_size == 8


def test_a_model_without_batching_is_refused() -> None:
    with pytest.raises(BackendFailed, match="max_batch_size"):
        asyncio.run(scorer_with(FakeClient(max_batch_size=0)).score(batch(2)))


def test_a_server_error_is_a_backend_failure_not_a_tritonclient_exception() -> None:
    with pytest.raises(BackendFailed, match="model crashed") as caught:
        asyncio.run(scorer_with(FakeClient(fail_infer=True)).score(batch(2)))
    assert type(caught.value).__module__ == "gateway.backends.triton"
    assert caught.value.reason == "error"  # type: ignore[attr-defined]
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_batch_missing_an_input_is_refused_before_any_call() -> None:
    client = FakeClient()
    with pytest.raises(BackendFailed, match="lacks inputs"):
        asyncio.run(scorer_with(client).score(batch(2, names=("input_ids",))))
    assert client.infer_rows == []


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server(protocol: str) -> None:
    scorer = TritonScorer(f"127.0.0.1:{closed_port()}", protocol, "reranker", NAMES, timeout_s=5)

    async def run() -> bool:
        try:
            with pytest.raises(BackendFailed) as caught:
                await scorer.score(batch(2))
            assert caught.value.reason == "unavailable"  # type: ignore[attr-defined]
            return await scorer.ready()
        finally:
            await scorer.close()

    assert asyncio.run(asyncio.wait_for(run(), 20)) is False


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_hung_server_times_out(protocol: str, silent_port: int) -> None:
    scorer = TritonScorer(f"127.0.0.1:{silent_port}", protocol, "reranker", NAMES, timeout_s=0.3)

    async def run() -> bool:
        try:
            with pytest.raises(BackendFailed, match="timed out") as caught:
                await scorer.score(batch(2))
            assert caught.value.reason == "timeout"  # type: ignore[attr-defined]
            return await scorer.ready()
        finally:
            await scorer.close()

    assert asyncio.run(asyncio.wait_for(run(), 20)) is False


def test_a_client_made_on_a_finished_event_loop_is_replaced() -> None:
    made: list[FakeClient] = []

    def new_client() -> FakeClient:
        made.append(FakeClient())
        return made[-1]

    scorer = TritonScorer("127.0.0.1:1", "grpc", "reranker", NAMES, timeout_s=5)
    scorer._new_client = new_client  # type: ignore[method-assign]
    asyncio.run(scorer.score(batch(1)))
    asyncio.run(scorer.score(batch(1)))
    assert len(made) == 2
