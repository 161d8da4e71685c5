"""The whole service on a real multi-node Ray (ray.cluster_utils.Cluster on this machine), through
HTTP: jobs placed by agent type, a node's slots never exceeded, a worker node lost mid-job, the
dispatcher killed during a burst, orphans reaped. (An agent type no node offers: test_policies.)"""

import os
import subprocess
import uuid
from dataclasses import dataclass

import httpx
import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from cluster.agent_types import MONO_6
from cluster.node import API_RESOURCE
from executors.spec import LABEL, Limits, SandboxSpec
from executors.engines.docker import container_config, docker_api
from executors.sandbox import remove_sandbox
from executors.reaper import reap
from serve_app.store import JobStore
from testing.services import api_service
from testing.waiting import until
from tests.conftest import ContainerStarts, Jobs, sandbox_containers

pytestmark = pytest.mark.integration

MONO = MONO_6.name


@dataclass
class Stack:
    cluster: Cluster
    nodes: list  #: the worker nodes, each offering 2 slots of MONO
    jobs: Jobs
    store: JobStore


@pytest.fixture(scope="module")
def stack(pg_server, tmp_path_factory):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # the head offers no agent type, only a place for the API (cluster/node.py)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {API_RESOURCE: 100}})
    nodes = [c.add_node(num_cpus=1, resources={MONO: 2}) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address)
    url = pg_server.create_db("cluster")
    try:
        with api_service(tmp_path_factory.mktemp("cluster-service"), RAY_ADDRESS=c.address, DATABASE_URL=url,
                         WALL_TIME_S="20", SWEEP_INTERVAL_S="1") as svc:
            with httpx.Client(base_url=svc.url, timeout=30) as client:
                yield Stack(c, nodes, Jobs(client), JobStore(url))
    finally:
        ever = {n["NodeID"] for n in ray.nodes()}
        ray.shutdown()
        c.shutdown()
        reap(dead_nodes=ever)  # the pools' idle sandboxes: their nodes are gone


def submit(stack: Stack, script: str) -> str:
    r = stack.jobs.submit(script)
    assert r.status_code == 201, r.text
    return r.json()["jobId"]


def status(stack: Stack, job_id: str) -> str:
    return stack.jobs.client.get(f"/jobs/{job_id}/status").json()["status"]


def alive_actors(stack: Stack) -> list:
    """Asked of this cluster by its address: without one, Ray asks the machine's latest cluster."""
    return list_actors(address=stack.cluster.address, filters=[("state", "=", "ALIVE")], detail=True)


def test_every_job_runs_on_a_node_of_its_agent_type_and_records_it(stack):
    ids = [submit(stack, f"Console.WriteLine({i});") for i in range(6)]
    offering = {n.node_id for n in stack.nodes}
    for i, job_id in enumerate(ids):
        job = stack.jobs.wait(job_id)
        assert job["status"] == "FINISHED" and job["result"]["stdout"] == f"{i}\n", job
        assert stack.store.get(uuid.UUID(job_id)).node_id in offering  # never the head, which offers none
    # and the API's replicas, the dispatcher and the launcher are on the head, off the sandbox nodes
    head = stack.cluster.head_node.node_id
    service = [a for a in alive_actors(stack)
               if "JobService" in a.class_name or a.class_name in ("Dispatcher", "Launcher")]
    assert len(service) == 4 and {a.node_id for a in service} == {head}, [(a.class_name, a.node_id) for a in service]


def test_a_node_never_runs_more_sandboxes_than_its_slots(stack):
    ids = [submit(stack, "System.Threading.Thread.Sleep(1500);") for _ in range(8)]
    runs: dict[str, list] = {}
    for job_id in ids:
        result = stack.jobs.wait(job_id)["result"]
        assert result["finishedWith"] == "SUCCEEDED", result
        node = stack.store.get(uuid.UUID(job_id)).node_id
        runs.setdefault(node, []).append((result["startedAt"], result["finishedAt"]))
    assert len(runs) == 2, "both nodes took jobs"
    for spans in runs.values():
        points = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans], key=lambda p: (p[0], p[1]))
        running = peak = 0
        for _, delta in points:
            running += delta
            peak = max(peak, running)
        assert peak <= 2


def test_killing_the_dispatcher_during_a_burst_loses_no_job_and_runs_none_twice(stack):
    starts = ContainerStarts()
    ids = [submit(stack, f'Console.WriteLine("burst {i}");') for i in range(50)]

    def finished() -> int:
        return sum(status(stack, j) == "FINISHED" for j in ids)

    for after in (3, 20):  # twice: while the first jobs run, and again mid-burst
        until(lambda: finished() >= after, 120, f"{after} jobs finished", interval=0.2)
        ray.kill(ray.get_actor("dispatcher", namespace="dotnet-scripts"), no_restart=False)
    for i, job_id in enumerate(ids):
        job = stack.jobs.wait(job_id, timeout=180)
        assert job["status"] == "FINISHED" and job["result"]["stdout"] == f"burst {i}\n", job
    starts.stop()
    for job_id in ids:
        assert starts.of(job_id) == 1, f"job {job_id} got {starts.of(job_id)} sandboxes"
        assert stack.store.get(uuid.UUID(job_id)).attempts == 1


