"""The Ray task on a real in-process Ray: it runs a job where its agent type is offered, and the
reaper removes the sandbox of a task whose worker was killed."""

import os
import signal
import time
from pathlib import Path
import uuid

import pytest
import ray

from cluster.agent_types import MONO_6
from executors.pool import NAMESPACE, PER_SLOT, REFILL_AFTER_S, pool_for, pool_name
from executors.spec import PoolSpec
from executors.reaper import reap
from executors.spec import CONTAINER_PREFIX, Limits, SandboxSpec
from executors.sandbox import remove_sandbox
from executors.nuget.config import parse
from executors.nuget.spec import NuGetSpec
from executors.task import _run, run_job
from testing.waiting import until
from tests.conftest import POOLED, sandbox_containers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray():
    ray.init(resources={MONO_6.name: 2}, include_dashboard=False, num_cpus=2)
    yield
    ray.shutdown()


def spec(**kw) -> SandboxSpec:
    return SandboxSpec(job_id=f"task-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command, **kw)


def test_events_then_outcome_through_the_object_store(local_ray):
    gen = run_job.options(resources={MONO_6.name: 1}).remote(spec(), 'Console.WriteLine("via ray");')
    items = [ray.get(ref) for ref in gen]
    assert [i["event"] for i in items] == ["RUNNING", "FINISHED"]
    assert items[0]["node_id"] == ray.get_runtime_context().get_node_id()
    assert items[1]["outcome"].stdout == "via ray\n"


def task_worker() -> int | None:
    """The pid of the Ray worker running a job's task (its process title while it runs one)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "cmdline").read_bytes().startswith(b"ray::run_job"):
                return int(proc.name)
        except OSError:
            continue
    return None


def test_the_sandbox_of_a_killed_task_is_reaped(local_ray):
    s = spec(limits=Limits(wall_time_s=2), reap_grace_s=1)
    gen = run_job.options(resources={MONO_6.name: 1}).remote(s, "while (true) { }")
    assert ray.get(next(gen))["event"] == "RUNNING"
    worker = until(lambda: s.name in sandbox_containers() and task_worker(), 20, "the task's worker and its sandbox")
    os.kill(worker, signal.SIGKILL)  # the task's worker dies: nobody will remove its sandbox
    time.sleep(4)  # past wall time + grace
    assert s.job_id in reap()
    assert s.name not in sandbox_containers()
    assert all(not n.startswith(CONTAINER_PREFIX + "task-") for n in sandbox_containers())


def pooled_containers() -> set[str]:
    return {n for n in sandbox_containers(pooled=True) if n.startswith(POOLED)}


def kill_pool(actor, before: set[str]) -> None:
    """Kills a pool's actor and removes its sandboxes, those it was starting as it died included."""
    ray.kill(actor)

    def dead() -> bool:
        try:
            ray.get(actor.state.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return True
        return False

    until(dead, 30, "the pool's actor died", interval=0.1)
    time.sleep(1)  # a sandbox start its end cut short has created its container by now, or never will
    for name in pooled_containers() - before:
        remove_sandbox(name)


def test_the_pool_holds_sandboxes_per_slot_of_the_node_warmed_up_while_no_job_runs(local_ray):
    before = pooled_containers()
    s = spec()
    auto = PoolSpec(MONO_6.name, warmup="auto")
    gen = run_job.options(resources={MONO_6.name: 1}).remote(s, 'Console.WriteLine("pooled");', auto)
    assert ray.get(list(gen)[-1])["outcome"].stdout == "pooled\n"
    pool = ray.get_actor(pool_name(ray.get_runtime_context().get_node_id(), s, auto), namespace=NAMESPACE)
    try:
        assert ray.get(pool.state.remote())["capacity"] == PER_SLOT * 2  # the node offers 2 slots of the agent type
        # no job runs: their runners are told to warm up
        until(lambda: ray.get(pool.state.remote())["warmed"] >= PER_SLOT * 2, 60,
              "the pool filled and its runners warmed up", interval=0.5)
        # a warmed runner still runs its job like any other
        again = spec()
        gen = run_job.options(resources={MONO_6.name: 1}).remote(again, 'Console.WriteLine("warm");', auto)
        assert ray.get(list(gen)[-1])["outcome"].stdout == "warm\n"
    finally:
        kill_pool(pool, before)


def test_a_lone_job_refills_the_pool_once_it_is_quiet_and_jobs_on_every_slot_refill_it_at_once(local_ray):
    before = pooled_containers()
    pool = PoolSpec(MONO_6.name, size=6)
    sleep = "System.Threading.Thread.Sleep({});"

    def start(ms: int):
        return run_job.options(resources={MONO_6.name: 1}).remote(spec(), sleep.format(ms), pool)

    def counts() -> dict:
        return ray.get(actor.state.remote())

    def counts_until(cond, what: str, timeout: float = 60) -> None:
        until(lambda: cond(counts()), timeout, lambda: f"{what}: {counts()}", interval=0.1)

    assert ray.get(list(start(0))[-1])["outcome"].exit_code == 0
    actor = ray.get_actor(pool_name(ray.get_runtime_context().get_node_id(), spec(), pool), namespace=NAMESPACE)
    try:
        counts_until(lambda c: c["idle"] == 6, "the pool fills")
        lone = start(3000)
        counts_until(lambda c: c["active"] == 1, "the lone job takes a sandbox")
        for _ in range(10):  # while it runs, nothing is started: the CPU is its
            c = counts()
            assert c["active"] == 1 and c["idle"] + c["starting"] == 5, c
            time.sleep(0.2)
        assert ray.get(list(lone)[-1])["outcome"].exit_code == 0
        for _ in range(2):  # two more, back to back: three are missing
            assert ray.get(list(start(0))[-1])["outcome"].exit_code == 0
        ended, seen = time.monotonic(), []
        while not seen or seen[-1]["idle"] < 6:  # once quiet, a slot's worth of sandboxes at a time
            seen.append(counts())
            assert time.monotonic() - ended < 60, seen[-1]
            time.sleep(0.05)
        refilling = [c for c in seen if c["starting"]]
        assert refilling and max(c["starting"] for c in seen) <= 2, seen
        assert seen.index(refilling[0]) * 0.05 >= REFILL_AFTER_S / 3 and seen[0]["idle"] + seen[0]["starting"] == 3, seen
        pair = [start(4000), start(4000)]  # every slot busy: the refill starts at once
        counts_until(lambda c: c["active"] == 2, "the two jobs both take a sandbox")
        counts_until(lambda c: c["idle"] + c["starting"] == 6 and c["active"] == 2, "refilled while both run", timeout=3)
        assert all(ray.get(list(gen)[-1])["outcome"].exit_code == 0 for gen in pair)
    finally:
        kill_pool(actor, before)


def retired(name: str) -> None:
    """Waits for the pool of this name to retire (it has had no job for its idle_s)."""
    def gone() -> bool:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return True
        return False

    until(gone, 30, "the idle pool retired", interval=0.5)


def test_an_idle_pool_removes_its_sandboxes_and_itself_and_a_later_job_still_runs(local_ray):
    before = pooled_containers()
    s = spec()
    quick = PoolSpec(MONO_6.name, size=1, idle_s=3)
    gen = run_job.options(resources={MONO_6.name: 1}).remote(s, 'Console.WriteLine("once");', quick)
    assert ray.get(list(gen)[-1])["outcome"].stdout == "once\n"
    name = pool_name(ray.get_runtime_context().get_node_id(), s, quick)
    ray.get_actor(name, namespace=NAMESPACE)  # it exists, with a pre-started sandbox
    retired(name)  # no job for 3 s: it goes, and its sandboxes with it (the node is idle for the autoscaler)
    assert pooled_containers() - before == set()
    again = spec()
    gen = run_job.options(resources={MONO_6.name: 1}).remote(again, 'Console.WriteLine("again");', quick)
    assert ray.get(list(gen)[-1])["outcome"].stdout == "again\n"  # a new pool
    retired(name)
    assert not {s.name, again.name} & set(sandbox_containers()) and pooled_containers() - before == set()


def test_a_worker_keeps_its_pools_handle_and_looks_the_pool_up_again_once_it_retired(local_ray):
    before = pooled_containers()
    quick = PoolSpec(MONO_6.name, size=1, idle_s=3)
    s = spec()
    name = pool_name(ray.get_runtime_context().get_node_id(), s, quick)
    assert _run(s, 'Console.WriteLine("one");', quick).stdout == "one\n"  # here, in this process
    kept = pool_for(spec(), quick)
    assert pool_for(spec(), quick) is kept  # no lookup by name per job
    retired(name)  # no job for 3 s: the pool goes; this process still holds its handle
    assert _run(spec(), 'Console.WriteLine("two");', quick).stdout == "two\n"
    assert pool_for(spec(), quick) is not kept
    ray.get_actor(name, namespace=NAMESPACE)  # the job made a new pool (it did not fall back to a cold sandbox)
    retired(name)
    assert pooled_containers() - before == set()  # it took its sandboxes along


def test_a_repeated_script_runs_from_the_pools_compiled_cache(local_ray):
    before = pooled_containers()
    cached = PoolSpec(MONO_6.name, size=1, cache_mb=8, idle_s=3)
    script = 'WriteLine("from the cache? " + (1 + 1)); int unused = 0;'
    outcomes = []
    for _ in range(2):
        s = spec()
        gen = run_job.options(resources={MONO_6.name: 1}).remote(s, script, cached)
        outcomes.append(ray.get(list(gen)[-1])["outcome"])
    first, again = outcomes
    assert (again.exit_code, again.stdout, again.stderr) == (first.exit_code, first.stdout, first.stderr)
    assert first.stdout == "from the cache? 2\n" and "CS0219" in first.stderr  # its warning is replayed too
    pool = ray.get_actor(pool_name(ray.get_runtime_context().get_node_id(), s, cached), namespace=NAMESPACE)
    stats = ray.get(pool.state.remote())["cache"]
    assert stats["entries"] == 1 and stats["hits"] == 1 and stats["misses"] == 1
    # the pool retires when idle and takes its sandboxes along
    until(lambda: not pooled_containers() - before, 30, "the idle pool took its sandboxes along", interval=0.5)


def test_a_job_with_packages_runs_in_a_pooled_sandbox_that_gets_only_its_packages(local_ray, nuget_feed, tmp_path):
    """Restored packages are linked into the pre-started sandbox's own folder, bound read-only at /nuget."""
    before = pooled_containers()
    nuget = NuGetSpec(sources=tuple(parse(nuget_feed.config())), target=MONO_6.nuget, cache_dir=str(tmp_path / "cache"),
                      max_extract_mb=16, timeout_s=60, allow=("127.0.0.1/32",))
    pool = PoolSpec(MONO_6.name, size=1, cache_mb=8, idle_s=5, packages_dir=str(tmp_path / "cache/sandboxes"))
    script = ('#r "nuget: Acme.Greeter, 1.0.0"\nConsole.WriteLine(Acme.Greeter.Hello("pool"));\n'
              'Console.WriteLine(Environment.GetEnvironmentVariable("CSRUN_REFERENCES"));\n'
              'Console.WriteLine(string.Join(",", Directory.GetDirectories("/nuget").OrderBy(d => d)));\n'
              'try { File.WriteAllText("/nuget/acme.greeter/1.0.0/Acme.Greeter.dll", "x"); Console.WriteLine("written"); }\n'
              'catch (Exception e) { Console.WriteLine(e.GetType().Name); }')

    def run(script: str):
        s = spec()
        gen = run_job.options(resources={MONO_6.name: 1}).remote(s, script, pool, nuget)
        return ray.get(list(gen)[-1])["outcome"]

    def pool_ready() -> None:
        actor = ray.get_actor(pool_name(ray.get_runtime_context().get_node_id(), spec(), pool), namespace=NAMESPACE)
        until(lambda: ray.get(actor.state.remote())["idle"] >= 1, 60, "the pool filled", interval=0.2)
        return actor

    run('Console.WriteLine("fills the pool");')
    actor = pool_ready()
    first = run(script)
    # "-": the runner was started ahead, without the job's list; the list came on its stdin
    out = first.stdout.splitlines()
    assert out[:3] == ["[Hello, pool]", "-", "/nuget/acme.formatting,/nuget/acme.greeter"], first
    assert out[3].endswith("Exception"), first  # read-only
    pool_ready()
    again = run(script)  # the compiled script is reused: same packages (by content), same text
    assert (again.exit_code, again.stdout, again.stderr) == (first.exit_code, first.stdout, first.stderr)
    assert ray.get(actor.state.remote())["cache"]["hits"] == 1
    pool_ready()
    bare = run('Console.WriteLine(Directory.GetDirectories("/nuget").Length);')
    assert bare.stdout == "0\n"  # nothing of the previous job's packages
    folders = tmp_path / "cache/sandboxes"

    def retired() -> None:  # an idle pool removes its sandboxes and its folder
        until(lambda: not (pooled_containers() - before or any(f.name != dead.name for f in folders.iterdir())), 30,
              "the idle pool removed its sandboxes and package folders", interval=0.5)

    # a pool that ended without retiring (its node died) left its folder: the next pool there removes it
    dead = folders / "sandbox-pool-0000000000000000-dead"
    (dead / "pool-x/a/1.0.0").mkdir(parents=True)
    retired()
    assert run('Console.WriteLine("a new pool");').stdout == "a new pool\n"
    assert not dead.exists()
    retired()
