"""From a stored job to a Ray task on a node of its agent type, and from its outcome to a result."""

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import replace

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.node import on_the_head
from executors.protocol import diagnostics
from executors.spec import Outcome
from executors.sandbox import remove_job_sandbox
from executors.task import reap_node, remove_job_sandbox_on_node
from serve_app.config import Settings
from serve_app.events import Events
from serve_app.launcher import NAMESPACE, launcher
from serve_app.models import FinishedWith, Job, JobResult, JobStatus, Usage
from serve_app.plan import plan
from serve_app.store import JobStore

log = logging.getLogger("dotnet_scripts.jobs")
#: how long after a run's stale limit its node is still reaped: a sandbox's reaper deadline lies
#: its grace (SandboxSpec.reap_grace_s) past its wall time, and the stale limit outlasts that
REAP_AFTER_S = 120.0


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
    run_ms = int((o.finished_at - o.started_at).total_seconds() * 1000)
    told = o.compiled is not None  # by the runner, before the script ran
    return JobResult(
        finished_with=finished, stdout=o.stdout, stderr=o.stderr, exit_code=o.exit_code,
        limit_exceeded=limit, signal=signal,
        stdout_truncated=o.stdout_truncated, stderr_truncated=o.stderr_truncated,
        out_of_memory=o.out_of_memory, started_at=o.started_at, finished_at=o.finished_at,
        duration_ms=run_ms,
        phase=("COMPILE" if o.compiled.status == "failed" else "RUN") if told else None,
        diagnostics=diagnostics(o.compiled.messages) if told else None,
        usage=Usage(compile_ms=o.compiled.ms if told else None, run_ms=run_ms, cpu_ms=o.cpu_ms,
                    memory_peak_kb=o.memory_peak_kb),
    )


#: a safety net only: submissions and ends of jobs wake the dispatcher at once
RESCAN_S = 5.0
#: tasks handed to Ray per agent type beyond its slots: the next job starts the moment a slot
#: frees, and an agent type without nodes still shows the autoscaler its demand
AHEAD = 2
#: runs of one job at most: a run lost with its node or worker is tried once more
MAX_ATTEMPTS = 2
NAME = "dispatcher"


def settings_digest(settings: Settings) -> str:
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def jobs_to_hand_out(slots: int, in_flight: int) -> int:
    """How many more of an agent type's queued jobs to hand to Ray now."""
    return max(0, slots + AHEAD - in_flight)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10000)
