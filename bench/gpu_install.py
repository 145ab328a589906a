"""What the offline GPU check installs, and how: only what the interpreter lacks, from the bundle's wheels.

The GPU machine's image has its own Python with torch, transformers and the CPU `onnxruntime`, and no network.
The plan compares each requirement with what that interpreter has (asked in a child without PYTHONPATH, so a
folder installed earlier does not count) and takes a wheel from the bundle only where the interpreter has no
distribution satisfying it, then follows that wheel's own requirements the same way. pip is then called with
`--no-index --no-deps` and the wheel files as arguments, into a `--target` folder put first on PYTHONPATH (the
image is left as it is), with pip's configuration files and PIP_* variables cut off, so no find-links or index
from a pip.conf can reach for the network.

onnxruntime-gpu looks for the pip-installed CUDA libraries in `<its site-packages>/nvidia/` (preload_dlls):
the target gets an `nvidia` link to the interpreter's, where torch's CUDA wheels put them.

Standard library and `packaging` only (the image has packaging; pip itself needs it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

STATE_FILE = ".bundle-install.json"


class InstallError(Exception):
    """The install could not be done (a wheel missing from the bundle, pip failed): the message says which."""


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # canonical
    version: Version
    requires: tuple[Requirement, ...]


def read_wheel(path: Path) -> Wheel:
    """Name, version and requirements from the wheel's METADATA (no install, no pip)."""
    with zipfile.ZipFile(path) as archive:
        member = next((n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        if member is None:
            raise InstallError(f"{path.name}: no .dist-info/METADATA inside: not a wheel")
        meta = Parser().parsestr(archive.read(member).decode("utf-8"))
    return Wheel(
        path=path,
        name=canonicalize_name(meta["Name"]),
        version=Version(meta["Version"]),
        requires=tuple(Requirement(r) for r in meta.get_all("Requires-Dist") or []),
    )


def read_wheels(folder: Path) -> dict[str, Wheel]:
    wheels: dict[str, Wheel] = {}
    for path in sorted(folder.glob("*.whl")):
        wheel = read_wheel(path)
        if wheel.name in wheels:
            raise InstallError(
                f"two wheels of {wheel.name} in {folder}: {wheels[wheel.name].path.name}, {path.name}"
            )
        wheels[wheel.name] = wheel
    return wheels


INSTALLED_CODE = (
    "import importlib.metadata as m, json\n"
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}))"
)


def clean_env(extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """The environment pip and the probes run in: no PIP_* settings, no pip.conf, PYTHONPATH only as given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update({"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in extra_path)
    return env


def installed_versions(python: str) -> dict[str, str]:
    """The distributions `python` has by itself (canonical name -> version)."""
    done = subprocess.run(
        [python, "-c", INSTALLED_CODE], capture_output=True, text=True, timeout=120, env=clean_env()
    )
    if done.returncode != 0:
        raise InstallError(f"could not list the packages of {python}: {done.stderr.strip()[-500:]}")
    return {canonicalize_name(k): v for k, v in json.loads(done.stdout).items()}


@dataclass
class InstallPlan:
    install: list[Wheel] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # satisfied by the interpreter: name -> its version
    problems: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "installed_from_bundle": [f"{w.name}=={w.version}" for w in self.install],
            "kept_from_the_interpreter": dict(sorted(self.kept.items())),
            "problems": list(self.problems),
        }


def plan_install(
    requirements: Sequence[Requirement],
    wheels: Mapping[str, Wheel],
    installed: Mapping[str, str],
    marker_env: Mapping[str, str] | None = None,
) -> InstallPlan:
    """Take a bundle wheel for each requirement the interpreter does not satisfy, and for theirs in turn."""
    plan = InstallPlan()
    chosen: dict[str, Wheel] = {}
    queue: list[tuple[Requirement, str]] = [(r, "the check") for r in requirements]
    while queue:
        req, wanted_by = queue.pop(0)
        if req.marker is not None and not req.marker.evaluate({**(marker_env or {}), "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in chosen:
            if not req.specifier.contains(chosen[name].version, prereleases=True):
                plan.problems.append(
                    f"{name} {chosen[name].version} (bundle) does not satisfy {req} ({wanted_by})"
                )
            continue
        have = installed.get(name)
        if have is not None and req.specifier.contains(Version(have), prereleases=True):
            plan.kept[name] = have
            continue
        wheel = wheels.get(name)
        if wheel is None or not req.specifier.contains(wheel.version, prereleases=True):
            had = f"the interpreter has {have}" if have else "the interpreter has none"
            offer = f"the bundle has {wheel.version}" if wheel else "the bundle carries none"
            plan.problems.append(f"{req} ({wanted_by}): {had}, {offer}")
            continue
        chosen[name] = wheel
        plan.kept.pop(name, None)
        queue.extend((r, f"{name} {wheel.version}") for r in wheel.requires)
    plan.install = sorted(chosen.values(), key=lambda w: w.name)
    return plan


def pip_command(python: str, target: Path, wheels: Sequence[Wheel]) -> list[str]:
    """Wheel files only, no index, no dependency resolution: nothing for pip to look up anywhere."""
    return [
        python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
        "--disable-pip-version-check", "--upgrade", "--target", str(target), *(str(w.path) for w in wheels),
    ]  # fmt: skip


NVIDIA_CODE = "import json, nvidia\nprint(json.dumps(list(nvidia.__path__)))"


def link_nvidia(python: str, target: Path) -> str:
    """Give the target an `nvidia/` (a link to the interpreter's pip-installed CUDA libraries) so that
    onnxruntime-gpu, installed there, finds them; the line says what was done."""
    link = target / "nvidia"
    if link.is_symlink() or link.exists():
        return f"{link} already there ({os.readlink(link) if link.is_symlink() else 'a folder'})"
    done = subprocess.run(
        [python, "-c", NVIDIA_CODE], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    if done.returncode != 0:
        return (
            "the interpreter has no pip-installed CUDA libraries (no `nvidia` package): the system's are used"
        )
    folders = [Path(p) for p in json.loads(done.stdout)]
    best = max(folders, key=lambda p: len(list(p.iterdir())) if p.is_dir() else -1)
    link.symlink_to(best, target_is_directory=True)
    return f"{link} -> {best} ({', '.join(sorted(p.name for p in best.iterdir())[:12])})"


def install(
    plan: InstallPlan, python: str, target: Path, *, pip: Sequence[str] | None = None
) -> dict[str, Any]:
    """Run the plan (once: a target that holds this plan already is kept). `pip` replaces the command's
    `python -m pip` (the unit tests pass a fake one)."""
    if plan.problems:
        raise InstallError(
            "the bundle cannot complete this interpreter:\n  - " + "\n  - ".join(plan.problems)
        )
    target.mkdir(parents=True, exist_ok=True)
    state = target / STATE_FILE
    wanted = sorted(w.path.name for w in plan.install)
    record: dict[str, Any] = {**plan.record(), "target": str(target)}
    if state.is_file() and json.loads(state.read_text()).get("wheels") == wanted:
        record["pip"] = "already installed by an earlier run"
    elif plan.install:
        command = pip_command(python, target, plan.install)
        if pip is not None:
            command = [*pip, *command[3:]]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=clean_env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"pip could not run: {exc}") from exc
        if done.returncode != 0:
            raise InstallError(
                f"pip failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}"
            )
        record["pip"] = " ".join(command[:12]) + f" ... ({len(plan.install)} wheels)"
        state.write_text(json.dumps({"wheels": wanted}) + "\n")
    else:
        record["pip"] = "nothing to install"
    record["nvidia"] = link_nvidia(python, target)
    return record
