"""What a sandbox is to run, with which limits, and how it ended: plain records shared by the
node's runner, the engines and the API (no Docker, no Ray here)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from executors.limits import Limits

#: what a sandbox without network sees as /etc/hosts, whichever engine starts it
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

CONTAINER_PREFIX = "dotnet-scripts-job-"
LABEL = "dotnet-scripts.job"  #: every sandbox carries it, so orphans can be found and reaped
KILLED = 137  #: the runner died of SIGKILL: the OOM killer's, our kill on timeout, or the script's own
#: a runner that sent its end frames is exiting, and its own exit costs less than a kill (see
#: docs/PERFORMANCE.md); only a script forging the frames runs on, this long at most
EXIT_GRACE_S = 0.5


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
    #: the runner writes end frames after the script's output (executors/protocol.py): the outcome
    #: is known when the runner is done, not when its sandbox has been torn down
    end_frames: bool = False
    #: the runner hands out what it compiles and runs a compiled artifact given ahead of the script
    artifacts: bool = False
    #: the runner reports its compile (status, time, messages) ahead of the script's output
    report: bool = False
    #: the job's package assemblies (paths inside the sandbox) the runner references
    references: tuple[str, ...] = ()
    #: the runner reads that list ahead of the script instead (a pooled sandbox: no job yet at its start)
    references_on_stdin: bool = False
    #: past wall time + this, a container whose task is gone is an orphan for the reaper
    reap_grace_s: float = 60.0
    #: the Ray node that starts it: once that node is dead the container is nobody's
    node_id: str = ""
    #: which run of the job this is (a run lost with its node is tried once more)
    attempt: int = 1
    #: "runsc": started by runsc alone (executors/engines/runsc.py), cheaper than through Docker;
    #: only with runtime "runsc" and network "none", else Docker starts it anyway
    engine: str = "docker"
    #: how the image starts the command after a delay (a pooled gVisor runner's, executors/pool/actor.py)
    delayed_start: tuple[str, ...] = DELAY_BY_SHELL

    @property
    def name(self) -> str:
        return CONTAINER_PREFIX + self.job_id

    @property
    def gvisor(self) -> bool:
        """Whether it runs under gVisor ("runsc", or "runsc-host-net" that egress uses)."""
        return self.runtime.startswith("runsc")


@dataclass(frozen=True)
class Compiled:
    """What the runner reported of its compile, written before the script ran."""
    status: str  #: "ok", "failed" (the script never ran), "cached" (a compiled one was run)
    ms: int  #: the compile's wall time
    messages: str  #: the compiler's errors and warnings, as on stderr


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
    compiled: Compiled | None = None  #: None: the runner does not report its compile
    cpu_ms: int | None = None  #: its cgroup's CPU time (executors/usage.py); None: not readable
    memory_peak_kb: int | None = None


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


NAMESPACE = "dotnet-scripts"  #: the Ray namespace of the service's named actors
POOL_PREFIX = "sandbox-pool-"  #: a pool actor's name: this, its node and its sandbox profile


@dataclass(frozen=True)
class PoolSpec:
    """How a node pools sandboxes for an agent type."""
    agent_type: str
    size: int = -1  #: pre-started sandboxes; -1: executors.pool.PER_SLOT per slot of the agent type on the node
    #: a waiting runner is told to compile a small program, so the job's compile starts warm,
    #: at the price of that CPU per job. "auto": only once the pool has run no job
    #: for a second (a user at a prompt); not in a burst or back to back, where CPU is the limit
    #: and a job would wait for a warm-up under way
    warmup: Literal["auto", "always", "never"] = "auto"
    #: after this long without a job the pool removes its sandboxes and its actor: Ray counts a
    #: node with a live actor as busy, and an autoscaler would never remove it
    idle_s: float = 120.0
    #: compiled scripts kept for repeats (runners with CSRUN_ARTIFACTS); 0: none, every job compiles
    #: (the pool of a runner without artifacts must have 0: what it writes first is the script's)
    cache_mb: int = 0
    #: on the node's NuGet cache's file system: each pooled sandbox has a folder here, bound read-only
    #: at /nuget, that a job's restored packages are linked into when it takes the sandbox.
    #: "": jobs with packages start a sandbox of their own (they are mounted at its start)
    packages_dir: str = ""
