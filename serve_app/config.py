"""The service's settings: read once from the environment (or .env), failing fast on bad values."""

import ipaddress
from dataclasses import fields
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from cluster.agent_types import CATALOGUE
from executors.nuget import config as nuget_config
from executors.nuget.spec import NuGetSpec
from executors.spec import PoolSpec
from serve_app.models import LIMITS, limit_bounds, not_bool

#: the sandbox limits (executors/limits.py), each also a setting of the same name and an agent-type override key
LIMIT_FIELDS = tuple(LIMITS)

#: an agent type's own limits and network (AGENT_OVERRIDES): any of the limits, a number within the
#: bounds of the setting of the same name, and network; pydantic refuses anything else
AgentOverride = TypedDict("AgentOverride", {
    **{name: Annotated[limit.type, BeforeValidator(not_bool), Field(**limit_bounds(name))]
       for name, limit in LIMITS.items()},
    "network": Literal["none", "egress"],
}, total=False)
AgentOverride.__pydantic_config__ = ConfigDict(extra="forbid")

#: what a restore may use unless the deployment sets otherwise: NuGetSpec's defaults (executors/nuget/spec.py)
NUGET_DEFAULTS = {f.name: f.default for f in fields(NuGetSpec)}
#: how nodes pool sandboxes unless the deployment sets otherwise: PoolSpec's defaults (executors/spec.py)
POOL_DEFAULTS = {f.name: f.default for f in fields(PoolSpec)}


