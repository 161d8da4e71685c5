"""A warm pool of pre-started sandboxes per node and sandbox profile (agent type + limits).

Each pooled container is started ahead with all the limits of a cold one; its runner waits for the
script on stdin. A job takes one, renames it after itself (so it is stopped by name like any other),
uses it once, and it is destroyed; the pool refills in the background (at once in a burst, once
the pool is quiet after one user's jobs: `refill_now`). Isolation and the clean disk are exactly as
without the pool: nothing is ever reused between jobs, only started earlier.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import replace
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from executors.nuget.spec import MOUNT_ROOT
from executors.pool.compiled_cache import CompiledCache, packages_digest
from executors.pool.packages import lend_packages
from executors.sandbox import Sandbox, remove_sandbox, remove_job_sandbox
from executors.spec import NAMESPACE, POOL_PREFIX, Outcome, PoolSpec, SandboxError, SandboxGone, SandboxSpec

log = logging.getLogger(__name__)

MAX_IDLE_S = 1500.0  #: a pooled sandbox older than this is replaced (its reaper deadline is later)
WARM_AFTER_S = 1.0  #: warmup "auto": the pool's idle runners warm up after this long without a job
#: the refill a lone job left for later (`refill_now`) starts after this long without a job: longer
#: than the gap between one client's jobs back to back, short enough that a user at a prompt finds
#: the pool refilled (and warmed) when the next job comes
REFILL_AFTER_S = 0.3
#: gVisor serves clock reads through its vDSO only once it has calibrated its clock, about a second
#: after the sandbox boots, and Mono's JIT reads the clock often: a pooled runner starts after that
#: (half the CPU of a sandbox, docs/PERFORMANCE.md); the wait costs nothing but a deeper pool
GVISOR_CLOCK_S = 1.1
#: pooled sandboxes per slot (POOL_SIZE -1): a pooled gVisor sandbox takes seconds to be ready and a
#: busy slot takes one far more often, so this many come up behind each (docs/PERFORMANCE.md)
PER_SLOT = 8


def refill_now(active: int, slots: int, left: int) -> bool:
    """Whether a job that just took a pooled sandbox has the pool refill now, or once it is quiet
    (REFILL_AFTER_S). A job taken while fewer jobs run than the node has slots (one user's jobs,
    back to back) leaves it for later as long as a sandbox per slot is left: a sandbox started
    meanwhile would take its start (~0.2 core-s under runsc alone, ~0.45 through Docker) from the
    next job. With every slot busy (a burst) it refills at once: there the pool's depth counts."""
    return active >= slots or left < max(slots, 1)


def template(spec: SandboxSpec, pool: PoolSpec) -> SandboxSpec:
    """The spec of a pooled sandbox for jobs like `spec`: same everything but the job and its packages."""
    command = spec.command
    if spec.gvisor:  # its runner starts once gVisor's clock is calibrated
        command = (*spec.delayed_start, f"{GVISOR_CLOCK_S:g}", *command)
    return replace(spec, job_id="pool-template", command=command, attempt=1, node_id="",
                   reap_grace_s=MAX_IDLE_S + 300, mounts=(), references=(),
                   artifacts=pool.cache_mb > 0, references_on_stdin=bool(pool.packages_dir))


def node_slots(agent_type: str) -> int:
    """How many sandboxes of an agent type this node runs at once (its Ray resource)."""
    node_id = ray.get_runtime_context().get_node_id()
    return next((int(n["Resources"].get(agent_type, 0)) for n in ray.nodes() if n["NodeID"] == node_id), 0)


def pool_name(node_id: str, spec: SandboxSpec, pool: PoolSpec) -> str:
    digest = hashlib.sha256(repr((template(spec, pool), pool.warmup, pool.packages_dir)).encode()).hexdigest()[:16]
    return f"{POOL_PREFIX}{node_id[:16]}-{digest}"


def _lend(sandbox: Sandbox, mounts: tuple[tuple[str, str], ...]) -> None:
    try:
        lend_packages(sandbox.folder, mounts)
    except OSError as e:  # before the script: the job can take a cold sandbox instead
        raise SandboxGone(f"its packages could not be lent: {e}") from None


class PoolClosed(RuntimeError):
    """The pool retired before it took the job: nothing was run; use a sandbox of the job's own."""


