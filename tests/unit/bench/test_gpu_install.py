"""The offline install: only what the interpreter lacks, from the bundle's wheels, and never an index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_wheels import fake_pip, fake_python, make_wheel
from packaging.requirements import Requirement

from bench import gpu_install
from bench.gpu_install import InstallError, install, plan_install, read_wheels


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    make_wheel(folder, "gpu-runtime", "1.31.1", ("helper-lib>=2", "present-lib>=1"))
    make_wheel(folder, "helper-lib", "2.5.0", ("present-lib>=1; python_version >= '3'",))
    make_wheel(folder, "web-lib", "0.9.0")
    make_wheel(folder, "present-lib", "3.0.0")
    return folder


def names(plan: gpu_install.InstallPlan) -> list[str]:
    return [f"{w.name}=={w.version}" for w in plan.install]


def test_the_plan_takes_only_what_the_interpreter_lacks_and_what_those_need(wheels: Path) -> None:
    plan = plan_install(
        [Requirement("gpu-runtime==1.31.1"), Requirement("web-lib>=0.5")],
        read_wheels(wheels),
        installed={"present-lib": "1.2", "web-lib": "0.7"},
    )
    assert names(plan) == ["gpu-runtime==1.31.1", "helper-lib==2.5.0"]  # present-lib 1.2 satisfies >=1
    assert plan.kept == {"web-lib": "0.7", "present-lib": "1.2"} and not plan.problems


def test_an_exact_pin_replaces_another_installed_version(wheels: Path) -> None:
    """The image's own onnx (say) is not the converter's: the bundle's exact version goes first on the path."""
    plan = plan_install([Requirement("gpu-runtime==1.31.1")], read_wheels(wheels), {"gpu-runtime": "1.30.0"})
    assert "gpu-runtime==1.31.1" in names(plan)


def test_a_requirement_neither_side_satisfies_is_a_problem_and_nothing_is_installed(
    wheels: Path, tmp_path: Path
) -> None:
    plan = plan_install(
        [Requirement("web-lib>=1.0"), Requirement("absent-lib")], read_wheels(wheels), {"web-lib": "0.7"}
    )
    assert len(plan.problems) == 2
    assert "web-lib>=1.0 (the check): the interpreter has 0.7, the bundle has 0.9.0" in plan.problems
    assert "absent-lib (the check): the interpreter has none, the bundle carries none" in plan.problems
    log = tmp_path / "pip.json"
    with pytest.raises(InstallError, match="cannot complete"):
        install(plan, sys.executable, tmp_path / "site", pip=fake_pip(tmp_path, log))
    assert not log.exists()


def test_pip_gets_wheel_files_no_index_and_no_configuration(
    wheels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what a user's environment could point pip at: all of it must be cut off
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.example/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "https://wheels.example/")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    plan = plan_install([Requirement("gpu-runtime==1.31.1")], read_wheels(wheels), {"present-lib": "3.0.0"})
    log = tmp_path / "pip.json"
    nvidia = tmp_path / "image-site" / "nvidia"
    (nvidia / "cu13" / "lib").mkdir(parents=True)
    target = tmp_path / "site"
    record = install(plan, fake_python(tmp_path, nvidia), target, pip=fake_pip(tmp_path, log))
    call = json.loads(log.read_text())
    argv, env = call["argv"], call["env"]
    assert argv[:2] == ["install", "--no-index"] and "--no-deps" in argv
    assert argv[argv.index("--target") + 1] == str(target)
    given = [a for a in argv if not a.startswith("-") and a not in ("install", str(target))]
    assert sorted(Path(a).name for a in given) == sorted(w.path.name for w in plan.install)
    assert all(Path(a).parent == wheels for a in given)  # files of the bundle: nothing to look up anywhere
    assert not any(
        "http" in a or a.startswith(("--index-url", "--extra-index-url", "--find-links")) for a in argv
    )
    assert env["PIP_NO_INDEX"] == "1" and env["PIP_CONFIG_FILE"] == os.devnull
    assert "PIP_INDEX_URL" not in env and "PIP_FIND_LINKS" not in env and "PYTHONPATH" not in env
    # onnxruntime-gpu, installed in the target, finds the image's CUDA libraries beside it
    assert (target / "nvidia").resolve() == nvidia.resolve() and "cu13" in record["nvidia"]
    assert record["installed_from_bundle"] == ["gpu-runtime==1.31.1", "helper-lib==2.5.0"]


def test_the_real_pip_installs_the_plan_offline_once(wheels: Path, tmp_path: Path) -> None:
    """Real pip, in a network namespace without network: the wheels land in the target, importable from it."""
    plan = plan_install([Requirement("gpu-runtime==1.31.1")], read_wheels(wheels), {})
    target = tmp_path / "site"
    code = (
        "import sys; from pathlib import Path; from packaging.requirements import Requirement\n"
        "from bench import gpu_install as g\n"
        f"plan = g.plan_install([Requirement('gpu-runtime==1.31.1')], g.read_wheels(Path({str(wheels)!r})), {{}})\n"
        f"print(g.install(plan, sys.executable, Path({str(target)!r}))['pip'])\n"
    )
    command = [sys.executable, "-c", code]
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-rn", *command]
    elif os.environ.get("CI"):
        pytest.fail("unshare -rn (a network namespace without network) is not available")
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "--no-index" in done.stdout and "(3 wheels)" in done.stdout
    assert (target / "gpu_runtime_mod.py").is_file() and (target / "present_lib_mod.py").is_file()
    again = install(plan, sys.executable, target)  # a re-run keeps the target as it is
    assert again["pip"] == "already installed by an earlier run"
    assert names(plan) == ["gpu-runtime==1.31.1", "helper-lib==2.5.0", "present-lib==3.0.0"]


def test_two_versions_of_one_wheel_are_refused(wheels: Path) -> None:
    make_wheel(wheels, "web-lib", "0.8.0")
    with pytest.raises(InstallError, match="two wheels of web-lib"):
        read_wheels(wheels)
