"""A warm pool of pre-started sandboxes per node and sandbox profile (agent type + limits).

Each pooled container is started ahead with all the limits of a cold one; its runner waits for the
script on stdin. A job takes one, renames it after itself (so it is stopped by name like any other),
uses it once, and it is destroyed; the pool refills in the background. Isolation and the clean
disk are exactly as without the pool: nothing is ever reused between jobs, only started earlier.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from executors.sandbox import Outcome, Sandbox, SandboxError, SandboxGone, SandboxSpec, remove_container, run_sandbox

log = logging.getLogger(__name__)

NAMESPACE = "dotnet-scripts"
MAX_IDLE_S = 1500.0  #: a pooled sandbox older than this is replaced (its reaper deadline is later)


@dataclass(frozen=True)
class PoolSpec:
    """How a node pools sandboxes for an agent type."""
    agent_type: str
    size: int = -1  #: pre-started sandboxes; -1: one per slot of the agent type on the node
    #: the runner compiles a small program while it waits (CSRUN_WARMUP): the job's compile starts
    #: warm (~0.35 s less at low load) at the price of that CPU per job under a burst
    warmup: bool = False
    #: after this long without a job the pool removes its sandboxes and its actor: Ray counts a
    #: node with a live actor as busy, and an autoscaler would never remove it
    idle_s: float = 120.0


def template(spec: SandboxSpec, warmup: bool = False) -> SandboxSpec:
    """The spec of a pooled sandbox for jobs like `spec`: same everything but the job."""
    return replace(spec, job_id="pool-template", attempt=1, node_id="", reap_grace_s=MAX_IDLE_S + 300,
                   env=(*spec.env, ("CSRUN_WARMUP", "1")) if warmup else spec.env)


def node_slots(agent_type: str) -> int:
    """How many sandboxes of an agent type this node runs at once (its Ray resource)."""
    node_id = ray.get_runtime_context().get_node_id()
    return next((int(n["Resources"].get(agent_type, 0)) for n in ray.nodes() if n["NodeID"] == node_id), 0)


def pool_name(node_id: str, spec: SandboxSpec, warmup: bool = False) -> str:
    digest = hashlib.sha256(repr(template(spec, warmup)).encode()).hexdigest()[:16]
    return f"sandbox-pool-{node_id[:16]}-{digest}"


class PoolClosed(RuntimeError):
    """The pool retired before it took the job: nothing was run; use a sandbox of the job's own."""


@ray.remote(num_cpus=0, max_concurrency=64)
class SandboxPool:
    def __init__(self, spec: SandboxSpec, pool: PoolSpec):
        self.template = replace(template(spec, pool.warmup), node_id=ray.get_runtime_context().get_node_id())
        self.size = pool.size if pool.size >= 0 else node_slots(pool.agent_type)
        self.idle: deque[Sandbox] = deque()
        self.starting = 0
        self.lock = threading.Lock()
        self.active, self.last_used, self.closing = 0, time.monotonic(), False
        self._refill()
        threading.Thread(target=self._retire_when_idle, args=(pool.idle_s,), daemon=True).start()

    def _retire_when_idle(self, idle_s: float) -> None:
        while True:
            time.sleep(min(5.0, idle_s / 4))
            with self.lock:
                if self.active or time.monotonic() - self.last_used < idle_s:
                    continue
                self.closing = True
                idle, self.idle = list(self.idle), deque()
            for sandbox in idle:
                sandbox.discard()
            log.info("pool %s: no job for %g s; removing it", self.template.image, idle_s)
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            return

    def _refill(self) -> None:
        with self.lock:
            need = max(0, self.size - len(self.idle) - self.starting)
            self.starting += need
        for _ in range(need):
            threading.Thread(target=self._start_one, daemon=True).start()

    def _start_one(self) -> None:
        try:
            sandbox = Sandbox(replace(self.template, job_id=f"pool-{uuid.uuid4()}"))
        except Exception:
            log.exception("could not pre-start a sandbox")
            sandbox = None
        with self.lock:
            self.starting -= 1
            if sandbox is not None and not self.closing:
                self.idle.append(sandbox)
                return
        if sandbox is not None:
            sandbox.discard()

    def _take(self) -> Sandbox | None:
        with self.lock:
            while self.idle:
                sandbox = self.idle.popleft()
                if sandbox.alive() and time.monotonic() - sandbox.created < MAX_IDLE_S:
                    return sandbox
                threading.Thread(target=sandbox.discard, daemon=True).start()
        return None

    def run(self, spec: SandboxSpec, script: str) -> Outcome:
        with self.lock:
            if self.closing:
                raise PoolClosed("the pool is being removed")
            self.active += 1
        try:
            return self._run(spec, script)
        finally:
            with self.lock:
                self.active -= 1
                self.last_used = time.monotonic()

    def _run(self, spec: SandboxSpec, script: str) -> Outcome:
        sandbox = self._take()
        self._refill()
        if sandbox is None:
            return run_sandbox(spec, script)  # none ready yet: a cold start, as without the pool
        try:
            outcome = sandbox.run(script, name=spec.name, remove=False)
        except SandboxGone:  # before the script reached it: a cold start instead
            sandbox.discard()
            return run_sandbox(spec, script)
        except SandboxError:  # after: the job was stopped (DELETE) or the sandbox failed; never run it again
            remove_container(spec.name)
            raise
        # the teardown of the used container is off the job's path, but always happens
        threading.Thread(target=remove_container, args=(spec.name,), daemon=True).start()
        return outcome

    def capacity(self) -> int:
        return self.size

    def idle_count(self) -> int:
        with self.lock:
            return len(self.idle)


def pool_for(spec: SandboxSpec, pool: PoolSpec):
    """This node's pool for sandboxes like `spec` (created on first use, shared by the node's tasks)."""
    node_id = ray.get_runtime_context().get_node_id()
    return SandboxPool.options(
        name=pool_name(node_id, spec, pool.warmup), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote(spec, pool)
