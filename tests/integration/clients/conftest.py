"""One real gateway (`python -m gateway`, uvicorn on 127.0.0.1, a free port) serving the repository
exported from the real stand-ins, with API keys on, shared by every client-library test. Bounded waits;
the server is always stopped (terminate, then kill), also when the test run is killed (export.processes)."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from export import processes

REPO_ROOT = Path(__file__).resolve().parents[3]
API_KEYS = ("client-test-key-1", "client-test-key-2")
START_TIMEOUT_S = 180.0


def need_client(module: str) -> ModuleType:
    """Import a client library of the `clients` extra; skip with the install command (fail under CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed ({exc}): pip install -e '.[clients]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_gateway(repository: Path, log_dir: Path, **env_overrides: str) -> Iterator[str]:
    """Start `python -m gateway` on a free port with API keys on; yield its URL once /ready answers."""
    port = _free_port()
    env = {
        **os.environ,
        "RERANKER_MODEL_REPOSITORY": str(repository),
        "RERANKER_HOST": "127.0.0.1",
        "RERANKER_PORT": str(port),
        "RERANKER_API_KEYS": ",".join(API_KEYS),
        "RERANKER_DEVICE": "cpu",
        "RERANKER_PRELOAD": "true",
        "RERANKER_LOG_LEVEL": "warning",
        **env_overrides,
    }
    log_path = log_dir / f"server-{port}.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = processes.popen(
            [sys.executable, "-m", "gateway"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"gateway exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
                try:
                    if httpx.get(f"{url}/ready", timeout=2.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"gateway not ready in {START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.5)
            yield url
        finally:
            processes.stop(proc, 15)


# Names clients send by default, served as aliases of the exported model (listed in /v1/models).
SERVED_ALIASES = (
    "nvidia/nv-rerankqa-mistral-4b-v3",
    "BAAI/bge-reranker-v2-m3",
    "jina-reranker-v2-base-multilingual",
)


@pytest.fixture(scope="session")
def gateway_url(real_model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_gateway(
        real_model_repository,
        tmp_path_factory.mktemp("gateway"),
        RERANKER_SERVED_MODEL_NAMES=",".join(SERVED_ALIASES),
    ) as url:
        yield url


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEYS[0]


# A small corpus on which the real stand-in ranks the relevant passage first by a clear margin.
QUERY = "What is the capital of France?"
PASSAGES = [
    "The giant panda is a bear species endemic to China, living in mountain forests.",
    "Paris is the capital and most populous city of France.",
    "Bananas are a good source of potassium and dietary fibre.",
    "The Great Barrier Reef is the largest coral reef system in the world.",
]
RELEVANT = 1
