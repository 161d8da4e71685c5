"""One script, one fresh container: the sandbox runner that executes on a node.

The container's configuration is a frozen record turned into the Docker Engine API's create request
by a pure function (`container_config`). The script reaches the runner on stdin, never on a command line.
The container is named after the job, killed by name on timeout and always removed afterwards.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import docker
import requests
from docker.errors import DockerException

from executors import runsc
from executors.network import NetworkError, create_network, remove_network

log = logging.getLogger(__name__)

CONTAINER_PREFIX = "dotnet-scripts-job-"
LABEL = "dotnet-scripts.job"  #: every sandbox carries it, so orphans can be found and reaped
KILLED = 137  #: the runner died of SIGKILL: the OOM killer's, our kill on timeout, or the script's own
#: a runner that sent its end frames is exiting: its sandbox ends on its own ~0.03 s later under runsc
#: alone, ~0.09 s through Docker, and that costs ~0.01 core-s less than killing it (a `runsc kill`,
#: run by us or by Docker's shim). Only a script forging the frames runs on, this long at most
EXIT_GRACE_S = 0.5


@dataclass(frozen=True)
class Limits:
    wall_time_s: float = 60.0  #: wall clock from container start to exit, compile included
    memory_mb: int = 512  #: RAM; swap is set equal so the container cannot swap
    cpus: float = 1.0  #: CPU quota in cores
    #: processes + threads. runc: pids cgroup + RLIMIT_NPROC. runsc: the pids cgroup counts the
    #: gVisor kernel's own host threads (guest tasks are multiplexed on them) and RLIMIT_NPROC would
    #: count the host's processes of the sentry's uid, so there only the cgroup is set, as a backstop
    pids: int = 256
    nofile: int = 256  #: open files per process
    disk_mb: int = 64  #: the work dir (tmpfs)
    tmp_mb: int = 16  #: /tmp (tmpfs)
    output_bytes: int = 1 << 20  #: per stream; the rest is dropped and the result marked truncated


#: how any image with a shell starts a command after a delay: these, the seconds, the command
DELAY_BY_SHELL = ("sh", "-c", 'sleep "$0"; exec "$@"')


@dataclass(frozen=True)
class SandboxSpec:
    job_id: str
    image: str
    command: tuple[str, ...]
    runtime: str = "runsc"  #: "runc" only for development: it shares the host kernel
    user: str = "10001:10001"
    work_dir: str = "/sandbox"
    network: str = "none"  #: "none", or "egress": the filtered bridge of executors/network.py
    egress_allow: tuple[str, ...] = ()  #: networks reachable in egress mode despite the blocklist
    limits: Limits = field(default_factory=Limits)
    #: (host path, container path) bound read-only, e.g. the job's restored NuGet packages
    mounts: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()  #: extra environment for the runner (never secrets)
    #: past wall time + this, a container whose task is gone is an orphan for the reaper
    reap_grace_s: float = 60.0
    #: the Ray node that starts it: once that node is dead the container is nobody's
    node_id: str = ""
    #: which run of the job this is (a run lost with its node is tried once more)
    attempt: int = 1
    #: "runsc": started by runsc alone (executors/runsc.py), ~0.2 core-s less per sandbox than
    #: through Docker; only with runtime "runsc" and network "none", else Docker starts it anyway
    engine: str = "docker"
    #: how the image starts the command after a delay (a pooled gVisor runner's, executors/pool.py)
    delayed_start: tuple[str, ...] = DELAY_BY_SHELL

    @property
    def name(self) -> str:
        return CONTAINER_PREFIX + self.job_id

    @property
    def gvisor(self) -> bool:
        """Whether it runs under gVisor ("runsc", or "runsc-host-net" that egress uses)."""
        return self.runtime.startswith("runsc")


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None  #: None when the run was killed for its time limit
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    out_of_memory: bool
    started_at: datetime
    finished_at: datetime


class SandboxError(RuntimeError):
    """The sandbox could not be run (Docker, image, runtime): our fault, not the script's."""


class SandboxGone(SandboxError):
    """A pre-started sandbox was gone before it got the script: another may be used instead."""