@ray.remote(num_cpus=0, max_concurrency=64)
class SandboxPool:
    def __init__(self, spec: SandboxSpec, pool: PoolSpec):
        node_id = ray.get_runtime_context().get_node_id()
        self.template = replace(template(spec, pool), node_id=node_id)
        # one folder per pooled sandbox; what an earlier pool of this name left is gone with its sandboxes
        self.packages = Path(pool.packages_dir) / pool_name(node_id, spec, pool) if pool.packages_dir else None
        if self.packages:
            shutil.rmtree(self.packages, ignore_errors=True)
            self.packages.mkdir(parents=True)
            _remove_folders_of_dead_pools(self.packages.parent)
        self.cache = CompiledCache(pool.cache_mb << 20, spec.image)
        self.warmup = pool.warmup
        self.agent_type = pool.agent_type
        self.slots = node_slots(pool.agent_type)
        self.size = pool.size if pool.size >= 0 else PER_SLOT * self.slots
        self.idle: deque[Sandbox] = deque()
        self.starting = 0
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  #: a pre-started sandbox came up, or failed to
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
                # sandboxes still starting remove themselves once up (closing): a start cut short
                # by the actor's end would leave a container behind
                self.ready.wait_for(lambda: self.starting == 0, timeout=60)
            for sandbox in idle:
                self._remove(sandbox)
            if self.packages:
                shutil.rmtree(self.packages, ignore_errors=True)
            log.info("pool %s: no job for %g s; removing it", self.template.image, idle_s)
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            return

    def _refill(self, at_most: int | None = None) -> None:
        """Starts the sandboxes the pool lacks; `at_most` that many starting at a time (the rest
        follow as those come up, while the pool stays quiet)."""
        with self.lock:
            need = 0 if self.closing else max(0, self.size - len(self.idle) - self.starting)
            if at_most is not None:
                need = min(need, max(0, at_most - self.starting))
            self.starting += need
        for _ in range(need):
            threading.Thread(target=self._start_one, daemon=True).start()

    def _start_one(self) -> None:
        try:
            spec, folder = replace(self.template, job_id=f"pool-{uuid.uuid4()}"), None
            if self.packages:
                folder = self.packages / spec.job_id
                folder.mkdir(mode=0o755)
                spec = replace(spec, mounts=((str(folder), MOUNT_ROOT),))
            sandbox = Sandbox(spec)
            sandbox.folder = folder
            if not sandbox.wait_started():
                self._remove(sandbox)
                raise SandboxError("the pre-started sandbox did not come up")
        except Exception:
            log.exception("could not pre-start a sandbox")
            sandbox = None
        with self.lock:
            self.starting -= 1
            self.ready.notify_all()
            up = sandbox is not None and not self.closing
            if up:
                self.idle.append(sandbox)
                self._warm_idle()
        if up:
            self._refill_when_quiet()  # a paused refill goes on, a slot's worth at a time
        elif sandbox is not None:
            self._remove(sandbox)

    @staticmethod
    def _remove(sandbox: Sandbox, name: str | None = None) -> None:
        """Removes a sandbox (under the job's name once taken) and its package folder."""
        if sandbox is not None:
            sandbox.remove()  # under the job's name once taken
        else:
            remove_sandbox(name)
        if sandbox is not None and sandbox.folder:
            shutil.rmtree(sandbox.folder, ignore_errors=True)

    def _take(self) -> Sandbox | None:
        """An idle pre-started sandbox; if none is idle but some are coming up, the first of them
        (it started before a cold one could); None: start a cold one."""
        with self.lock:
            while True:
                while self.idle:
                    sandbox = self.idle.popleft()
                    if sandbox.alive() and time.monotonic() - sandbox.created < MAX_IDLE_S:
                        return sandbox
                    threading.Thread(target=self._remove, args=(sandbox,), daemon=True).start()
                if not self.starting or not self.ready.wait(timeout=10):
                    return None

    def run(self, spec: SandboxSpec, script: str, head: bytes = b"") -> Outcome:
        with self.lock:
            if self.closing:
                raise PoolClosed("the pool is being removed")
            self.active += 1
        try:
            return self._run(spec, script, head)
        finally:
            with self.lock:
                self.active -= 1
                self.last_used = time.monotonic()
            threading.Timer(REFILL_AFTER_S, self._refill_when_quiet).start()
            if self.warmup == "auto":
                threading.Timer(WARM_AFTER_S, self._warm_when_idle).start()

    def _quiet(self, for_s: float) -> bool:
        """(Holding the lock.) No job runs, and none has for `for_s` (timers are not exact)."""
        return self.active == 0 and time.monotonic() - self.last_used >= for_s - 0.05

    def _refill_when_quiet(self) -> None:
        """A lone job's refill, a slot's worth at a time: a job coming meanwhile meets little of it."""
        with self.lock:
            quiet = self._quiet(REFILL_AFTER_S)
        if quiet:
            self._refill(at_most=max(1, self.slots))

    def _warm_when_idle(self) -> None:
        with self.lock:
            self._warm_idle()

    def _warm_idle(self) -> None:
        """(Holding the lock: no job can take them meanwhile.) Warms the idle runners up if the
        node has CPU to spare for it."""
        quiet = self._quiet(WARM_AFTER_S)
        if self.warmup == "always" or (self.warmup == "auto" and quiet):
            for sandbox in self.idle:
                sandbox.warm_up()

    def _run(self, spec: SandboxSpec, script: str, head: bytes) -> Outcome:
        """`spec.mounts`: the job's restored packages, lent to the pre-started sandbox; a cold one
        mounts them itself."""
        sandbox = self._take()
        with self.lock:
            now = refill_now(self.active, self.slots, len(self.idle) + self.starting)
        if now:
            self._refill()
        packages = spec.mounts
        key = self.cache.key(script, packages_digest(packages) if packages and self.cache.on else b"")
        compiled = self.cache.get(key)
        try:
            outcome = None
            if sandbox is not None and packages and not self.packages:
                self._remove(sandbox)  # this pool cannot lend packages (the task does not send such jobs)
                sandbox = None
            elif sandbox is not None:
                try:
                    if packages:
                        _lend(sandbox, packages)
                    outcome = sandbox.run(script, name=spec.name, remove=False, artifact=compiled,
                                          keep_artifact=self.cache.on, references=spec.references if packages else None,
                                          head=head)
                except SandboxGone:  # only ever before the script reached it: a cold start instead
                    self._remove(sandbox)
                    sandbox = None
            if outcome is None:  # none ready (or it was gone): a cold start, as without the pool
                sandbox = Sandbox(replace(spec, artifacts=self.cache.on))
                outcome = sandbox.run(script, remove=False, artifact=compiled, keep_artifact=self.cache.on, head=head)
            if compiled is None and sandbox.artifact is not None:
                self.cache.put(key, sandbox.artifact)
            return outcome
        finally:  # whatever happened: the teardown is off the job's path, but always happens
            threading.Thread(target=self._remove, args=(sandbox, spec.name), daemon=True).start()

    def state(self) -> dict:
        """What GET /actuator/health shows of it: its sandboxes and its compiled-script cache."""
        with self.lock:
            counts = {"agentType": self.agent_type, "node": self.template.node_id, "capacity": self.size,
                      "idle": len(self.idle), "warmed": sum(1 for s in self.idle if s.warmed),
                      "starting": self.starting, "active": self.active}
        return {**counts, "cache": self.cache.stats()}


