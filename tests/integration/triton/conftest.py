"""A real tritonserver (from the nvidia-pytriton wheel) over the exported MiniLM-L6 stand-in, for the session.

The server gets a repository of its own holding only the `reranker` (files hard-linked from the cached
export), listens on free ports on 127.0.0.1, and is always stopped at the end, even after a failure.
Installing the server (`make triton-setup`, run by CI before the tests) is done here too when missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from triton_gateway_harness import READY_TIMEOUT_S, Gateway, running_triton
from triton_gateway_harness import free_ports as loopback_ports

from export.triton_local import TritonInstall, TritonServer, TritonSetupError, install

REPO_ROOT = Path(__file__).resolve().parents[3]
MODEL = "reranker"


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@pytest.fixture(scope="session")
def triton_install() -> TritonInstall:
    try:
        return install(REPO_ROOT / ".triton", quiet=True)
    except TritonSetupError as exc:
        pytest.fail(f"could not install the local tritonserver (make triton-setup): {exc}")


@pytest.fixture(scope="session")
def triton_repository(real_model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only what the CPU config serves: configs/cpu.pbtxt, 1/model.py, 1/model.onnx (+ the tokenizer)."""
    source = real_model_repository / MODEL
    target = tmp_path_factory.mktemp("triton-repository") / MODEL
    needed = ["configs/cpu.pbtxt", "1/model.py", "1/model.onnx"]
    missing = [name for name in needed if not (source / name).is_file()]
    assert not missing, f"the exported repository lacks {missing}"
    for name in needed:
        _link_or_copy(source / name, target / name)
    return target.parent


@pytest.fixture(scope="session")
def triton_server(
    triton_install: TritonInstall, triton_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    with running_triton(triton_install, triton_repository, tmp_path_factory.mktemp("triton-log")) as server:
        yield server


@pytest.fixture(scope="session")
def reranker_folder(real_model_repository: Path) -> Path:
    return real_model_repository / MODEL


@pytest.fixture(scope="session")
def local_session(reranker_folder: Path):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(
        str(reranker_folder / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="session")
def encode(reranker_folder: Path):  # -> Callable[[str, list[str]], dict[str, np.ndarray]]
    """Tokenize (query, document) pairs with the repository's own tokenizer files, as a client would."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(reranker_folder / "tokenizer" / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding()
    graph_inputs = None

    def encode_pairs(query: str, documents: list[str]) -> dict[str, np.ndarray]:
        nonlocal graph_inputs
        if graph_inputs is None:
            import json

            manifest = json.loads((reranker_folder / "manifest.json").read_text())
            graph_inputs = [tensor["name"] for tensor in manifest["inputs"]]
        encodings = tokenizer.encode_batch([(query, doc) for doc in documents])
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in graph_inputs}

    return encode_pairs


QUERY = "Does vitamin D supplementation reduce the risk of fractures in older adults?"
DOCUMENTS = [
    "Vitamin D supplementation at higher doses reduced hip and nonvertebral fractures in adults aged 65 and older.",
    "The railway timetable changes in spring when new trains arrive at the harbour station.",
    "Calcium and vitamin D given together lowered fracture incidence among elderly women in care homes.",
    "A recipe for sourdough bread needs flour, water, salt and a mature starter.",
    "Bone mineral density was unchanged after one year of vitamin D in healthy young men.",
]


@pytest.fixture(scope="session")
def pairs() -> tuple[str, list[str]]:
    return QUERY, list(DOCUMENTS)


@pytest.fixture
def triton_stopped(triton_server: TritonServer) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """`with triton_stopped():` stops the shared server for a block and always brings it back."""

    @contextlib.contextmanager
    def stopped() -> Iterator[None]:
        triton_server.stop()
        try:
            yield
        finally:
            triton_server.start()
            triton_server.wait_ready(READY_TIMEOUT_S)

    return stopped


@pytest.fixture
def free_port() -> int:
    (port,) = loopback_ports(1)
    return port


@pytest.fixture(name="free_ports")
def free_ports_fixture() -> Callable[[int], list[int]]:
    """free_ports(n): n distinct free loopback ports."""
    return loopback_ports


@pytest.fixture(scope="session")
def tiny_triton_repository(tiny_model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny exported reranker, only what configs/cpu.pbtxt serves: a server that starts in seconds."""
    target = tmp_path_factory.mktemp("tiny-triton-repository")
    for name in ("configs/cpu.pbtxt", "1/model.py", "1/model.onnx"):
        _link_or_copy(tiny_model_repository / MODEL / name, target / MODEL / name)
    return target


@pytest.fixture
def gateway_factory(real_model_repository: Path, free_port: int) -> Iterator[Callable[..., Gateway]]:
    """`gateway_factory(**settings)` starts the real gateway on a free port; every one is stopped after."""
    started: list[Gateway] = []

    def make(**settings: object) -> Gateway:
        defaults: dict[str, object] = {
            "model_repository": real_model_repository,
            "prefilter_name": "",  # the cross-encoder stage is what Triton serves
            "device": "cpu",
            "cache_size": 0,  # every request must reach a backend
            "triton_timeout_s": 10.0,
            "fallback_reprobe_s": 0.5,
            "threads": 1,
            # Admission is not under test here: its work rate, measured on the first requests of a loaded
            # 2-core machine, would refuse bursts (429) that finish well within this.
            "request_timeout_s": 120.0,
        }
        gateway = Gateway(free_port, **{**defaults, **settings})
        started.append(gateway)
        return gateway.start()

    yield make
    for gateway in started:
        gateway.stop()
