"""A sandbox's limits in one table: each limit's default, the least a sandbox can have and the most
a deployment may set. Everything else is made from it: the runner's `Limits`, the settings of the
same names (WALL_TIME_S, MEMORY_MB, …) with their bounds, the agent types' overrides
(AGENT_OVERRIDES) and a job's own limits (jobConfig.limits, the least of each)."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass


@dataclass(frozen=True)
class Limit:
    type: type  #: int or float
    default: float  #: every sandbox's, unless the deployment sets another
    minimum: float  #: the least a setting, an agent type's override or a job may ask for
    #: the most a setting or an override may give; a job may have at most its agent type's
    maximum: float
    exclusive_minimum: bool = False  #: the minimum itself is refused too


TABLE: dict[str, Limit] = {
    #: wall clock from container start to exit, compile included
    "wall_time_s": Limit(float, default=60.0, minimum=0, exclusive_minimum=True, maximum=3600),
    #: RAM; swap is set equal so the container cannot swap. Mono cannot start with less
    "memory_mb": Limit(int, default=512, minimum=64, maximum=65536),
    #: CPU quota in cores. Docker refuses a quota under 0.01 core and takes 0 for none (a job
    #: asking for 1e-12 cores got no CPU limit at all)
    "cpus": Limit(float, default=1.0, minimum=0.01, maximum=64),
    #: processes + threads; Mono cannot start with fewer. runc: pids cgroup + RLIMIT_NPROC. runsc:
    #: the pids cgroup counts the gVisor kernel's own host threads (guest tasks are multiplexed on
    #: them) and RLIMIT_NPROC would count the host's processes of the sentry's uid, so there only
    #: the cgroup is set, as a backstop
    "pids": Limit(int, default=256, minimum=64, maximum=65536),
    #: open files per process; Mono cannot start with fewer
    "nofile": Limit(int, default=256, minimum=32, maximum=1 << 20),
    #: the work dir (tmpfs), in MiB
    "disk_mb": Limit(int, default=64, minimum=1, maximum=1 << 20),
    #: /tmp (tmpfs), in MiB
    "tmp_mb": Limit(int, default=16, minimum=1, maximum=1 << 20),
    #: per stream; the rest is dropped and the result marked truncated
    "output_bytes": Limit(int, default=1 << 20, minimum=1024, maximum=64 << 20),
}

#: what the runner and the engines apply: a field per row of TABLE, defaulting to its default
#: (bounds are checked where limits come in: the settings and the API)
Limits = make_dataclass("Limits", [(name, limit.type, field(default=limit.default)) for name, limit in TABLE.items()],
                        frozen=True, namespace={"__module__": __name__,
                                                "__doc__": "A sandbox's limits: TABLE's, each its default unless given."})