def _remove_folders_of_dead_pools(packages_dir: Path) -> None:
    """Package folders of pools that ended without retiring (their node or actor died): the
    sandboxes that bound them are orphans the reaper removes."""
    for folder in packages_dir.iterdir():
        try:
            ray.get_actor(folder.name, namespace=NAMESPACE)
        except ValueError:
            shutil.rmtree(folder, ignore_errors=True)


#: this worker's handles of its node's pools, by name: a lookup by name (`get_if_exists`) costs as
#: much CPU as the rest of a job's Ray calls together
_handles: dict[str, ray.actor.ActorHandle] = {}


def pool_for(spec: SandboxSpec, pool: PoolSpec, cached: bool = True):
    """This node's pool for sandboxes like `spec` (created on first use, shared by the node's tasks).
    `cached=False`: looked up again (the cached handle's actor retired or died)."""
    node_id = ray.get_runtime_context().get_node_id()
    name = pool_name(node_id, spec, pool)
    if not cached or name not in _handles:
        _handles[name] = SandboxPool.options(
            name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(spec, pool)
    return _handles[name]


def run_pooled(spec: SandboxSpec, script: str, pool: PoolSpec, head: bytes = b"") -> Outcome | None:
    """Runs a job in a sandbox of this node's pool. None: no pool took it (it retired or died;
    the job's sandbox, if one was started, is stopped), so it needs a sandbox of its own."""
    kept = pool_name(ray.get_runtime_context().get_node_id(), spec, pool) in _handles
    # a handle this worker kept may be of a pool that has retired since: then one looked up again
    for cached in [True, False] if kept else [False]:
        try:
            return ray.get(pool_for(spec, pool, cached).run.remote(spec, script, head))
        except (PoolClosed, ray.exceptions.RayActorError):
            remove_job_sandbox(spec.job_id)
    return None
