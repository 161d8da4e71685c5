"""The owner of the jobs' Ray tasks, kept apart from the dispatcher so that runs outlive it.

Ray kills a task when the process that submitted it dies. The dispatcher holds the logic (the
queue in the database, retries, recording results) and may fail or be restarted; if it owned the
tasks, a restart would kill the scripts it had started and running them again would run them
twice. So the tasks are submitted by this small detached actor, which does nothing but start
them and keep what they report until the dispatcher has recorded it.
"""

from __future__ import annotations

import asyncio
import logging

import ray

from cluster.node import on_the_head
from executors.spec import NAMESPACE
from executors.task import run_job

log = logging.getLogger("dotnet_scripts.launcher")

NAME = "launcher"


class _Run:
    def __init__(self, agent_type: str, gen):
        self.agent_type, self.gen = agent_type, gen
        self.events: list[dict] = []
        self.changed = asyncio.Event()
        self.done = False


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10000)
class Launcher:
    def __init__(self):
        self.runs: dict[str, _Run] = {}

    async def start(self, job_id: str, agent_type: str, args: tuple) -> None:
        """Starts a job's task (once: a second start of the same job is ignored)."""
        if job_id in self.runs:
            return
        # no name of its own: Ray keeps metrics per task name, and a name per job grew this actor
        # by ~90 KiB a job (docs/RELIABILITY.md)
        gen = run_job.options(resources={agent_type: 1}).remote(*args)
        run = self.runs[job_id] = _Run(agent_type, gen)
        asyncio.get_running_loop().create_task(self._collect(run))

    async def _collect(self, run: _Run) -> None:
        try:
            async for ref in run.gen:
                run.events.append(await ref)
                run.changed.set()
        except Exception as e:  # node died, worker crashed, cancelled: the dispatcher decides
            run.events.append({"event": "LOST", "error": type(e).__name__,
                               "cancelled": isinstance(e, (ray.exceptions.TaskCancelledError, asyncio.CancelledError))})
        run.done = True
        run.changed.set()

    async def events(self, job_id: str, seen: int, timeout: float = 30.0) -> list[dict] | None:
        """The job's events after the first `seen`, waiting up to `timeout` for one; None: unknown job."""
        run = self.runs.get(job_id)
        if run is None:
            return None
        while len(run.events) <= seen and not run.done:
            run.changed.clear()
            try:
                await asyncio.wait_for(run.changed.wait(), timeout)
            except asyncio.TimeoutError:
                break
        return run.events[seen:]

    def held(self) -> dict[str, str]:
        """The jobs whose tasks it holds: id → agent type."""
        return {job_id: run.agent_type for job_id, run in self.runs.items()}

    def forget(self, job_id: str) -> None:
        self.runs.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        """Cancels a job's task: one still waiting for a slot never starts."""
        run = self.runs.get(job_id)
        if run is not None and not run.done:
            try:
                ray.cancel(run.gen)
            except Exception:
                log.debug("job %s: cancel failed", job_id, exc_info=True)


def launcher(node_id: str | None = None):
    """The cluster's launcher, created on first use on the head (or near `node_id`)."""
    return Launcher.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                            **on_the_head(node_id)).remote()
