"""docker-compose.yml, its CPU override and gateway/Dockerfile: structure checks (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader plus Compose's merge tags (`!reset`, `!override`)."""


def _tagged(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> object:
    if isinstance(node, yaml.MappingNode):
        value: object = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return {"__tag__": tag_suffix, "value": value}


_ComposeLoader.add_multi_constructor("!", _tagged)


def _load(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load("docker-compose.yml")


@pytest.fixture(scope="module")
def cpu_override() -> dict:
    return _load("docker-compose.cpu.yml")


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def _container_ports(service: dict) -> set[int]:
    return {int(str(mapping).split(":")[-1].split("/")[0]) for mapping in service.get("ports", [])}


def _mounts(service: dict) -> dict[str, str]:
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        mounts[target] = source
    return mounts


def test_services(compose: dict) -> None:
    assert {"triton", "gateway"} <= set(compose["services"])
    assert set(compose.get("volumes", {})) >= {"model-cache"}


def test_triton_serves_the_repository_on_gpu(compose: dict) -> None:
    triton = compose["services"]["triton"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", triton["image"])
    command = triton["command"]
    assert command[0] == "tritonserver"
    flags = _flags(command)
    assert flags["model-repository"] == "/models"
    assert "model-config-name" not in flags, "the GPU service uses each model's default config.pbtxt"
    assert (flags["http-port"], flags["grpc-port"], flags["metrics-port"]) == ("8000", "8001", "8002")
    assert _mounts(triton)["/models"] == "./model_repository"
    assert _container_ports(triton) == {8000, 8001, 8002}
    assert triton["shm_size"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] and device["driver"] == "nvidia" for device in devices)
    health = triton["healthcheck"]
    assert any("/v2/health/ready" in str(part) for part in health["test"])
    assert health["test"][0] in ("CMD", "CMD-SHELL")


def test_named_volumes_are_declared(compose: dict) -> None:
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for source in _mounts(service).values():
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_gateway_uses_triton_with_local_fallback(compose: dict) -> None:
    gateway = compose["services"]["gateway"]
    assert (ROOT / gateway["build"]["dockerfile"]).exists()
    assert gateway["build"]["context"] == "."
    env = gateway["environment"]
    host, port = env["RERANKER_TRITON_URL"].split(":")
    assert host == "triton"
    assert env["RERANKER_TRITON_PROTOCOL"] in ("grpc", "http")
    expected_port = 8001 if env["RERANKER_TRITON_PROTOCOL"] == "grpc" else 8000
    assert int(port) == expected_port
    assert _mounts(gateway)[env["RERANKER_MODEL_REPOSITORY"]] == "./model_repository"
    assert "/cache" in _mounts(gateway)
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    gateway_port = int(env["RERANKER_PORT"])
    assert gateway_port in _container_ports(gateway)
    assert _container_ports(gateway).isdisjoint({8000, 8001, 8002})
    assert any(f":{gateway_port}/ready" in str(part) for part in gateway["healthcheck"]["test"])


def test_cpu_override_selects_the_cpu_onnxruntime_config(compose: dict, cpu_override: dict) -> None:
    triton = cpu_override["services"]["triton"]
    flags = _flags(triton["command"])
    assert flags["model-config-name"] == "cpu-onnxruntime"
    gpu_flags = _flags(compose["services"]["triton"]["command"])
    assert {k: v for k, v in flags.items() if k in gpu_flags} == gpu_flags, (
        "same server flags as the GPU service"
    )
    assert triton["deploy"]["__tag__"] == "reset", "the GPU reservation must be dropped"
    assert set(cpu_override["services"]) <= set(compose["services"])


def test_cpu_override_config_name_is_what_the_exporter_writes() -> None:
    exporter = (ROOT / "export" / "triton_repo.py").read_text()
    assert "configs/cpu-onnxruntime.pbtxt" in exporter


def test_gateway_dockerfile() -> None:
    dockerfile = (ROOT / "gateway" / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")]
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert bases and all(base.endswith("-slim") for base in bases)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert any(line.startswith("VOLUME ") and "/cache" in line for line in lines)
    assert lines[-1].startswith("CMD ") and "gateway" in lines[-1]
    ignore = (ROOT / "gateway" / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and "!gateway/" in ignore
