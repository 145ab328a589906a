"""A real Triton Inference Server on this machine, without Docker or a GPU (`make triton`, the tests).

The PyPI wheel `nvidia-pytriton` carries a complete `tritonserver` (2.51 for wheel 0.7.0, the NGC 24.10
server) with the python backend and python-backend stubs for several Python versions, but no onnxruntime
backend. So the model repository's `configs/cpu.pbtxt` (export/triton_repo.py) serves `model.onnx` through
the python backend, and this module:

1. downloads the wheel with pip (no dependencies) into `.triton/` and unpacks it;
2. copies the stub built for this Python into `backends/python/triton_python_backend_stub`;
3. builds `.triton/stubenv`, a venv with `numpy<2` (with numpy 2 the stub returns empty outputs) and the CPU
   `onnxruntime` package; its `bin` goes first on the server's PATH so the stub's embedded Python uses it,
   and this Python's `libpython` directory goes on LD_LIBRARY_PATH;
4. starts `tritonserver --model-config-name=cpu` on 127.0.0.1 (export.processes: its own process group and a
   parent-death SIGTERM, so the server never outlives this launcher, even a SIGKILLed one), waits for
   `/v2/health/ready`, and stops it with SIGTERM (SIGKILL after a bounded wait), removing the python
   backend's orphaned shared-memory files.

`serve` records the server in `<root>/tritonserver.pid` (pid and ports). A second `serve` while a
tritonserver runs (recorded, or holding one of the ports) exits with an error naming it and leaves it alone;
`stop` stops the recorded server, or else any tritonserver listening on the given ports.

    python -m export.triton_local serve --model-repository model_repository   # until Ctrl-C
    python -m export.triton_local check --model-repository model_repository   # start, wait ready, stop
    python -m export.triton_local setup                                        # install only
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import venv
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from export import processes

PYTRITON_VERSION = "0.7.0"
STUB_REQUIREMENTS = ("numpy<2", "onnxruntime")
DEFAULT_ROOT = Path(".triton")
SHM_PREFIX = "triton_python_backend_shm_region_"


class TritonSetupError(RuntimeError):
    """The local server could not be installed, started or reached in time."""


@dataclass(frozen=True)
class TritonInstall:
    """Paths of an unpacked server: everything needed to start it."""

    root: Path
    server_dir: Path  # <unpacked wheel>/pytriton/tritonserver
    stub_env: Path
    library_dirs: tuple[Path, ...]

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def backend_dir(self) -> Path:
        return self.server_dir / "backends"

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The server's environment: the stub venv first on PATH, libpython findable, no host venv leaking in."""
        env = dict(os.environ if base is None else base)
        for key in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            env.pop(key, None)
        env["PATH"] = os.pathsep.join([str(self.stub_env / "bin"), env.get("PATH", "/usr/bin:/bin")])
        libraries = [str(d) for d in self.library_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libraries.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
        env.setdefault("OMP_NUM_THREADS", "1")
        return env


def _log(message: str) -> None:
    print(f"[triton] {message}", file=sys.stderr, flush=True)


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _libpython_dirs() -> tuple[Path, ...]:
    """Directories holding this interpreter's shared libpython, which the stub links against."""
    name = f"libpython{_python_tag()}.so.1.0"
    candidates = [sysconfig.get_config_var("LIBDIR"), "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
    found = tuple(Path(d) for d in candidates if d and (Path(d) / name).exists())
    if not found:
        raise TritonSetupError(
            f"{name} not found (looked in {candidates}); the python backend stub needs a Python built with "
            "--enable-shared (Debian/Ubuntu: apt-get install libpython3.x; pyenv: "
            'PYTHON_CONFIGURE_OPTS="--enable-shared")'
        )
    return found[:1]


def _run(command: list[str], *, timeout: float) -> None:
    _log(" ".join(command))
    try:
        subprocess.run(command, check=True, timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise TritonSetupError(f"command failed: {' '.join(command)}: {exc}") from exc


def install(root: Path = DEFAULT_ROOT, *, quiet: bool = False) -> TritonInstall:
    """Fetch and unpack the server and build the stub environment once; later calls reuse them."""
    root = root.resolve()
    marker = root / "installed.json"
    wanted = {
        "pytriton": PYTRITON_VERSION,
        "python": _python_tag(),
        "stub_requirements": list(STUB_REQUIREMENTS),
    }
    server_dir = root / "server" / "pytriton" / "tritonserver"
    stub_env = root / "stubenv"
    root.mkdir(parents=True, exist_ok=True)
    # One installer at a time (parallel test runs on a fresh clone): the others wait, then reuse it.
    with (root / "install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (
            marker.exists() and json.loads(marker.read_text()) == wanted and (server_dir / "bin").exists()
        ):
            _install(root, marker, wanted, server_dir, stub_env, quiet=quiet)
    return TritonInstall(root=root, server_dir=server_dir, stub_env=stub_env, library_dirs=_libpython_dirs())


def _install(
    root: Path, marker: Path, wanted: dict, server_dir: Path, stub_env: Path, *, quiet: bool
) -> None:
    """Download and unpack the wheel, install the stub for this Python, build the stub environment."""
    tag = _python_tag()
    marker.unlink(missing_ok=True)
    wheels = root / "wheels"
    pip_quiet = ["-q"] if quiet else []
    pattern = f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"
    if not list(wheels.glob(pattern)):
        _run(
            [sys.executable, "-m", "pip", "download", *pip_quiet, "--no-deps",
             f"nvidia-pytriton=={PYTRITON_VERSION}", "-d", str(wheels)],
            timeout=900,
        )  # fmt: skip
    wheel = sorted(wheels.glob(pattern))[-1]
    _log(f"unpacking {wheel.name}")
    shutil.rmtree(root / "server", ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [
            m for m in archive.namelist() if m.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/"))
        ]
        archive.extractall(root / "server", members)
    stub = server_dir / "python_backend_stubs" / tag / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonSetupError(
            f"nvidia-pytriton {PYTRITON_VERSION} has no python-backend stub for Python {tag}"
        )
    shutil.copy2(stub, server_dir / "backends" / "python" / "triton_python_backend_stub")
    for executable in (
        server_dir / "bin" / "tritonserver",
        server_dir / "backends/python/triton_python_backend_stub",
    ):
        executable.chmod(0o755)

    _log(f"building the stub environment {stub_env} ({', '.join(STUB_REQUIREMENTS)})")
    shutil.rmtree(stub_env, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(stub_env)
    _run(
        [str(stub_env / "bin" / "python"), "-m", "pip", "install", *pip_quiet, *STUB_REQUIREMENTS],
        timeout=900,
    )
    marker.write_text(json.dumps(wanted))


def _mapped_paths() -> set[str]:
    """Shared-memory files some live process still maps or holds open (never delete those)."""
    held: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (proc / "maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    held.add(line[line.index("/dev/shm/") :].split(" (deleted)")[0])
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("/dev/shm/"):
                        held.add(target)
    return held


def clean_shared_memory() -> list[Path]:
    """Remove python-backend shared-memory regions left by killed servers (those no process holds)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    leftovers = list(shm.glob(SHM_PREFIX + "*"))
    if not leftovers:
        return []
    held = _mapped_paths()
    removed = []
    for path in leftovers:
        if str(path) not in held:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


@dataclass
class TritonServer:
    """One tritonserver process over a model repository. Use as a context manager: it always stops."""

    install: TritonInstall
    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_config_name: str = "cpu"
    log_path: Path | None = None
    exit_timeout_s: int = 5
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            str(self.install.binary),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self.install.backend_dir}",
            f"--model-config-name={self.model_config_name}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        if self.process is not None and self.process.poll() is None:
            raise TritonSetupError("server already running")
        if not self.repository.is_dir():
            raise TritonSetupError(f"no model repository at {self.repository} (run `make export` first)")
        missing = [
            model.name
            for model in sorted(self.repository.iterdir())
            if (model / "1").is_dir() and not (model / "configs" / f"{self.model_config_name}.pbtxt").exists()
        ]
        if missing:
            raise TritonSetupError(
                f"models {missing} have no configs/{self.model_config_name}.pbtxt; re-export the repository"
            )
        clean_shared_memory()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_path.open("ab")
        else:
            output = None
        try:
            # A process group of its own: Ctrl-C in a terminal reaches us, and we stop the server in order.
            # SIGTERM when we die: Triton then exits within --exit-timeout-secs and stops its stubs.
            self.process = processes.popen(
                self.command(),
                death_signal=signal.SIGTERM,
                env=self.install.environment(),
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                stdin=subprocess.DEVNULL,
            )
        finally:
            if output is not None:
                output.close()
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonSetupError(
                    f"tritonserver exited with code {self.process.returncode}{self._log_hint()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TritonSetupError(f"tritonserver not ready after {timeout_s:.0f}s{self._log_hint()}")

    def _log_hint(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return f" (log {self.log_path}):\n" + "\n".join(tail)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, wait for Triton's own exit timeout, then SIGKILL the whole process group."""
        process, self.process = self.process, None
        if process is None:
            return None
        wait_s = timeout_s if timeout_s is not None else self.exit_timeout_s + 10
        # SIGTERM to the server only (it stops its stubs in order); the SIGKILL sweep takes the whole group,
        # so no stub outlives a killed server.
        returncode = processes.stop(process, wait_s, whole_group=False)
        clean_shared_memory()
        return returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _pid_file(root: Path) -> Path:
    return root / "tritonserver.pid"


@dataclass(frozen=True)
class RunningServer:
    """A live tritonserver process and the ports it was started on (or is seen listening on)."""

    pid: int
    ports: tuple[int, ...]

    def describe(self) -> str:
        return f"a tritonserver (pid {self.pid}) already serves on ports {', '.join(map(str, self.ports))}"


def _is_live_tritonserver(pid: int) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return process.name() == "tritonserver" and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def recorded_server(pid_file: Path) -> RunningServer | None:
    """The server a `serve` recorded in `pid_file` ("pid http grpc metrics"), if it still runs."""
    try:
        fields = [int(f) for f in pid_file.read_text().split()]
    except (OSError, ValueError):
        return None
    if not fields or not _is_live_tritonserver(fields[0]):
        return None
    return RunningServer(fields[0], tuple(fields[1:]))


def servers_on_ports(ports: Iterable[int]) -> list[RunningServer]:
    """tritonserver processes listening on any of `ports` (recorded or not: a pid file can be lost)."""
    import psutil

    wanted = set(ports)
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "tritonserver":
            continue
        try:
            listening = {
                c.laddr.port for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
            }
        except psutil.Error:
            continue
        if listening & wanted and _is_live_tritonserver(process.pid):
            found.append(RunningServer(process.pid, tuple(sorted(listening & wanted))))
    return found


def running_server(pid_file: Path, ports: Iterable[int]) -> RunningServer | None:
    """The server a new `serve` would collide with: the recorded one, else one holding our ports."""
    return recorded_server(pid_file) or next(iter(servers_on_ports(ports)), None)


def _terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM, wait, then SIGKILL (its process group when it leads one, as servers `serve` started do)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _is_live_tritonserver(pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def stop_servers(pid_file: Path, ports: Iterable[int], timeout_s: float = 20.0) -> list[RunningServer]:
    """`make triton-stop`: stop the recorded server, or else every tritonserver on `ports`; returns them."""
    recorded = recorded_server(pid_file)
    targets = [recorded] if recorded else servers_on_ports(ports)
    for server in targets:
        _terminate(server.pid, timeout_s)
    pid_file.unlink(missing_ok=True)
    clean_shared_memory()
    return targets


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    pid_file = args.pid_file or _pid_file(args.root)
    ports = (args.http_port, args.grpc_port, args.metrics_port)
    if args.command == "stop":
        return _stop(pid_file, ports)
    if args.command in ("serve", "check"):
        running = running_server(pid_file, ports)
        if running is not None:
            _log(f"error: {running.describe()}; `make triton-stop` stops it")
            return 1
    try:
        installed = install(args.root)
        if args.command == "setup":
            _log(f"installed under {installed.root}")
            return 0
        return _serve(args, installed, pid_file, ports)
    except TritonSetupError as exc:
        _log(f"error: {exc}")
        return 1


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.triton_local", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["setup", "serve", "check", "stop"],
        help="setup: download and unpack only; serve: run until Ctrl-C/SIGTERM; "
        "check: start, wait until ready, stop; stop: stop the server `serve` recorded",
    )
    parser.add_argument("--model-repository", "--repository", dest="repository", type=Path,
                        default=Path("model_repository"))  # fmt: skip
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the server is unpacked")
    parser.add_argument("--pid-file", type=Path, default=None,
                        help="where `serve` records the server (default: <root>/tritonserver.pid)")  # fmt: skip
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-config-name", default="cpu")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    return parser.parse_args(argv)


def _stop(pid_file: Path, ports: tuple[int, int, int]) -> int:
    stopped = stop_servers(pid_file, ports)
    for found in stopped:
        _log(f"stopped the tritonserver with pid {found.pid} (ports {', '.join(map(str, found.ports))})")
    if not stopped:
        _log(
            f"no tritonserver runs (none recorded in {pid_file}, none on ports {', '.join(map(str, ports))})"
        )
    return 0


def _serve(
    args: argparse.Namespace, installed: TritonInstall, pid_file: Path, ports: tuple[int, int, int]
) -> int:
    """`serve` (until Ctrl-C, SIGTERM or the server's exit) or `check` (until ready), with the server recorded
    in `pid_file` meanwhile."""
    server = TritonServer(
        installed,
        args.repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_config_name=args.model_config_name,
        log_path=installed.root / "tritonserver.log" if args.command == "check" else None,
    )
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    with server:
        assert server.process is not None
        own_record = f"{server.process.pid} {' '.join(map(str, ports))}\n"
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(own_record)
        try:
            server.wait_ready(args.ready_timeout)
            _log(f"ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics :{server.metrics_port}")
            if args.command == "check":
                return 0
            _log("Ctrl-C to stop")
            while not stop_requested and server.process.poll() is None:
                time.sleep(0.5)
            if server.process.poll() is not None:
                _log(f"tritonserver exited with code {server.process.returncode}")
                return 0 if server.process.returncode == 0 else 1
        except KeyboardInterrupt:
            pass
        finally:
            _log("stopping")
            with contextlib.suppress(OSError):
                if pid_file.read_text() == own_record:  # never another server's record
                    pid_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