class Dispatcher:
    """The cluster's single dispatcher: hands PENDING jobs from the database to Ray in order,
    bounded by capacity, and records what their runs report. Its state is the database (and the
    launcher's tasks): restarted, it follows the runs already started and starts the rest, so no
    job is lost or run twice."""

    def __init__(self, settings: dict):
        logging.basicConfig(level=logging.INFO)
        self.settings = Settings(**settings)
        self.store = JobStore(self.settings.database_url)
        self.events = Events(self.settings.redis_url)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.launcher = launcher(self.node_id)
        self.following: dict[uuid.UUID, tuple[str, int]] = {}  #: job → (agent type, attempt)
        self.waiters: dict[str, asyncio.Event] = {}  #: long-polls waiting for a job's end
        self.busy_until: dict[str, float] = {}  #: node → until when it is reaped at each sweep
        self.wake = asyncio.Event()
        self.main = asyncio.get_running_loop().create_task(self._main())
        self.reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    def kick(self) -> None:
        """There may be new work (a job was submitted)."""
        self.wake.set()

    def ping(self) -> dict:
        return {"settings": settings_digest(self.settings), "following": len(self.following)}

    async def wait_end(self, job_id: str, seconds: float) -> None:
        """Returns when the job has ended (or is gone), or after `seconds`: long-polls without Redis."""
        ended = self.waiters.setdefault(job_id, asyncio.Event())
        job = await asyncio.to_thread(self.store.get, uuid.UUID(job_id))  # it may have ended already
        if job is None or job.status.ended:
            return
        try:
            await asyncio.wait_for(ended.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _ended(self, job_id: uuid.UUID) -> None:
        ended = self.waiters.pop(str(job_id), None)
        if ended is not None:
            ended.set()

    async def stop(self, job_id: str, node_id: str | None) -> None:
        """Stops a job's run wherever it is: its task if still waiting, its sandbox if started."""
        self._ended(uuid.UUID(job_id))  # deleted, or REJECTED by a replica's sweep
        await self.launcher.cancel.remote(job_id)
        if not node_id:
            return
        if node_id == self.node_id:
            await asyncio.to_thread(remove_job_sandbox, job_id)
        else:
            await remove_job_sandbox_on_node.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)).remote(job_id)

    async def _main(self) -> None:
        while True:
            try:
                await self._recover()
                break
            except Exception:
                log.exception("dispatcher: recovery failed; retrying")
                await asyncio.sleep(RESCAN_S)
        while True:
            self.wake.clear()
            try:
                await self._dispatch()
            except Exception:
                log.exception("dispatcher: pass failed; retrying")
            try:
                await asyncio.wait_for(self.wake.wait(), RESCAN_S)
            except asyncio.TimeoutError:
                pass

    async def _reap_forever(self) -> None:
        """Has the nodes of the agent types remove the orphaned sandboxes of their machines: each
        node when it is first seen (what its machine's earlier node left), then at every sweep while
        it has run a job lately. Not after: a task on a node makes it busy, and an idle node must
        stay idle for an autoscaler to remove it; by then every orphan of its jobs is past its deadline."""
        seen: set[str] = set()
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                for n in await asyncio.to_thread(ray.nodes):
                    node = n["NodeID"]
                    if n["Alive"] and any(n["Resources"].get(t) for t in self.settings.agent_types) and (
                            node not in seen or time.monotonic() < self.busy_until.get(node, 0.0)):
                        seen.add(node)
                        reap_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                            node_id=node, soft=False)).remote()
            except Exception:
                log.exception("dispatcher: reaping failed; retrying")

    async def _recover(self) -> None:
        """After a (re)start: follow the runs the launcher still holds, requeue the rest."""
        held = await self.launcher.held.remote()
        ours = await asyncio.to_thread(self.store.dispatched_jobs)
        for job in ours:
            if str(job.id) in held:
                self._follow(job.id, job.agent_type, job.attempts)
            elif job.status == JobStatus.PENDING:  # its task never reported a start: run it now
                await asyncio.to_thread(self.store.requeue, job.id, False)
            else:
                await self._lost(job.id, "its run was lost with the service's launcher")
        known = {str(job.id) for job in ours}
        for job_id in set(held) - known:  # deleted or already recorded: nothing to follow
            await self.launcher.cancel.remote(job_id)
            await self.launcher.forget.remote(job_id)
        if ours:
            log.info("dispatcher: recovered %d started jobs", len(ours))

    async def _dispatch(self) -> None:
        total = await asyncio.to_thread(ray.cluster_resources)
        for agent_type in self.settings.agent_types:
            in_flight = sum(1 for t, _ in self.following.values() if t == agent_type)
            n = jobs_to_hand_out(int(total.get(agent_type, 0)), in_flight)
            if n:
                for job in await asyncio.to_thread(self.store.queued, agent_type, n):
                    await self._start(job)

    async def _start(self, job: Job) -> None:
        attempt = await asyncio.to_thread(self.store.claim, job.id)
        if attempt is None:  # deleted or ended meanwhile
            return
        payload = job.request().payload
        try:
            p = plan(self.settings, job.id, payload)
            args = (replace(p.spec, attempt=attempt), p.script, p.pool, p.nuget, p.head)
        except (ValueError, KeyError) as e:  # the deployment's settings changed since it was accepted
            await self._reject(job.id, f"this deployment no longer accepts its configuration: {e}")
            return
        try:
            await self.launcher.start.remote(str(job.id), job.agent_type, args)
        except ray.exceptions.RayActorError:  # the launcher is restarting: the job waits for the next pass
            await asyncio.to_thread(self.store.requeue, job.id, False)
            return
        self._follow(job.id, job.agent_type, attempt)

    def _follow(self, job_id: uuid.UUID, agent_type: str, attempt: int) -> None:
        self.following[job_id] = (agent_type, attempt)
        asyncio.get_running_loop().create_task(self._track(job_id, attempt))

    async def _track(self, job_id: uuid.UUID, attempt: int) -> None:
        try:
            why = await self._record_run(job_id)
        except Exception:
            log.exception("dispatcher: following job %s failed", job_id)
            why = "the service lost track of its run"
        finally:
            if self.following.get(job_id, (None, None))[1] == attempt:
                del self.following[job_id]
            self.wake.set()  # a slot is free
        try:
            await self.launcher.forget.remote(str(job_id))
        except ray.exceptions.RayActorError:
            pass
        if why:
            await self._lost(job_id, why)

    async def _record_run(self, job_id: uuid.UUID) -> str:
        """Records a run's events until it ends; why it ended without an outcome ("": it did not)."""
        seen = 0
        while True:
            try:
                events = await self.launcher.events.remote(str(job_id), seen)
            except ray.exceptions.RayActorError:  # the launcher died, and the tasks it owned
                events = None
            if events is None:
                return "its run was lost with the service's launcher"
            for item in events:
                seen += 1
                if item["event"] == "LOST":
                    return "" if item["cancelled"] else f"its node or worker was lost ({item['error']})"
                if await self._record(job_id, item):
                    return ""

    async def _record(self, job_id: uuid.UUID, item: dict) -> bool:
        """Records a run's event; True when the run has ended."""
        if item["event"] == "RUNNING":
            # its node is reaped at each sweep until any orphan of this run is past its deadline
            self.busy_until[item["node_id"]] = time.monotonic() + self.settings.stale_after_s + REAP_AFTER_S
            if await asyncio.to_thread(self.store.transition, job_id, JobStatus.RUNNING, node_id=item["node_id"]):
                log.info("job %s RUNNING node=%s", job_id, item["node_id"])
                await self.events.publish(job_id, JobStatus.RUNNING.value)
            return False
        if item["event"] == "FINISHED":
            result = result_from_outcome(item["outcome"])
            if await asyncio.to_thread(self.store.transition, job_id, JobStatus.FINISHED, result=result):
                self._ended(job_id)
                await self.events.publish(job_id, JobStatus.FINISHED.value)
                log.info("job %s FINISHED finishedWith=%s exitCode=%s stdout=<CONTENT OMITTED> stderr=<CONTENT OMITTED>",
                         job_id, result.finished_with.value, result.exit_code)
            return True
        log.error("job %s sandbox error: %s", job_id, item.get("reason"))
        await self._reject(job_id, "the sandbox could not be started on its node")
        return True

    async def _lost(self, job_id: uuid.UUID, why: str) -> None:
        """A run ended without an outcome: tried once more if it may be, else REJECTED."""
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None or job.status.ended:
            return
        if job.attempts < MAX_ATTEMPTS and await asyncio.to_thread(self.store.requeue, job_id):
            log.warning("job %s: %s; trying it again", job_id, why)
            self.wake.set()
            return
        await self._reject(job_id, f"{why}; it was tried {job.attempts} times")

    async def _reject(self, job_id: uuid.UUID, reason: str) -> None:
        if await asyncio.to_thread(self.store.transition, job_id, JobStatus.REJECTED, reason=reason):
            log.info("job %s REJECTED reason=%s", job_id, reason)
            self._ended(job_id)
            await self.events.publish(job_id, JobStatus.REJECTED.value)


