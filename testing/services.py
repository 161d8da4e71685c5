"""Real services for the tests and benchmarks, started on loopback and stopped by PID: PostgreSQL,
Redis and the API."""

import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from testing.waiting import until


def free_port() -> int:
    """A free port outside the kernel's ephemeral range and Ray's worker ports (10002-19999), so
    that the processes a service starts before it binds cannot take it meanwhile."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 20000-30000")


def _stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class PgServer:
    bindir: str
    port: int

    def create_db(self, name: str) -> str:
        """Creates a database; returns its SQLAlchemy URL."""
        subprocess.run([f"{self.bindir}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True)
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"


@contextmanager
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    assert bindirs, "PostgreSQL is not installed (scripts/test.sh installs it)"
    bindir = bindirs[-1]
    root = tempfile.mkdtemp(prefix="dotnet-scripts-pg-")
    shutil.chown(root, "postgres", "postgres")
    data = os.path.join(root, "data")
    as_pg = dict(user="postgres", group="postgres", extra_groups=[])
    subprocess.run([f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True, cwd=root, **as_pg)
    port = free_port()
    proc = subprocess.Popen(
        [f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", root,
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root, **as_pg,
    )
    try:
        until(lambda: subprocess.run([f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                                     capture_output=True).returncode == 0,
              60, f"PostgreSQL accepts connections on port {port}", interval=0.1)
        yield PgServer(bindir, port)
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Service:
    url: str
    log: Path  #: everything the service and its Ray workers printed
    workdir: Path
    pid: int = 0  #: `python -m serve_app`, the driver of its local Ray

    def ray_logs(self) -> Path:
        """The logs folder of the Ray session its process started (from the files it holds open)."""
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if "/logs/" in target and "/session_" in target:
                return Path(target[:target.index("/logs/") + len("/logs")])
        raise RuntimeError("the service holds no Ray session log open")


@contextmanager
def api_service(workdir: Path, **env_overrides: str):
    """`python -m serve_app` as the README starts it; yields it once healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PORT=str(port), **env_overrides)
    log_path = workdir / "service.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "serve_app"], cwd=workdir, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"

        def not_started() -> str:
            return "service did not start:\n" + log_path.read_text()[-4000:]

        def healthy() -> bool:
            try:
                if httpx.get(base + "/actuator/health", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(not_started())
            return False

        try:
            until(healthy, 120, not_started, interval=0.5)
            yield Service(base, log_path, workdir, proc.pid)
        finally:
            _stop(proc)


@contextmanager
def redis_server():
    """A throw-away Redis on 127.0.0.1; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        until(listening, 30, f"Redis listens on port {port}")
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        _stop(proc, signal.SIGTERM)
