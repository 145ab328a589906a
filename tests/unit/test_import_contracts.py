"""The import contracts in pyproject.toml (`lint-imports`, part of `make lint`) hold for the tree and catch a
forbidden import: each case copies the packages, injects one arrow that runs the wrong way, and expects the
named contract to break."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# lint-imports puts the working directory first on sys.path: run there, it analyses the copy, not the install.
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c(['--no-cache'])"]


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LINT, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_tree_keeps_every_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "injected", "contract", "arrow"),
    [
        (
            "export/dtypes.py",
            "import gateway.app",
            "The build step imports no gateway runtime or server module",
            "export.dtypes -> gateway.app",
        ),
        (
            "export/validate.py",
            "from gateway.backends import onnx_local",
            "The build step imports no gateway runtime or server module",
            "export.validate -> gateway.backends.onnx_local",
        ),
        (
            "gateway/backends/health.py",
            "from gateway import config",
            "Runtimes know nothing above the scorer interface",
            "gateway.backends.health -> gateway.config",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, injected: str, contract: str, arrow: str
):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("gateway", "export"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{injected}  # the arrow under test\n")

    result = lint(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and arrow in broken, result.stdout
