"""export/triton_local.py pieces that need no server: the command line, the environment, shm clean-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from export.triton_local import SHM_PREFIX, TritonInstall, TritonServer, TritonSetupError, clean_shared_memory


@pytest.fixture
def fake_install(tmp_path: Path) -> TritonInstall:
    return TritonInstall(
        root=tmp_path,
        server_dir=tmp_path / "server" / "pytriton" / "tritonserver",
        stub_env=tmp_path / "stubenv",
        library_dirs=(Path("/opt/python/lib"),),
    )


def test_command_serves_the_cpu_configs_on_loopback(fake_install: TritonInstall, tmp_path: Path) -> None:
    server = TritonServer(
        fake_install, tmp_path / "repo", http_port=18000, grpc_port=18001, metrics_port=18002
    )
    command = server.command()
    assert command[0].endswith("bin/tritonserver")
    flags = dict(arg[2:].split("=", 1) for arg in command[1:])
    assert flags["model-config-name"] == "cpu"
    assert flags["http-address"] == flags["grpc-address"] == "127.0.0.1"
    assert (flags["http-port"], flags["grpc-port"], flags["metrics-port"]) == ("18000", "18001", "18002")
    assert flags["allow-gpu-metrics"] == "false"
    assert flags["exit-timeout-secs"] == "5"
    assert flags["backend-directory"].endswith("tritonserver/backends")
    assert server.http_url == "http://127.0.0.1:18000" and server.grpc_url == "127.0.0.1:18001"


def test_environment_puts_the_stub_env_first_and_keeps_the_host_venv_out(fake_install: TritonInstall) -> None:
    env = fake_install.environment(
        {"PATH": "/usr/bin", "VIRTUAL_ENV": "/x/.venv", "PYTHONPATH": "/x", "LD_LIBRARY_PATH": "/cuda"}
    )
    assert env["PATH"].split(os.pathsep)[0] == str(fake_install.stub_env / "bin")
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == ["/opt/python/lib", "/cuda"]
    assert "VIRTUAL_ENV" not in env and "PYTHONPATH" not in env


def test_start_refuses_a_repository_without_cpu_configs(fake_install: TritonInstall, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    (repository / "reranker" / "1").mkdir(parents=True)
    with pytest.raises(TritonSetupError, match=r"configs/cpu\.pbtxt"):
        TritonServer(fake_install, repository).start()
    with pytest.raises(TritonSetupError, match="make export"):
        TritonServer(fake_install, tmp_path / "missing").start()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_clean_shared_memory_removes_orphans_only() -> None:
    orphan = Path("/dev/shm") / f"{SHM_PREFIX}test-orphan-{os.getpid()}"
    held = Path("/dev/shm") / f"{SHM_PREFIX}test-held-{os.getpid()}"
    orphan.write_bytes(b"x")
    held.write_bytes(b"x")
    try:
        with held.open("rb"):
            removed = clean_shared_memory()
            assert orphan in removed and not orphan.exists()
            assert held.exists() and held not in removed
    finally:
        orphan.unlink(missing_ok=True)
        held.unlink(missing_ok=True)
