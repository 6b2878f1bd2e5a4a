"""A local ``tritonserver`` for tests/test_triton.py: find the binary, start it on a free port, stop it.

:func:`find_tritonserver` locates the ``tritonserver`` that ``nvidia-pytriton`` ships (CPU +
Python backend; scripts/setup_triton_env.sh installs it in ``.venv/triton-env``) or an NGC
install; :func:`start_server` runs it over a model repository written by
rsvl_export/triton.py and waits until it is ready.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

PathLike = str | os.PathLike[str]


class TritonUnavailable(RuntimeError):
    """No runnable ``tritonserver`` (or no numpy<2 Python for its Python backend) here."""


@dataclass
class TritonInstall:
    """A runnable ``tritonserver``: binary, backends, the Python stub and its environment."""

    binary: Path
    backends: Path
    stub: Path | None = None
    libs: Path | None = None
    python_env: Path | None = None


def _numpy_major(python: Path) -> int | None:
    try:
        out = subprocess.run([str(python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                             text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return int(out.stdout.strip().split(".")[0])


def _pytriton_dirs(env: Path | None) -> list[Path]:
    import importlib.util

    dirs = []
    if env is not None:
        dirs += sorted(env.glob("lib/python*/site-packages/pytriton/tritonserver"))
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "tritonserver")
    return [d for d in dirs if (d / "bin" / "tritonserver").is_file()]


def find_tritonserver(python_env: PathLike | None = None) -> TritonInstall:
    """Locate ``tritonserver`` and a Python environment for its Python backend.

    Binary: ``$RSVL_TRITONSERVER``, else the one ``nvidia-pytriton`` ships (in ``python_env`` or
    this interpreter's packages), else ``tritonserver`` on PATH / ``/opt/tritonserver`` (NGC).
    Python environment (its ``bin/`` goes first on the server's PATH; the stub embeds that
    Python and needs numpy < 2): ``python_env``, ``$RSVL_TRITON_PYTHON_ENV``,
    ``<sys.prefix>/triton-env``, or this environment when its numpy is < 2.
    Raises :class:`TritonUnavailable` with the fix when something is missing.
    """
    env = python_env or os.environ.get("RSVL_TRITON_PYTHON_ENV")
    env_path = Path(env) if env else None
    if env_path is None and (Path(sys.prefix) / "triton-env" / "bin").is_dir():
        env_path = Path(sys.prefix) / "triton-env"
    if env_path is None:
        env_path = Path(sys.prefix)
    python = env_path / "bin" / "python3"
    major = _numpy_major(python) if python.exists() else None
    if major is None or major >= 2:
        raise TritonUnavailable(
            f"the Triton Python backend stub needs numpy < 2 in the Python that runs model.py; {python} has "
            f"{'no numpy' if major is None else f'numpy {major}.x'}. Create an environment with "
            "`pip install nvidia-pytriton 'numpy<2' onnxruntime tokenizers` (plus rsvl) and pass it as "
            "python_env / RSVL_TRITON_PYTHON_ENV")
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    explicit = os.environ.get("RSVL_TRITONSERVER")
    if explicit:
        b = Path(explicit)
        return TritonInstall(b, b.parent.parent / "backends", python_env=env_path)
    for d in _pytriton_dirs(env_path):
        stub = d / "python_backend_stubs" / v / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonUnavailable(f"nvidia-pytriton in {d} has no Python backend stub for Python {v}")
        libs = d.parent.parent / "nvidia_pytriton.libs"
        return TritonInstall(d / "bin" / "tritonserver", d / "backends", stub,
                             libs if libs.is_dir() else None, env_path)
    which = shutil.which("tritonserver") or ("/opt/tritonserver/bin/tritonserver"
                                             if Path("/opt/tritonserver/bin/tritonserver").is_file() else None)
    if which:
        b = Path(which).resolve()
        return TritonInstall(b, b.parent.parent / "backends", python_env=env_path)
    raise TritonUnavailable("no tritonserver binary: `pip install nvidia-pytriton` (CPU + Python backend), use an "
                            "NGC tritonserver container, or set RSVL_TRITONSERVER=/path/to/tritonserver")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class TritonServer:
    """A running ``tritonserver`` started by :func:`start_server`; :meth:`stop` ends it."""

    process: subprocess.Popen
    http_port: int
    host: str
    log_path: Path
    workdir: Path

    @property
    def url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server (it stops its Python stubs), then SIGKILL its process group if needed."""
        p = self.process
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # the server's process group: our own session, so only what this server started
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server_backends(install: TritonInstall, workdir: Path) -> Path:
    """A backends folder whose python/ has the stub for this Python (pytriton keeps stubs apart)."""
    if install.stub is None:
        return install.backends
    b = workdir / "backends" / "python"
    b.mkdir(parents=True, exist_ok=True)
    for f in (install.backends / "python").iterdir():
        (b / f.name).unlink(missing_ok=True)
        (b / f.name).symlink_to(f)
    (b / "triton_python_backend_stub").unlink(missing_ok=True)
    (b / "triton_python_backend_stub").symlink_to(install.stub)
    return b.parent


def start_server(repo_dir: PathLike, models: Sequence[str] | None = None, *, workdir: PathLike,
                 install: TritonInstall | None = None, host: str = "127.0.0.1", http_port: int | None = None,
                 ready_timeout: float = 120.0, extra_args: Sequence[str] = ()) -> TritonServer:
    """Start ``tritonserver`` on ``host`` (HTTP only, free port by default) serving ``models``
    (explicit model control; None: every model of the repository) and wait until ready.

    Raises :class:`TritonUnavailable` when the binary cannot run here, and RuntimeError (with the
    server log) when it runs but a model does not load or readiness times out."""
    import urllib.error
    import urllib.request

    install = install or find_tritonserver()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    port = http_port or free_port(host)
    cmd = [str(install.binary), f"--model-repository={Path(repo_dir).resolve()}",
           f"--backend-directory={_server_backends(install, work)}", f"--http-address={host}",
           f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false", "--exit-on-error=true",
           "--exit-timeout-secs=5", "--log-verbose=0", *extra_args]
    if models is not None:
        cmd += ["--model-control-mode=explicit", *[f"--load-model={m}" for m in models]]
    env = dict(os.environ)
    if install.libs is not None:
        env["LD_LIBRARY_PATH"] = ":".join(x for x in (str(install.libs), env.get("LD_LIBRARY_PATH")) if x)
    if install.python_env is not None:
        env["PATH"] = f"{install.python_env / 'bin'}:{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    log_path = work / "tritonserver.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=work,
                                start_new_session=True)
    server = TritonServer(proc, port, host, log_path, work)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            tail = server.log_tail()
            server.stop()
            if rc in (126, 127) or "error while loading shared libraries" in tail or "GLIBC" in tail:
                raise TritonUnavailable(f"tritonserver cannot run here (exit {rc}):\n{tail}")
            raise RuntimeError(f"tritonserver exited with {rc}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    tail = server.log_tail()
    server.stop()
    raise RuntimeError(f"tritonserver not ready after {ready_timeout:.0f} s:\n{tail}")