def test_an_api_replica_killed_mid_burst_loses_nothing(stack):
    ids = [submit(stack, f'System.Threading.Thread.Sleep(500); Console.WriteLine("r{i}");') for i in range(8)]
    replica = next(a for a in alive_actors(stack) if "JobService" in a.class_name)
    ray.kill(ray.get_actor(replica.name, namespace=replica.ray_namespace), no_restart=True)  # Serve starts another

    def ended(job_id: str) -> bool:
        try:
            r = stack.jobs.client.get(f"/jobs/{job_id}/status")  # the other replica answers meanwhile
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.json()["status"] in ("FINISHED", "REJECTED")

    for job_id in ids:
        until(lambda: ended(job_id), 120, f"job {job_id} ended", interval=0.2)
    for i, job_id in enumerate(ids):  # the jobs never depended on the replica that took them
        job = stack.jobs.wait(job_id)
        assert job["status"] == "FINISHED" and job["result"]["stdout"] == f"r{i}\n", job
    until(lambda: len([a for a in alive_actors(stack) if "JobService" in a.class_name]) == 2, 60,
          "Serve replaced the replica", interval=0.2)


def test_a_node_running_jobs_has_its_orphans_reaped_at_every_sweep(stack):
    # reaped once, when the node was first seen: an orphan left later stayed until the node restarted
    job_id = submit(stack, 'Console.WriteLine("hi");')
    assert stack.jobs.wait(job_id, timeout=60)["status"] == "FINISHED"
    node = stack.store.get(uuid.UUID(job_id)).node_id
    orphan = SandboxSpec(job_id=f"orphan-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                         node_id=node, limits=Limits(wall_time_s=1), reap_grace_s=-60)  # its task died long ago
    docker_api().create_container_from_config(container_config(orphan), orphan.name)
    try:
        until(lambda: orphan.name not in sandbox_containers(), 30, "the orphan was reaped", interval=0.2)
    finally:
        remove_sandbox(orphan.name)


def test_a_worker_node_lost_mid_job_is_run_again_on_another_and_its_orphans_reaped(stack):
    job_id = submit(stack, 'System.Threading.Thread.Sleep(5000); Console.WriteLine("survived");')
    until(lambda: status(stack, job_id) == "RUNNING", 60, "the job started", interval=0.2)
    first = stack.store.get(uuid.UUID(job_id)).node_id
    victim = next(n for n in stack.nodes if n.node_id == first)
    stack.cluster.remove_node(victim)  # its raylet and workers die with it
    stack.nodes.remove(victim)
    job = stack.jobs.wait(job_id, timeout=90)
    assert job["status"] == "FINISHED" and job["result"]["stdout"] == "survived\n", job
    stored = stack.store.get(uuid.UUID(job_id))
    assert stored.node_id != first and stored.attempts == 2

    # the lost node's machine joins again (a new Ray node): sandboxes the dead node left are reaped
    orphan = SandboxSpec(job_id=f"orphan-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                         node_id=first, limits=Limits(wall_time_s=120))
    docker_api().create_container_from_config(container_config(orphan), orphan.name)
    try:
        stack.nodes.append(stack.cluster.add_node(num_cpus=1, resources={MONO: 2}))
        stack.cluster.wait_for_nodes()

        def left() -> list[str]:
            return subprocess.run(["docker", "ps", "-a", "--filter", f"label={LABEL}.node={first}", "--format",
                                   "{{.Names}}"], capture_output=True, text=True, check=True).stdout.split()

        until(lambda: not left(), 30, "the dead node's sandboxes were reaped", interval=0.2)
    finally:
        remove_sandbox(orphan.name)


def test_a_job_whose_second_run_is_lost_too_is_rejected_with_the_reason(stack):
    job_id = submit(stack, 'System.Threading.Thread.Sleep(15000); Console.WriteLine("never");')
    lost = []
    for attempt in (1, 2):  # each time it runs, its node goes
        def running_anew() -> bool:
            job = stack.store.get(uuid.UUID(job_id))
            return job.status.value == "RUNNING" and job.attempts == attempt and job.node_id not in lost

        until(running_anew, 60, f"run {attempt} started", interval=0.2)
        lost.append(stack.store.get(uuid.UUID(job_id)).node_id)
        victim = next(n for n in stack.nodes if n.node_id == lost[-1])
        stack.cluster.remove_node(victim)
        stack.nodes.remove(victim)
    job = stack.jobs.wait(job_id, timeout=60)
    assert job["status"] == "REJECTED" and job["result"] is None, job
    assert "its node or worker was lost" in job["rejectedReason"] and "tried 2 times" in job["rejectedReason"]
