"""Agent-type placement on a real multi-node Ray (ray.cluster_utils.Cluster on this machine): a
job runs only on a node offering its agent type, and a node never runs more sandboxes than its
slots. The second agent type is a second registration of the Mono image."""

import os
import uuid

import pytest
import ray
from ray.cluster_utils import Cluster

from cluster.agent_types import MONO_6
from cluster.status import current
from executors.spec import Limits, SandboxSpec
from executors.task import run_job

pytestmark = pytest.mark.integration

SECOND = "linux-amd64-dotnet-7"


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})  # the head offers no agent type
    mono_node = c.add_node(num_cpus=1, resources={MONO_6.name: 2})
    second_node = c.add_node(num_cpus=1, resources={SECOND: 2})
    c.wait_for_nodes()
    ray.init(address=c.address)
    try:
        yield mono_node.node_id, second_node.node_id
    finally:
        ray.shutdown()
        c.shutdown()


def start(agent_type: str, script: str):
    spec = SandboxSpec(job_id=f"place-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                       limits=Limits(wall_time_s=30))
    return run_job.options(resources={agent_type: 1}).remote(spec, script)


def test_jobs_run_only_on_nodes_of_their_agent_type(cluster):
    mono_node, second_node = cluster
    gens = [(t, start(t, 'Console.WriteLine("placed");')) for t in (MONO_6.name, SECOND) * 3]
    for agent_type, gen in gens:
        events = [ray.get(ref) for ref in gen]
        assert events[0]["node_id"] == (mono_node if agent_type == MONO_6.name else second_node)
        assert events[1]["outcome"].stdout == "placed\n"


def test_a_node_never_runs_more_sandboxes_than_its_slots(cluster):
    gens = [start(MONO_6.name, "System.Threading.Thread.Sleep(1500);") for _ in range(6)]
    outcomes = [[ray.get(ref) for ref in gen][-1]["outcome"] for gen in gens]
    assert all(o.exit_code == 0 for o in outcomes)
    points = sorted([(o.started_at, 1) for o in outcomes] + [(o.finished_at, -1) for o in outcomes],
                    key=lambda p: (p[0], p[1]))
    running = peak = 0
    for _, delta in points:
        running += delta
        peak = max(peak, running)
    assert peak == 2  # both slots used, never a third sandbox


def test_status_per_agent_type(cluster):
    s = current()
    assert s[MONO_6.name]["nodes"] == 1 and s[MONO_6.name]["slots"] == 2
    assert s[SECOND]["nodes"] == 1 and s[SECOND]["slots"] == 2