def limit_setting(name: str) -> Any:
    """The setting of the sandbox limit `name`: its default and bounds from executors/limits.py."""
    return Field(LIMITS[name].default, **limit_bounds(name))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    #: any SQLAlchemy URL; PostgreSQL in production, an SQLite file as the embedded default
    database_url: str = "sqlite:///./dotnet-scripts.db"
    #: where the REST API listens (the original service used 8080)
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    #: Serve replicas of the API; they share state only through the database and Redis (two: one
    #: can restart or fail while the other answers)
    serve_replicas: int = Field(2, ge=1, le=64)
    #: Redis for job events (long-polls end the moment a job does); empty: long-polls read the database
    redis_url: str = ""
    #: Ray cluster to join; empty starts a local head that offers `local_slots` of each agent type
    ray_address: str = ""
    #: sandbox slots of each enabled agent type on the local head
    local_slots: int = Field(2, ge=0, le=64)
    #: agent types this deployment accepts (comma separated); must be in the catalogue
    agent_types: Annotated[list[str], NoDecode] = ["linux-amd64-mono-6"]
    #: container runtime for sandboxes; "runc" shares the host kernel: development only
    sandbox_runtime: str = "runsc"
    #: what starts a sandbox: "docker" (the design card's), or "runsc" alone (an OCI bundle per
    #: sandbox: cheaper and quicker, same limits, same hostile tests). Sandboxes with network
    #: egress or runtime runc always go through Docker
    sandbox_engine: Literal["docker", "runsc"] = "docker"
    #: limits of every sandbox; their defaults and bounds are executors/limits.py's table
    wall_time_s: float = limit_setting("wall_time_s")
    memory_mb: int = limit_setting("memory_mb")
    cpus: float = limit_setting("cpus")
    pids: int = limit_setting("pids")
    nofile: int = limit_setting("nofile")
    disk_mb: int = limit_setting("disk_mb")
    tmp_mb: int = limit_setting("tmp_mb")
    output_bytes: int = limit_setting("output_bytes")
    #: sandbox network of every agent type: none, or egress (public addresses only, see SECURITY.md)
    network: Literal["none", "egress"] = "none"
    #: networks that egress sandboxes may reach although private (e.g. an internal NuGet feed), comma separated
    egress_allow: Annotated[list[str], NoDecode] = []
    #: per agent type (of the catalogue) overrides of the limits above and of `network`, as JSON, e.g.
    #: {"linux-amd64-mono-6": {"memory_mb": 1024, "network": "egress"}}
    agent_overrides: dict[Literal[tuple(CATALOGUE)], AgentOverride] = {}
    #: largest accepted script, in bytes of UTF-8
    max_script_bytes: int = Field(256 << 10, ge=1, le=16 << 20)
    #: largest accepted `payload.stdin`, in bytes of UTF-8
    max_stdin_bytes: int = Field(1 << 20, ge=0, le=16 << 20)
    #: most `payload.args` a job may give, and their largest total size (bytes of UTF-8)
    max_args: int = Field(64, ge=0, le=4096)
    max_args_bytes: int = Field(64 << 10, ge=0, le=1 << 20)
    #: pre-started sandboxes per node and sandbox profile: -1 eight (PER_SLOT) per slot the node
    #: has of the agent type, 0 none (all start cold)
    pool_size: int = Field(POOL_DEFAULTS["size"], ge=-1, le=64)
    #: pooled runners compile a small program while they wait: a quicker job, but that much more
    #: CPU per job. auto: once the node's pool has run no job for a second (low load, where a
    #: user waits; not in bursts, where CPU is the limit); always; never (true/false: always/never)
    pool_warmup: Literal["auto", "always", "never"] = POOL_DEFAULTS["warmup"]
    #: a node's pool that had no job this long is removed, so that an autoscaler can remove the node
    pool_idle_s: float = Field(POOL_DEFAULTS["idle_s"], gt=0)
    #: compiled scripts each node's pool keeps, so a repeated script skips the compiler; 0: none
    compile_cache_mb: int = Field(64, ge=0, le=4096)  # PoolSpec's 0 is for runners without artifacts
    #: agent types the local head offers slots of (empty: all enabled ones)
    local_agent_types: Annotated[list[str], NoDecode] = []
    #: NuGet.Config XML with the feeds of jobs that give none (empty: such jobs have no feeds)
    nuget_config_xml: str = ""
    #: where each node keeps restored packages (bounded by nuget_cache_mb, least recently used go first)
    nuget_cache_dir: str = "/var/cache/dotnet-scripts/nuget"
    nuget_cache_mb: int = Field(NUGET_DEFAULTS["cache_mb"], ge=16, le=1 << 20)
    #: a .nupkg larger than this is not downloaded
    nuget_max_package_mb: int = Field(NUGET_DEFAULTS["max_package_mb"], ge=1, le=4096)
    #: a package that expands to more than this is refused (zip bombs)
    nuget_max_extract_mb: int = Field(NUGET_DEFAULTS["max_extract_mb"], ge=1, le=16384)
    #: the whole restore of a job's packages, before its sandbox starts
    nuget_restore_timeout_s: float = Field(NUGET_DEFAULTS["timeout_s"], gt=0, le=3600)
    #: one job's restore, all its packages together (cached ones too: they stay pinned while it runs)
    nuget_budget_download_mb: int = Field(NUGET_DEFAULTS["budget_download_mb"], ge=1, le=65536)
    nuget_budget_extract_mb: int = Field(NUGET_DEFAULTS["budget_extract_mb"], ge=1, le=65536)
    nuget_budget_files: int = Field(NUGET_DEFAULTS["budget_files"], ge=1, le=1_000_000)
    nuget_budget_packages: int = Field(NUGET_DEFAULTS["budget_packages"], ge=1, le=1000)
    #: the restore runs in a cgroup of its own: its CPU quota and memory limit
    nuget_restore_cpus: float = Field(NUGET_DEFAULTS["restore_cpus"], ge=0.01, le=256)
    nuget_restore_memory_mb: int = Field(NUGET_DEFAULTS["restore_memory_mb"], ge=64, le=1 << 20)
    #: how often each replica looks for stale jobs and expired results
    sweep_interval_s: float = Field(60.0, gt=0, le=86400)
    #: a job PENDING or RUNNING this long without news becomes REJECTED (the original: 5 min)
    stale_after_s: float = Field(300.0, gt=0)
    #: a job whose agent type no live node offers waits this long for one (an autoscaler adding
    #: a node) before it becomes REJECTED
    pending_limit_s: float = Field(300.0, gt=0)
    #: a result is deleted this long after a client first fetched it
    fetched_retention_s: float = Field(3600.0, gt=0)
    #: a result nobody fetched is deleted this long after the job ended
    unfetched_retention_s: float = Field(7 * 86400.0, gt=0)

    @field_validator("agent_types", "local_agent_types", "egress_allow", mode="before")
    @classmethod
    def _split(cls, v):
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _stale_after_outlasts_a_run(self):
        # a RUNNING job has no news from its start to its end: the restore of its packages on the
        # node (agent types the service restores for), then its run of up to its wall time
        def longest(t: str) -> float:
            wall = float(self.agent_overrides.get(t, {}).get("wall_time_s", self.wall_time_s))
            return wall + (self.nuget_restore_timeout_s if CATALOGUE[t].nuget else 0.0)
        worst = max(self.agent_types, key=longest)
        run = longest(worst)
        if self.stale_after_s <= run:
            restore = " + nuget_restore_timeout_s" if CATALOGUE[worst].nuget else ""
            raise ValueError(f"stale_after_s must be longer than the longest run, or running jobs would be rejected: "
                             f"{worst}'s wall time{restore} is {run:g} s, stale_after_s {self.stale_after_s:g} s")
        return self

    @field_validator("agent_types", "local_agent_types")
    @classmethod
    def _known(cls, v: list[str], info: ValidationInfo) -> list[str]:
        unknown = [t for t in v if t not in CATALOGUE]
        if unknown or (not v and info.field_name == "agent_types"):
            raise ValueError(f"unknown agent types {unknown}; the catalogue has {sorted(CATALOGUE)}")
        return v

    @field_validator("egress_allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(n, strict=False)) for n in v]

    @field_validator("pool_warmup", mode="before")
    @classmethod
    def _warmup(cls, v: Any) -> Any:
        return {"true": "always", "false": "never"}.get(str(v).lower(), v)

    @field_validator("nuget_config_xml")
    @classmethod
    def _nuget_config(cls, v: str) -> str:
        if v:
            nuget_config.parse(v)  # NuGetConfigError is a ValueError: the service does not start
        return v

    @field_validator("nuget_cache_dir")
    @classmethod
    def _cache_dir(cls, v: str) -> str:
        if not v.startswith("/") or "," in v:
            raise ValueError("nuget_cache_dir must be an absolute path without commas")
        return v

    @field_validator("sandbox_runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if v not in ("runsc", "runc"):
            raise ValueError("sandbox_runtime must be runsc (gVisor) or runc (development only)")
        return v


@lru_cache
def get_settings() -> Settings:
    return Settings()
