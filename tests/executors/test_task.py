"""The Ray task on a real in-process Ray: it runs a job where its agent type is offered, and the
reaper removes the sandbox of a task whose worker was killed."""

import subprocess
import time
import uuid

import pytest
import ray

from cluster.agent_types import MONO_6
from executors.reaper import reap
from executors.sandbox import CONTAINER_PREFIX, Limits, SandboxSpec
from executors.task import run_job


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


def test_the_sandbox_of_a_killed_task_is_reaped(local_ray):
    s = spec(limits=Limits(wall_time_s=2), reap_grace_s=1)
    gen = run_job.options(resources={MONO_6.name: 1}).remote(s, "while (true) { }")
    assert ray.get(next(gen))["event"] == "RUNNING"
    names = lambda: subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"],  # noqa: E731
                                   capture_output=True, text=True).stdout.split()
    deadline = time.monotonic() + 20
    while s.name not in names():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ray.cancel(gen, force=True)  # the worker process is killed: nobody will remove the container
    time.sleep(4)  # past wall time + grace
    assert s.name in reap()
    assert s.name not in names()
    assert all(not n.startswith(CONTAINER_PREFIX + "task-") for n in names())
