"""Issue 16's proof: small models of each family, built from their real classes, exported into ONE repository by
`python -m export`, served by one gateway (local ONNX Runtime, then a real tritonserver) and picked per request
by `model`; every relevance_score equals the model's own PyTorch score (the model card's formula for decoders,
CrossEncoder.predict for the sentence-transformers stack) within 1e-4.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import family_models as fm
import httpx
import pytest
from triton_gateway_harness import Gateway, free_ports, running_triton

from export.triton_local import TritonInstall

pytestmark = [pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
TOLERANCE = 1e-4
# served folder -> (builder, extra export arguments)
FAMILIES = {
    "modernbert": (fm.build_modernbert, ()),
    "ettin": (fm.build_st_crossencoder, ()),
    "qwen3": (fm.build_qwen3_reranker, ("--template", "qwen3-reranker")),
    "mxbai": (fm.build_mxbai_v2, ("--template", "mxbai-rerank-v2")),
}
QUERY = "how many people live in berlin"
DOCUMENTS = [
    "berlin has a population of about three and a half million people",
    "the museum of art in new york is famous",
    "cats sleep for most of the day and people like them",
    "berlin is the capital of germany and its largest city by people",
    "a short text",
]
INSTRUCTION = "Judge whether the passage states a population figure"


@pytest.fixture(scope="module")
def family_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """One repository holding every family, each exported by the CLI the README gives (256 tokens a pair)."""
    sources = tmp_path_factory.mktemp("family-sources")
    repository = tmp_path_factory.mktemp("family-repository")
    folders: dict[str, Path] = {}
    for name, (build, extra) in FAMILIES.items():
        folders[name] = build(sources / name)
        command = [sys.executable, "-m", "export", "--model", str(folders[name]), "--output", str(repository),
                   "--name", name, "--prefilter", "none", "--max-length", "256", "--quiet", *extra]  # fmt: skip
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"export of {name} failed:\n{result.stderr[-3000:]}"
    return repository, folders


def _served(repository: Path, **settings: object) -> Iterator[Gateway]:
    port = free_ports(1)[0]
    gateway = Gateway(
        port,
        model_repository=repository,
        models=list(FAMILIES),
        prefilter_name="",
        cpu_precision="fp32",  # the reference scores: fp32 within 1e-4
        device="cpu",
        cache_size=0,
        threads=2,
        **settings,
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def local_gateway(family_repository: tuple[Path, dict[str, Path]]) -> Iterator[Gateway]:
    yield from _served(family_repository[0])


def _scores(gateway: Gateway, model: str, **extra: object) -> tuple[list[float], dict]:
    body = {"model": model, "query": QUERY, "documents": DOCUMENTS, **extra}
    response = httpx.post(f"{gateway.url}/rerank", json=body, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    by_index = {r["index"]: r["relevance_score"] for r in data["results"]}
    return [by_index[i] for i in range(len(DOCUMENTS))], data


def _assert_parity(served: list[float], reference: list[float], what: str) -> None:
    worst = max(abs(a - b) for a, b in zip(served, reference, strict=True))
    print(f"{what}: max |served - PyTorch| = {worst:.1e}")  # the figure the README's family table quotes
    assert worst <= TOLERANCE, f"{what}: max |served - PyTorch| = {worst:.2e} > {TOLERANCE}"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_served_by_name_scores_as_pytorch(
    name: str, local_gateway: Gateway, family_repository: tuple[Path, dict[str, Path]]
) -> None:
    served, data = _scores(local_gateway, name)
    reference = fm.reference_scores(family_repository[1][name], [(QUERY, d) for d in DOCUMENTS])
    _assert_parity(served, reference, name)
    assert data["backend"] == "onnx-cpu"


def test_the_decoder_takes_a_request_instruction(
    local_gateway: Gateway, family_repository: tuple[Path, dict[str, Path]]
) -> None:
    served, _ = _scores(local_gateway, "qwen3", instruction=INSTRUCTION)
    pairs = [(QUERY, d) for d in DOCUMENTS]
    reference = fm.reference_scores(family_repository[1]["qwen3"], pairs, instruction=INSTRUCTION)
    _assert_parity(served, reference, "qwen3 with an instruction")
    default = fm.reference_scores(family_repository[1]["qwen3"], pairs)
    assert max(abs(a - b) for a, b in zip(served, default, strict=True)) > TOLERANCE  # it really changed


def test_an_unknown_model_names_the_served_ones(local_gateway: Gateway) -> None:
    response = httpx.post(
        f"{local_gateway.url}/v1/rerank",
        json={"model": "no-such-model", "query": QUERY, "documents": DOCUMENTS},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, response.text
    for name in FAMILIES:
        assert name in response.text


def test_models_lists_every_family(local_gateway: Gateway) -> None:
    cards = httpx.get(f"{local_gateway.url}/v1/models", timeout=30).json()["data"]
    text = str(cards)
    for family in ("modernbert", "st-crossencoder", "decoder"):
        assert family in text
    health = httpx.get(f"{local_gateway.url}/health", timeout=30).json()
    assert set(FAMILIES) <= set(health["models_loaded"])
    info = httpx.get(f"{local_gateway.url}/info", timeout=30).json()
    assert set(info["served_models"]) == set(FAMILIES)
    assert info["served_models"]["qwen3"]["models"]["reranker"]["variant"] in (
        "int8",
        "fp32",
        "fp32-opt",
        "fp16",
    )


def test_through_a_real_tritonserver_every_family_scores_as_pytorch(
    family_repository: tuple[Path, dict[str, Path]],
    triton_install: TritonInstall,
    tmp_path: Path,
) -> None:
    repository, folders = family_repository
    with running_triton(triton_install, repository, tmp_path) as triton:
        for gateway in _served(repository, triton_url=f"127.0.0.1:{triton.grpc_port}", triton_timeout_s=60):
            for name in FAMILIES:
                served, data = _scores(gateway, name)
                assert data["backend"] == "triton-grpc", data["backend"]
                _assert_parity(
                    served, fm.reference_scores(folders[name], [(QUERY, d) for d in DOCUMENTS]), name
                )
