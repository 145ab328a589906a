"""Small real wheels made on the spot (pip installs them like any other), and a fake pip that records its call."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
import zipfile
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel `name` with one module `<name>_mod` whose VERSION is `version`."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}_mod.py": f"VERSION = {version!r}\n".encode(),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: fake\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        record = [_record_line(m, d) for m, d in files.items()] + [f"{info}/RECORD,,"]
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def fake_pip(folder: Path, log: Path) -> list[str]:
    """A `pip` command prefix that writes its argv and environment to `log` and installs nothing."""
    script = folder / "fake_pip.py"
    script.write_text(
        "import json, os, sys\n"
        f"open({str(log)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], 'env': dict(os.environ)}}))\n"
    )
    return [sys.executable, str(script)]


def fake_python(folder: Path, nvidia: Path) -> str:
    """An interpreter stand-in that answers the `import nvidia` question with `nvidia` as the package's path."""
    script = folder / "fake_python"
    script.write_text(f"#!/bin/sh\necho '{json.dumps([str(nvidia)])}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    assert os.access(script, os.X_OK)
    return str(script)
