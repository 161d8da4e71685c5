"""What a job runs as: its sandbox (limits, network), its pool, its NuGet restore and what its
runner reads, computed from the job and the settings by pure functions. The API uses them to
validate a job when it is submitted (ValueError: the client's 400), the dispatcher to run it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from pydantic.alias_generators import to_camel

from cluster.agent_types import CATALOGUE
from executors.nuget import config as nuget_config
from executors.nuget.spec import NuGetSpec
from executors.protocol import input_frames, nul_ended
from executors.spec import Limits, PoolSpec, SandboxSpec
from serve_app.config import LIMIT_FIELDS, Settings
from serve_app.models import JobConfig, Payload


@dataclass(frozen=True)
class Plan:
    spec: SandboxSpec
    script: str
    head: bytes  #: what the runner reads on stdin ahead of the script (`runner_head`)
    pool: PoolSpec | None  #: None: a sandbox of its own (the job asked for its own limits or network)
    nuget: NuGetSpec | None  #: None: the runner restores packages itself


def agent_profile(settings: Settings, agent_type: str) -> tuple[Limits, str]:
    """The most an agent type's jobs may have: its limits and network mode, the settings' unless
    AGENT_OVERRIDES sets them (validated there: within the same bounds, of the same types)."""
    over = settings.agent_overrides.get(agent_type, {})
    limits = Limits(**{k: over.get(k, getattr(settings, k)) for k in LIMIT_FIELDS})
    return limits, over.get("network", settings.network)


def job_profile(settings: Settings, agent_type: str, config: JobConfig | None) -> tuple[Limits, str]:
    """The agent type's profile lowered by what the job asks for. ValueError: it asks for more."""
    limits, network = agent_profile(settings, agent_type)
    asked = config.limits.model_dump(exclude_none=True) if config and config.limits else {}
    for key, value in asked.items():
        if value > getattr(limits, key):
            raise ValueError(f"jobConfig.limits.{to_camel(key)} is {value:g}; "
                             f"the most {agent_type} allows is {getattr(limits, key):g}")
    if config and config.network:
        if config.network == "egress" and network == "none":
            raise ValueError(f"jobConfig.network egress: {agent_type} sandboxes have no network")
        network = config.network
    return replace(limits, **asked), network


def nuget_config_xml(settings: Settings, config: JobConfig | None) -> str:
    """The job's own NuGet.Config, else the deployment's default (NUGET_CONFIG_XML), else none."""
    return config.nuget_config_xml if config and config.nuget_config_xml else settings.nuget_config_xml


def validate(settings: Settings, agent_type: str, config: JobConfig | None) -> None:
    """What the API checks of a job before it is stored. ValueError: the client's 400."""
    job_profile(settings, agent_type, config)
    if config and config.nuget_config_xml is not None:
        nuget_config.parse(config.nuget_config_xml)  # bad XML is the client's 400 now, not a failed run later


def sandbox_spec(settings: Settings, job_id: uuid.UUID, agent_type: str, config: JobConfig | None = None) -> SandboxSpec:
    t = CATALOGUE[agent_type]
    limits, network = job_profile(settings, agent_type, config)
    return SandboxSpec(job_id=str(job_id), image=t.image, command=t.command, runtime=settings.sandbox_runtime,
                       user=t.user, work_dir=t.work_dir, network=network,
                       egress_allow=tuple(settings.egress_allow), limits=limits, env=t.env, end_frames=t.end_frames, report=t.report,
                       engine=settings.sandbox_engine, delayed_start=t.delayed_start)


def pool_spec(settings: Settings, agent_type: str, config: JobConfig | None) -> PoolSpec | None:
    """The node's pool holds sandboxes of the agent type's own profile: jobs asking for their own
    limits or network start a sandbox of their own."""
    if config is not None and (config.limits is not None or config.network is not None):
        return None
    t = CATALOGUE[agent_type]
    # restored packages are linked into a pooled sandbox's folder: on the cache's file system
    packages_dir = f"{settings.nuget_cache_dir}/sandboxes" if t.nuget else ""
    return PoolSpec(agent_type, settings.pool_size, settings.pool_warmup, settings.pool_idle_s,
                    settings.compile_cache_mb if t.artifacts else 0, packages_dir)


def nuget_spec(settings: Settings, agent_type: str, config: JobConfig | None) -> NuGetSpec | None:
    """What the job's `#r "nuget: …"` restore may use; None where the runner restores itself."""
    target = CATALOGUE[agent_type].nuget
    if target is None:
        return None
    xml = nuget_config_xml(settings, config)
    return NuGetSpec(sources=tuple(nuget_config.parse(xml)) if xml else (), target=target,
                     cache_dir=settings.nuget_cache_dir, cache_mb=settings.nuget_cache_mb,
                     max_package_mb=settings.nuget_max_package_mb, max_extract_mb=settings.nuget_max_extract_mb,
                     timeout_s=settings.nuget_restore_timeout_s, allow=tuple(settings.egress_allow),
                     budget_download_mb=settings.nuget_budget_download_mb,
                     budget_extract_mb=settings.nuget_budget_extract_mb, budget_files=settings.nuget_budget_files,
                     budget_packages=settings.nuget_budget_packages, restore_cpus=settings.nuget_restore_cpus,
                     restore_memory_mb=settings.nuget_restore_memory_mb)


def runner_head(settings: Settings, payload: Payload) -> bytes:
    """What the agent type's runner reads on stdin ahead of the script: the script's args and
    stdin, each length-prefixed (csrun's frames; for dotnet-7's run.sh, lines with the length
    first, after its NuGet.Config: the job's, or the deployment's default)."""
    stdin = (payload.stdin or "").encode()
    args = payload.args or ()
    if not CATALOGUE[payload.agent_type].config_on_stdin:
        return input_frames(args, stdin)
    listed = nul_ended(args)
    xml = nuget_config_xml(settings, payload.job_config).encode()
    return b"".join(b"%d\n%s" % (len(part), part) for part in (xml, stdin, listed))


def plan(settings: Settings, job_id: uuid.UUID, payload: Payload) -> Plan:
    """Everything the job's run needs. ValueError, KeyError: the settings no longer allow it."""
    agent_type, config = payload.agent_type, payload.job_config
    return Plan(spec=sandbox_spec(settings, job_id, agent_type, config), script=payload.script,
                head=runner_head(settings, payload),
                pool=pool_spec(settings, agent_type, config), nuget=nuget_spec(settings, agent_type, config))
