"""Docker's engine: a sandbox as a container made, attached to and started through the Engine
API. The container's configuration is a frozen record turned into the API's create request by a
pure function (`container_config`); the container is named after the job, killed by name on
timeout and always removed afterwards."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from pathlib import Path

import docker
import requests
from docker.errors import DockerException

from executors import network
from executors.engines.base import Engine, Exit, Stdio
from executors.protocol import runner_env
from executors.spec import HOSTS, LABEL, SandboxError, SandboxGone, SandboxSpec, labels

log = logging.getLogger(__name__)

def container_config(spec: SandboxSpec, gvisor_netns: bool = False, node_cpus: int | None = None,
                     egress_network: str = "") -> dict:
    """The Docker Engine API's body for creating a spec's container (`POST /containers/create`,
    named `spec.name`): what `docker run --interactive` with the same options would send.

    `gvisor_netns`: Docker's runtime "runsc" runs with `--network=none` (`gvisor_makes_netns`), so
    gVisor starts each sandbox, its gofer too, in a new network namespace of its own, empty but for
    gVisor's loopback, whatever namespace Docker made for it. Docker then makes none (network mode
    "host": Docker's namespace is what runsc ignores; the sandbox's is still its own): ~0.1 core-s
    less per container (a namespace made, set up by a re-exec of dockerd, and torn down). The
    sandbox reads the node's files at /etc/hosts and /etc/resolv.conf (`ETC_DIR`: no names, no
    name server) instead of copies of the host's.

    `node_cpus` (default: this machine's): Docker refuses a CPU quota above them, and up to all of
    them is the same limit there, so a quota above is lowered to them.

    `egress_network`: the sandbox's own network (executors/network.py), for network "egress"."""
    lim = spec.limits
    runtime, network = spec.runtime, "none"
    mounts = list(spec.mounts)
    if spec.network == "egress":
        if not egress_network:
            raise ValueError("an egress sandbox needs its network")
        network = egress_network
        if runtime == "runsc":  # gVisor's netstack cannot run here: use the container's netns
            runtime = "runsc-host-net"
    elif gvisor_netns and runtime == "runsc":
        network = "host"
        mounts += [(str(ETC_DIR / f), f"/etc/{f}") for f in ETC_FILES]
    uid, _, gid = spec.user.partition(":")
    tmpfs_opts = f"rw,nosuid,nodev,exec,uid={uid},gid={gid or uid},mode=0700"
    ulimits = {**({} if spec.gvisor else {"nproc": lim.pids}), "nofile": lim.nofile, "core": 0}
    return {
        "Image": spec.image,
        "Cmd": list(spec.command),
        "User": spec.user,
        "WorkingDir": spec.work_dir,
        "Hostname": "sandbox",
        "Env": ["DOTNET_CLI_TELEMETRY_OPTOUT=1", *[f"{k}={v}" for k, v in (*runner_env(spec), *spec.env)]],
        "Labels": labels(spec),
        # the script arrives on stdin, which closes once it has been sent
        "AttachStdin": True, "AttachStdout": True, "AttachStderr": True,
        "OpenStdin": True, "StdinOnce": True, "Tty": False,
        "HostConfig": {
            "Runtime": runtime,
            "NetworkMode": network,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
            "Tmpfs": {spec.work_dir: f"{tmpfs_opts},size={lim.disk_mb}m", "/tmp": f"{tmpfs_opts},size={lim.tmp_mb}m"},
            "Memory": lim.memory_mb << 20,
            "MemorySwap": lim.memory_mb << 20,  # RAM + swap: no swap
            "NanoCpus": round(min(lim.cpus, node_cpus or os.cpu_count() or 1) * 1e9),
            "PidsLimit": lim.pids,
            "Ulimits": [{"Name": k, "Soft": v, "Hard": v} for k, v in ulimits.items()],
            "LogConfig": {"Type": "none", "Config": {}},
            "RestartPolicy": {"Name": "no"},
            "Mounts": [{"Type": "bind", "Source": src, "Target": dst, "ReadOnly": True} for src, dst in mounts],
        },
    }


#: node files a gVisor sandbox without network reads as /etc/hosts and /etc/resolv.conf under Docker
ETC_DIR = Path("/run/dotnet-scripts/etc")
ETC_FILES = {"hosts": HOSTS, "resolv.conf": ""}
RUNTIME_CHECK_S = 30.0  #: how long what Docker says of its runtime "runsc" is taken as still true
_runtime_checked: list[float | bool] = [float("-inf"), False]  #: when, and whether gVisor makes the netns
#: a pool starts its sandboxes from many threads at once: one of them asks Docker, the rest wait
_runtime_lock = threading.Lock()


def gvisor_makes_netns() -> bool:
    """Whether Docker's runtime "runsc" runs gVisor with `--network=none` (scripts/setup.sh sets it
    so), which puts every sandbox in a network namespace of its own; then the node's files for
    `ETC_DIR` are written. False if Docker cannot tell: the sandbox gets Docker's namespace."""
    with _runtime_lock:
        if time.monotonic() - _runtime_checked[0] > RUNTIME_CHECK_S:
            try:
                ok = runsc_without_network(docker_api().info()["Runtimes"]) and _write_etc()
            except (DockerException, requests.RequestException, KeyError):
                ok = False
            _runtime_checked[:] = [time.monotonic(), ok]
        return bool(_runtime_checked[1])


def runsc_without_network(runtimes: dict) -> bool:
    """Whether Docker's runtimes (as `docker info` lists them) run "runsc" with `--network=none`
    and no other network flag; anything else (another mode, a flag split from its value) is no."""
    flags = [a.lstrip("-") for a in (runtimes.get("runsc") or {}).get("runtimeArgs") or []]
    return [f for f in flags if f.startswith("network")] == ["network=none"]


def _write_etc() -> bool:
    try:
        ETC_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in ETC_FILES.items():
            path = ETC_DIR / name
            if not path.is_file() or path.read_text() != text:
                tmp = path.with_name(f".{name}.{os.getpid()}")  # node processes may write them at once
                tmp.write_text(text)
                tmp.chmod(0o644)
                tmp.replace(path)
        return True
    except OSError as e:
        log.warning("no node files for sandboxes' /etc (%s): Docker makes their network namespaces", e)
        return False


@functools.cache
def docker_api() -> docker.APIClient:
    """The Docker Engine API of this machine (DOCKER_HOST or the local socket). Calls other than
    `docker run` go through it: a CLI process costs ~20 ms of CPU and wall time, a call ~1 ms."""
    return docker.APIClient(version="auto", timeout=30, **docker.utils.kwargs_from_env())


def split_frames(stream, out: int, err: int) -> None:
    """Copies Docker's attach stream (without a TTY: frames of 8 bytes — stream 1 or 2, three zeros,
    the length, big-endian — then that many bytes) to the descriptors of stdout and stderr, until
    the stream ends (a frame cut short ends it too)."""
    while len(head := stream.read(8)) == 8:
        fd, left = (out if head[0] == 1 else err), int.from_bytes(head[4:], "big")
        while left and (chunk := stream.read1(min(left, 65536))):
            left -= len(chunk)
            while chunk:
                chunk = chunk[os.write(fd, chunk):]


class Attached:
    """A Docker sandbox's stdio through the Engine API, with what Sandbox uses of a `Popen`:
    `docker run --interactive` without its CLI process (~0.03 core-s and ~25 MiB per sandbox).
    Its container is created, attached to and started before it returns: attached first, so no
    output is missed; started, so a pool holds only sandboxes that run. The attach stream's frames
    are split into two pipes that the readers read as they read a process's."""

    def __init__(self, spec: SandboxSpec, config: dict):
        api = docker_api()
        try:
            # by id from here on: a pooled sandbox is renamed after the job that takes it
            self.id = api.create_container_from_config(config, spec.name)["Id"]
            # docker-py hands out a SocketIO over the socket that holds its response: kept, or the
            # response's collection would close the socket
            self._io = api.attach_socket(self.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            self.sock = getattr(self._io, "_sock", self._io)
            self.sock.settimeout(None)  # never the client's 30 s (docker-py sets none): a pooled sandbox waits idle
            api.start(self.id)
        except (DockerException, requests.RequestException) as e:
            remove(spec.name)
            raise SandboxError(f"sandbox did not start: {e}") from None
        self.stdin = _SocketWriter(self.sock)
        out, self._out = os.pipe()
        err, self._err = os.pipe()
        self.stdout, self.stderr = open(out, "rb"), open(err, "rb")
        self.returncode: int | None = None
        self.detached = False  #: the attach ended: the container exited, or detach() let go of it
        self.network = ""  #: its own egress network, if any (DockerEngine.start)
        self._demux = threading.Thread(target=self._split, daemon=True)
        self._demux.start()

    def _split(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            split_frames(stream, self._out, self._err)
        except OSError:
            pass  # detached, or the engine went away
        finally:
            stream.close()
            # shut, not closed: the socket's descriptor goes with this object, so a write to stdin
            # under way in another thread fails instead of landing in a file that reused the number
            self.detach()
            self.detached = True  # before the pipes end: a reader at their end finds it so
            os.close(self._out)
            os.close(self._err)

    def poll(self) -> int | None:
        """None while its streams are open (the container runs and is attached)."""
        return None if not self.detached else (self.returncode or 0)

    def wait(self, timeout: float) -> int:
        """Waits for the container's exit; its exit code (-1 if it was removed meanwhile)."""
        self._demux.join(timeout)
        try:
            self.returncode = docker_api().wait(self.id, timeout=timeout)["StatusCode"]
        except (DockerException, requests.RequestException):
            self.returncode = -1
        return self.returncode

    def detach(self) -> None:
        """Lets go of the container's streams; the container runs on until removed."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _SocketWriter:
    """The container's stdin: closing it ends the script's input (a half-close of the attach)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)


def remove(name: str) -> bool:
    """Kills and removes a container by name; False if there was none of that name."""
    try:
        docker_api().remove_container(name, v=True, force=True)
    except docker.errors.NotFound:
        return False
    except DockerException:
        pass  # its removal is under way
    except requests.RequestException as e:  # Docker too slow: the reaper removes it later
        log.warning("sandbox %s not removed yet: %s", name, type(e).__name__)
    return True


def state(name: str) -> dict | None:
    """The container's state; None once it is gone. SandboxError if Docker does not answer: the
    script has run, so the job must not be taken for one that never reached its sandbox."""
    try:
        return docker_api().inspect_container(name)["State"]
    except DockerException:
        return None
    except requests.RequestException as e:
        raise SandboxError(f"Docker did not tell how the sandbox ended: {type(e).__name__}") from None


_driver: list[str] = []  #: Docker's cgroup driver, once it answered


def cgroup_driver() -> str:
    """Docker's cgroup driver (asked until it answers, then kept: it is the daemon's)."""
    if not _driver:
        try:
            _driver.append(docker_api().info().get("CgroupDriver", ""))
        except (DockerException, requests.RequestException):
            return ""
    return _driver[0]


def image_id(image: str) -> str:
    try:
        return docker_api().inspect_image(image)["Id"]
    except DockerException:
        return image


class DockerEngine(Engine):
    """Sandboxes as containers of this machine's Docker engine; an egress one on a network of its own."""

    def start(self, spec: SandboxSpec) -> Stdio:
        egress = ""
        try:
            if spec.network == "egress":
                egress = network.create_network(docker_api(), spec.egress_allow)
            attached = Attached(spec, container_config(spec, gvisor_netns=gvisor_makes_netns(), egress_network=egress))
        except (SandboxError, network.NetworkError) as e:
            if egress:
                network.remove_network(docker_api(), egress)
            raise SandboxError(str(e)) from None
        attached.network = egress
        return attached

    def cgroup(self, spec: SandboxSpec, stdio: Stdio) -> str | None:
        driver = cgroup_driver()  # where Docker puts a container's cgroup (no CgroupParent of ours)
        return {"cgroupfs": f"docker/{stdio.id}", "systemd": f"system.slice/docker-{stdio.id}.scope"}.get(driver)

    def rename(self, spec: SandboxSpec, stdio: Stdio, name: str, new: str) -> None:
        try:
            docker_api().rename(name, new)
        except (DockerException, requests.RequestException) as e:
            remove(new)  # a rename whose answer timed out may have been done
            raise SandboxGone(f"the pre-started sandbox is gone: {e}") from None

    def kill(self, name: str) -> None:
        try:
            docker_api().kill(name)
        except (DockerException, requests.RequestException):
            pass  # it ended meanwhile, or the engine is slow: it is removed afterwards anyway

    def exit(self, spec: SandboxSpec, stdio: Stdio, name: str) -> Exit | None:
        found = state(name)
        return None if found is None else Exit(found.get("ExitCode", stdio.returncode), bool(found.get("OOMKilled")))

    def wait_exit(self, stdio: Stdio, name: str, timeout: float) -> None:
        try:
            docker_api().wait(name, timeout=timeout)  # by name: a pooled one has been detached from
        except (DockerException, requests.RequestException):
            pass  # still running: it is killed now

    def detach(self, stdio: Stdio) -> None:
        if stdio.poll() is None:
            stdio.detach()

    def remove(self, spec: SandboxSpec, stdio: Stdio, name: str) -> None:
        self.detach(stdio)
        remove(name)
        if stdio.network:
            network.remove_network(docker_api(), stdio.network)

    def remove_by_name(self, name: str) -> bool:
        return remove(name)

    def sandboxes(self) -> dict[str, dict[str, str]]:
        return {c["Id"]: c.get("Labels") or {} for c in docker_api().containers(all=True, filters={"label": LABEL})}

    def remove_listed(self, key: str, labels: dict[str, str]) -> None:
        remove(key)  # by id: a container of the same name made since is another

    def tidy(self) -> None:
        network.remove_unused_networks(docker_api())  # those whose sandbox went without removing them