def via_runsc(spec: SandboxSpec) -> bool:
    return spec.engine == "runsc" and spec.runtime == "runsc" and spec.network == "none"


def labels(spec: SandboxSpec) -> dict[str, str]:
    """What the reaper reads: the job, a deadline (wall time + margin) and the node that started it."""
    return {LABEL: spec.job_id, f"{LABEL}.deadline": str(int(time.time() + spec.limits.wall_time_s + spec.reap_grace_s)),
            **({f"{LABEL}.node": spec.node_id} if spec.node_id else {})}


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
        "Env": ["DOTNET_CLI_TELEMETRY_OPTOUT=1", *[f"{k}={v}" for k, v in spec.env]],
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
ETC_DIR = runsc.RUN_DIR.parent / "etc"
ETC_FILES = {"hosts": runsc.HOSTS, "resolv.conf": ""}
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
                ok = runsc_without_network(engine().info()["Runtimes"]) and _write_etc()
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


#: how the runner (CSRUN_ARTIFACTS=1) frames the compiled script ahead of the script's output
ARTIFACT_MAGIC = b"\0csrun-artifact "
MAX_ARTIFACT_BYTES = 8 << 20  #: a larger compiled script is not kept


#: a pre-started runner (CSRUN_REFERENCES=-) gets the job's package assemblies ahead of all else
REFERENCES_MAGIC = b"\0csrun-references "
WARMUP_MARKER = b"\0csrun-warmup\n"  #: ahead of a pooled runner's input: warm up now, the job follows
#: a runner with end frames (csrun's CSRUN_END) writes these last: the outcome is known without
#: waiting for the container's exit (~0.1 s later under gVisor). A script printing them itself can
#: only end its own run early, with the code it printed
EXIT_FRAME = re.compile(rb"\0csrun-exit (-?\d{1,10})\n\Z")
END_FRAME = re.compile(rb"\0csrun-end\n\Z")


#: in a sandbox's environment, it makes csrun write the end frames
END_FRAMES_ENV = ("CSRUN_END", "1")


def _frame(magic: bytes, body: bytes) -> bytes:
    return magic + f"{len(body)}\n".encode() + body


def artifact_frame(artifact: bytes) -> bytes:
    return _frame(ARTIFACT_MAGIC, artifact)


def references_frame(paths: tuple[str, ...]) -> bytes:
    return _frame(REFERENCES_MAGIC, ":".join(paths).encode())


class _CappedReader(threading.Thread):
    """Reads a stream to its end, keeping at most `cap` bytes: memory stays flat on a flood. With
    `expect_frame` (set before the runner gets its input) an artifact frame at the very start is
    taken apart from the output: the runner writes it before the script runs, so only there."""

    def __init__(self, stream, cap: int, end: re.Pattern | None, changed: threading.Event):
        super().__init__(daemon=True)
        self.stream, self.cap, self.end, self.changed = stream, cap, end, changed
        self.data = bytearray()
        self.expect_frame = False
        self.frame: bytes | None = None
        self.total, self.tail = 0, b""  #: bytes of output so far, and the last of them
        self.ended: re.Match | None = None  #: the end frame, while it is the last thing read
        self.eof = False

    def run(self) -> None:
        first = self.stream.read1(65536)
        if first and self.expect_frame:
            first = self._take_frame(first)
        self._keep(first)
        while chunk := self.stream.read1(65536):
            self._keep(chunk)
        self.eof = True
        self.changed.set()

    def _take_frame(self, head: bytes) -> bytes:
        """Removes the frame from the start of the stream; returns the output that follows it."""
        n = len(ARTIFACT_MAGIC)
        while (nl := head.find(b"\n", n)) < 0:
            if not ARTIFACT_MAGIC.startswith(head[:n]) or len(head) > n + 12:
                return head  # no frame (e.g. the compile failed): all output
            more = self.stream.read1(65536)
            if not more:
                return head
            head += more
        if not head.startswith(ARTIFACT_MAGIC) or not head[n:nl].isdigit():
            return head
        length, body = int(head[n:nl]), bytearray(head[nl + 1:])
        got = len(body)
        while got < length:
            more = self.stream.read1(min(65536, length - got))
            if not more:
                return b""
            got += len(more)
            if len(body) <= MAX_ARTIFACT_BYTES:  # a larger one is read to its end but not kept
                body += more
        if length <= MAX_ARTIFACT_BYTES:
            self.frame = bytes(body[:length])
        return bytes(body[length:])

    def _keep(self, chunk: bytes) -> None:
        # the output first: the moment `ended` is seen, the run may take the text and return
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.total += len(chunk)
        self.tail = (self.tail + chunk)[-32:]
        self.ended = self.end.search(self.tail) if self.end else None
        if self.ended:
            self.changed.set()

    @property
    def size(self) -> int:
        """Bytes of output, the end frame not counted."""
        return self.total - (len(self.ended.group(0)) if self.ended else 0)

    @property
    def truncated(self) -> bool:
        return self.size > self.cap

    def text(self) -> str:
        return self.data[:self.size].decode("utf-8", errors="replace")