def dispatcher(settings: Settings, node_id: str | None = None, replace_other: bool = False):
    """The cluster's dispatcher, created on first use on the head (or near `node_id`). With
    `replace_other`, one running with other settings (an earlier deployment) is replaced; the runs
    it started go on and the new one follows them."""
    make = Dispatcher.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                              **on_the_head(node_id))
    handle = make.remote(settings.model_dump())
    if replace_other and ray.get(handle.ping.remote())["settings"] != settings_digest(settings):
        ray.kill(handle, no_restart=True)
        handle = make.remote(settings.model_dump())
    return handle


class DispatcherClient:
    """What an API replica asks of the dispatcher; every call returns at once."""

    def __init__(self, handle):
        self.handle = handle

    def kick(self) -> None:
        self.handle.kick.remote()

    def stop(self, job_id: uuid.UUID, node_id: str | None) -> None:
        self.handle.stop.remote(str(job_id), node_id)

    async def wait_end(self, job_id: uuid.UUID, seconds: float) -> None:
        await asyncio.wait_for(self.handle.wait_end.remote(str(job_id), seconds), seconds + 5)

    async def ping(self, timeout: float = 2.0) -> dict:
        try:
            info = await asyncio.wait_for(self.handle.ping.remote(), timeout)
            return {"status": "UP", "details": {"following": info["following"]}}
        except Exception as e:
            return {"status": "DOWN", "details": {"error": type(e).__name__}}
