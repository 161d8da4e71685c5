"""From a stored job to a Ray task on a node of its agent type, and from its outcome to a result."""

import asyncio
import logging
import threading
import uuid
from dataclasses import replace

from pydantic.alias_generators import to_camel

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.agent_types import CATALOGUE
from executors import nuget_config
from executors.nuget_restore import NuGetSpec
from executors.pool import PoolSpec
from executors.sandbox import Limits, Outcome, SandboxSpec, stop_job_sandbox
from executors.task import run_job, stop_sandbox
from serve_app.config import LIMIT_FIELDS, Settings
from serve_app.events import Events
from serve_app.models import FinishedWith, JobConfig, JobResult, JobStatus
from serve_app.store import JobStore

log = logging.getLogger("dotnet_scripts.jobs")


def agent_profile(settings: Settings, agent_type: str) -> tuple[Limits, str]:
    """The most an agent type's jobs may have: its limits and network mode."""
    over = settings.agent_overrides.get(agent_type, {})
    limits = Limits(**{k: type(getattr(settings, k))(over.get(k, getattr(settings, k))) for k in LIMIT_FIELDS})
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


def sandbox_spec(settings: Settings, job_id: uuid.UUID, agent_type: str, config: JobConfig | None = None) -> SandboxSpec:
    t = CATALOGUE[agent_type]
    limits, network = job_profile(settings, agent_type, config)
    return SandboxSpec(job_id=str(job_id), image=t.image, command=t.command, runtime=settings.sandbox_runtime,
                       user=t.user, work_dir=t.work_dir, network=network,
                       egress_allow=tuple(settings.egress_allow), limits=limits)


def nuget_spec(settings: Settings, agent_type: str, config: JobConfig | None) -> NuGetSpec | None:
    """What the job's `#r "nuget: …"` restore may use; None where the runner restores itself."""
    target = CATALOGUE[agent_type].nuget
    if target is None:
        return None
    xml = config.nuget_config_xml if config and config.nuget_config_xml else settings.nuget_config_xml
    return NuGetSpec(sources=tuple(nuget_config.parse(xml)) if xml else (), target=target,
                     cache_dir=settings.nuget_cache_dir, cache_mb=settings.nuget_cache_mb,
                     max_package_mb=settings.nuget_max_package_mb, max_extract_mb=settings.nuget_max_extract_mb,
                     timeout_s=settings.nuget_restore_timeout_s, allow=tuple(settings.egress_allow))


def runner_input(agent_type: str, script: str, config: JobConfig | None) -> str:
    """What the agent type's runner reads on stdin: the script, preceded by the job's NuGet.Config
    for runners that restore packages themselves."""
    if not CATALOGUE[agent_type].config_on_stdin:
        return script
    xml = config.nuget_config_xml if config and config.nuget_config_xml else ""
    return f"{len(xml.encode())}\n{xml}{script}"


def result_from_outcome(o: Outcome) -> JobResult:
    """How a run ended, in the API's terms: the time limit wins, then exit code 0 means success."""
    if o.timed_out:
        finished = FinishedWith.TIME_LIMIT_EXCEEDED
    elif o.exit_code == 0 and not o.out_of_memory:
        finished = FinishedWith.SUCCEEDED
    else:
        finished = FinishedWith.FAILED
    if o.timed_out:
        limit = "WALL_TIME"
    elif o.out_of_memory:
        limit = "MEMORY"
    elif o.stdout_truncated or o.stderr_truncated:
        limit = "OUTPUT"
    else:
        limit = None
    signal = o.exit_code - 128 if o.exit_code is not None and 128 < o.exit_code < 160 else None
    return JobResult(
        finished_with=finished, stdout=o.stdout, stderr=o.stderr, exit_code=o.exit_code,
        limit_exceeded=limit, signal=signal,
        stdout_truncated=o.stdout_truncated, stderr_truncated=o.stderr_truncated,
        out_of_memory=o.out_of_memory, started_at=o.started_at, finished_at=o.finished_at,
        duration_ms=int((o.finished_at - o.started_at).total_seconds() * 1000),
    )


class Dispatcher:
    """Starts each job's Ray task and records what comes back. Lives in an API replica."""

    def __init__(self, settings: Settings, store: JobStore, events: Events):
        self.settings, self.store, self.events = settings, store, events
        self.running: dict[uuid.UUID, tuple[asyncio.Task, object]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def submit(self, job_id: uuid.UUID, agent_type: str, script: str, config: JobConfig | None = None) -> None:
        spec = sandbox_spec(self.settings, job_id, agent_type, config)
        # the pool holds sandboxes of the agent type's own profile; jobs with their own limits start cold
        custom = config is not None and (config.limits is not None or config.network is not None)
        pool = None if custom else PoolSpec(agent_type, self.settings.pool_size, self.settings.pool_warmup)
        nuget = nuget_spec(self.settings, agent_type, config)
        gen = run_job.options(resources={agent_type: 1}, name=f"job-{job_id}").remote(
            spec, runner_input(agent_type, script, config), pool, nuget)
        self.loop = asyncio.get_running_loop()
        task = self.loop.create_task(self._follow(job_id, gen))
        self.running[job_id] = (task, gen)
        task.add_done_callback(lambda _t: self.running.pop(job_id, None))

    async def _follow(self, job_id: uuid.UUID, gen) -> None:
        try:
            async for ref in gen:
                item = await ref
                if item["event"] == "RUNNING":
                    await asyncio.to_thread(self.store.transition, job_id, JobStatus.RUNNING, node_id=item["node_id"])
                    log.info("job %s RUNNING node=%s", job_id, item["node_id"])
                elif item["event"] == "FINISHED":
                    result = result_from_outcome(item["outcome"])
                    await asyncio.to_thread(self.store.transition, job_id, JobStatus.FINISHED, result=result)
                    await self.events.publish(job_id, JobStatus.FINISHED.value)
                    log.info("job %s FINISHED finishedWith=%s exitCode=%s stdout=<CONTENT OMITTED> stderr=<CONTENT OMITTED>",
                             job_id, result.finished_with.value, result.exit_code)
                else:
                    await self._reject(job_id, "the sandbox could not be started on its node")
                    log.error("job %s sandbox error: %s", job_id, item["reason"])
        except asyncio.CancelledError:
            raise
        except Exception as e:  # node lost, worker crashed, task cancelled...
            log.warning("job %s lost: %s", job_id, type(e).__name__)
            await self._reject(job_id, f"the job's task failed ({type(e).__name__}); it was not run to completion")

    async def _reject(self, job_id: uuid.UUID, reason: str) -> None:
        if await asyncio.to_thread(self.store.transition, job_id, JobStatus.REJECTED, reason=reason):
            log.info("job %s REJECTED reason=%s", job_id, reason)
            await self.events.publish(job_id, JobStatus.REJECTED.value)

    def stop(self, job_id: uuid.UUID, node_id: str | None) -> None:
        """Stops a job's sandbox wherever it runs; callable from any thread."""
        entry = self.running.pop(job_id, None)
        if entry is not None:
            task, gen = entry
            self.loop.call_soon_threadsafe(task.cancel)
            try:
                ray.cancel(gen)  # a task still waiting for a slot never starts
            except Exception:
                log.debug("job %s: cancel failed", job_id, exc_info=True)
        if not node_id:
            return
        if node_id == ray.get_runtime_context().get_node_id():  # our own node: no task to schedule
            threading.Thread(target=stop_job_sandbox, args=(str(job_id),), daemon=True).start()
        else:
            stop_sandbox.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
            ).remote(str(job_id))