@functools.cache
def engine() -> docker.APIClient:
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


class _Attached:
    """A Docker sandbox's stdio through the Engine API, with what Sandbox uses of a `Popen`:
    `docker run --interactive` without its CLI process (~0.03 core-s and ~25 MiB per sandbox).
    Its container is created, attached to and started before it returns: attached first, so no
    output is missed; started, so a pool holds only sandboxes that run. The attach stream's frames
    are split into two pipes that the readers read as they read a process's."""

    def __init__(self, spec: SandboxSpec, config: dict):
        api = engine()
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
            remove_container(spec.name)
            raise SandboxError(f"sandbox did not start: {e}") from None
        self.stdin = _SocketWriter(self.sock)
        out, self._out = os.pipe()
        err, self._err = os.pipe()
        self.stdout, self.stderr = open(out, "rb"), open(err, "rb")
        self.returncode: int | None = None
        self.detached = False  #: the attach ended: the container exited, or kill() detached it
        self._demux = threading.Thread(target=self._split, daemon=True)
        self._demux.start()

    def _split(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            split_frames(stream, self._out, self._err)
        except OSError:
            pass  # detached (kill), or the engine went away
        finally:
            stream.close()
            # shut, not closed: the socket's descriptor goes with this object, so a write to stdin
            # under way in another thread fails instead of landing in a file that reused the number
            self.kill()
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
            self.returncode = engine().wait(self.id, timeout=timeout)["StatusCode"]
        except (DockerException, requests.RequestException):
            self.returncode = -1
        return self.returncode

    def kill(self) -> None:
        """Detaches from the container (it runs on until removed), as killing `docker run` would."""
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


def remove_container(name: str) -> None:
    """Kills and removes a sandbox by name, whether Docker or runsc alone started it."""
    if runsc.remove(name):
        return
    try:
        engine().remove_container(name, v=True, force=True)
    except DockerException:
        pass  # gone already, or its removal is under way
    except requests.RequestException as e:  # Docker too slow: the reaper removes it later
        log.warning("sandbox %s not removed yet: %s", name, type(e).__name__)


def stop_job_sandbox(job_id: str) -> None:
    """Kills and removes a job's container (pooled ones carry the job's name once taken)."""
    remove_container(CONTAINER_PREFIX + job_id)


class Sandbox:
    """A started container whose runner waits for its script on stdin. It runs exactly one script;
    started ahead of time it is what the warm pool holds (executors/pool.py)."""

    def __init__(self, spec: SandboxSpec):
        self.spec, self.name = spec, spec.name
        self.egress = ""  #: its own Docker network, for network "egress"; removed with it
        self.created = time.monotonic()
        self.runsc = via_runsc(spec)
        if self.runsc:
            try:
                args = runsc.run_args(spec, runsc.write_bundle(spec, labels(spec)))
            except (OSError, subprocess.CalledProcessError) as e:
                raise SandboxError(f"sandbox could not be prepared: {e}") from None
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            try:
                if spec.network == "egress":
                    self.egress = create_network(engine(), spec.egress_allow)
                self.proc = _Attached(spec, container_config(spec, gvisor_netns=gvisor_makes_netns(),
                                                             egress_network=self.egress))
            except (SandboxError, NetworkError) as e:
                if self.egress:
                    remove_network(engine(), self.egress)
                raise SandboxError(str(e)) from None
        self.changed = threading.Event()  #: a reader saw an end frame, or its stream's end
        frames = END_FRAMES_ENV in spec.env  # only then is a frame at the end not the script's output
        self.out = _CappedReader(self.proc.stdout, spec.limits.output_bytes, EXIT_FRAME if frames else None, self.changed)
        self.err = _CappedReader(self.proc.stderr, spec.limits.output_bytes, END_FRAME if frames else None, self.changed)
        self.out.start()
        self.err.start()
        self.artifact: bytes | None = None
        self.warmed = False
        self.told = False  #: the outcome came from the runner's end frames, not the container's exit
        self.folder: Path | None = None  #: the pool's package folder it binds at /nuget; removed with it

    def warm_up(self) -> None:
        """Tells a waiting runner (csrun) to warm its compiler up before its script arrives; only
        while nobody can have given it a script yet (the pool holds it idle)."""
        if self.warmed:
            return
        self.warmed = True
        try:
            self.proc.stdin.write(WARMUP_MARKER)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it is gone: the job that takes it will see so

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_started(self, timeout: float = 60.0) -> bool:
        """Waits until its container runs (for the pool, off any job's path): a job renaming a
        sandbox that runsc has not created yet would have to start a cold one instead. Docker's
        was started before the Sandbox was made."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if not self.runsc or runsc.started(self.spec.name):
                return True
            time.sleep(0.05)
        return False

    def run(self, script: str, name: str | None = None, remove: bool = True, artifact: bytes | None = None,
            keep_artifact: bool = False, references: tuple[str, ...] | None = None) -> Outcome:
        """Renames the container to `name` (a job's), hands it the script and waits for the end.
        With `artifact` the runner runs that compiled script instead of compiling; with
        `keep_artifact` the one it compiles is kept in `self.artifact` (runners with CSRUN_ARTIFACTS).
        `references`: the job's package assemblies, for a runner started with CSRUN_REFERENCES=-."""
        try:
            if name and name != self.name:
                try:
                    if self.runsc and not self.alive():
                        raise SandboxGone("the pre-started sandbox is gone")
                    runsc.take(self.spec.name, name) if self.runsc else engine().rename(self.name, name)
                except (DockerException, OSError) as e:  # requests' errors (a timeout) are OSErrors
                    remove_container(name)  # a rename whose answer timed out may have been done
                    raise SandboxGone(f"the pre-started sandbox is gone: {e}") from None
                self.name = name
            started = datetime.now(timezone.utc)
            self.out.expect_frame = keep_artifact and artifact is None
            data = b"".join((references_frame(references) if references else b"",
                             artifact_frame(artifact) if artifact is not None else b"", script.encode()))
            kills = oom_kills()
            threading.Thread(target=_feed, args=(self.proc, data), daemon=True).start()
            timed_out, deadline = False, time.monotonic() + self.spec.limits.wall_time_s
            while True:  # until both streams end, or both end frames came last (the runner is done)
                self.changed.clear()
                if (self.out.eof and self.err.eof) or (self.out.ended and self.err.ended):
                    break
                if not self.changed.wait(deadline - time.monotonic()) and time.monotonic() >= deadline:
                    timed_out = True
                    try:
                        runsc.kill(self.name) if self.runsc else engine().kill(self.name)
                    except (DockerException, requests.RequestException, subprocess.SubprocessError):
                        pass  # it ended meanwhile, or the engine is slow: it is removed afterwards anyway
                    break
            self.told = not timed_out and not (self.out.eof and self.err.eof)  # by the runner's end frames
            if not self.told:
                self.proc.wait(timeout=30)
                self.out.join(10)
                self.err.join(10)
            finished = datetime.now(timezone.utc)
            self.artifact = self.out.frame
            if self.told:
                return Outcome(
                    exit_code=int(self.out.ended.group(1)) & 0xFF, stdout=self.out.text(), stderr=self.err.text(),
                    stdout_truncated=self.out.truncated, stderr_truncated=self.err.truncated,
                    timed_out=False, out_of_memory=False, started_at=started, finished_at=finished,
                )
            state = self._runsc_state() if self.runsc else _state(self.name)
            if state is None:  # our words only: what the sandbox wrote may be the script's
                raise SandboxError(f"sandbox ended without a state (exit {self.proc.returncode}): "
                                   "it did not start, or it was removed")
            return Outcome(
                exit_code=None if timed_out else state.get("ExitCode", self.proc.returncode),
                stdout=self.out.text(), stderr=self.err.text(),
                stdout_truncated=self.out.truncated, stderr_truncated=self.err.truncated,
                timed_out=timed_out, out_of_memory=killed_for_memory(state, timed_out, kills, oom_kills()),
                started_at=started, finished_at=finished,
            )
        finally:
            if remove:
                self.discard()
            elif not self.runsc and self.proc.poll() is None:
                self.proc.kill()  # detached: it lives on until removed; `runsc run` must see it end

    def _runsc_state(self) -> dict | None:
        """What Docker's inspect would say, from `runsc run`'s exit: None if it was removed meanwhile
        (the job was stopped) or runsc could not start it, as its own log says: a script exiting 128
        after printing runsc's words gets its own outcome."""
        code = self.proc.returncode
        if not (runsc.BUNDLES_DIR / self.spec.name).is_dir():
            return None
        if code == runsc.START_FAILED and (failure := runsc.start_failure(self.spec.name)):
            log.warning("runsc could not start sandbox %s: %s", self.spec.name, failure)
            return None
        if code != 0 and runsc.crashed(self.spec.name):  # the script was killed with its sandbox (by the OOM killer?)
            code = KILLED
        return {"ExitCode": code, "OOMKilled": False}  # it ran: a 125 is the script's

    def discard(self) -> None:
        if self.told and EXIT_GRACE_S > 0:
            self._wait_exit(EXIT_GRACE_S)
        if self.runsc:  # its `runsc run` destroys it once it ends: only if that fails is more needed
            if self.alive():
                runsc.kill(self.spec.name)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                runsc.remove(self.name)
            runsc.release(self.name, self.spec.name)
            return
        if self.proc.poll() is None:
            self.proc.kill()
        remove_container(self.name)
        if self.egress:
            remove_network(engine(), self.egress)

    def _wait_exit(self, timeout: float) -> None:
        try:
            if self.runsc:
                self.proc.wait(timeout)
            else:  # a pooled one has been detached from
                engine().wait(self.name, timeout=timeout)
        except (subprocess.TimeoutExpired, DockerException, requests.RequestException):
            pass  # still running: killed now


def run_sandbox(spec: SandboxSpec, script: str) -> Outcome:
    """Runs `script` in a fresh container and returns how it ended. Raises SandboxError."""
    return Sandbox(spec).run(script)


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)
    except (BrokenPipeError, OSError):
        pass  # the script exited without reading everything: fine
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


def oom_kills() -> int | None:
    """The host kernel's count of OOM kills so far, or None where it does not keep one."""
    try:
        with open("/proc/vmstat") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("oom_kill ")), None)
    except (OSError, ValueError):
        return None


def killed_for_memory(state: dict, timed_out: bool, kills_before: int | None, kills_after: int | None) -> bool:
    """Docker marks OOMKilled from the runtime's OOM event, which runsc's shim drops when the
    container's cgroup is already gone (about 1 run in 25 under load). So a runner killed by
    SIGKILL that we did not kill counts too if the kernel OOM-killed something meanwhile. Only a
    script killing its own runner while another sandbox on the node is OOM-killed is mislabelled."""
    if state.get("OOMKilled"):
        return True
    return (not timed_out and state.get("ExitCode") == KILLED
            and kills_before is not None and kills_after is not None and kills_after > kills_before)


def _state(name: str) -> dict | None:
    """The container's state; None once it is gone. SandboxError if Docker does not answer: the
    script has run, so the job must not be taken for one that never reached its sandbox."""
    try:
        return engine().inspect_container(name)["State"]
    except DockerException:
        return None
    except requests.RequestException as e:
        raise SandboxError(f"Docker did not tell how the sandbox ended: {type(e).__name__}") from None


def image_id(image: str) -> str:
    try:
        return engine().inspect_image(image)["Id"]
    except DockerException:
        return image
