"""Autoscaling with Ray's `fake_multinode` provider and the project's own ray-cluster.yaml (its
node types, via cluster/fake_autoscaling.py): jobs for an agent type with no node make the
autoscaler add one, they finish there, and the node goes when idle."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
import ray
import yaml

from cluster.agent_types import MONO_6
from cluster.fake_autoscaling import CONFIG, HEAD, fake_config
from cluster.node import RAY, node_resources
from executors.reaper import reap
from serve_app.store import JobStore
from testing.services import api_service, free_port
from testing.waiting import until
from tests.conftest import Jobs

pytestmark = pytest.mark.integration

MONO = MONO_6.name
IDLE_MINUTES = 0.25


def test_the_fake_config_keeps_the_node_types_of_ray_cluster_yaml():
    cloud = yaml.safe_load(CONFIG.read_text())
    fake = fake_config(cloud, "10.0.0.1:7000", idle_timeout_minutes=0.5, min_workers=0)
    assert fake["provider"]["type"] == "fake_multinode" and fake["provider"]["gcs_address"] == "10.0.0.1:7000"
    assert fake["head_node_type"] == HEAD
    assert fake["available_node_types"][HEAD]["resources"] == cloud["available_node_types"]["head"]["resources"]
    for name, node_type in cloud["available_node_types"].items():
        if name != cloud["head_node_type"]:
            assert fake["available_node_types"][name]["resources"] == node_type["resources"]
            assert fake["available_node_types"][name]["max_workers"] == node_type["max_workers"]
            assert fake["available_node_types"][name]["min_workers"] == 0
    assert fake["idle_timeout_minutes"] == 0.5 and fake["setup_commands"] == []


def _processes_under(path: str) -> list[int]:
    """PIDs of the processes whose command line names `path`: this test's Ray cluster, no other."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if path.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return [p for p in pids if p != os.getpid()]


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory):
    temp = tempfile.mkdtemp(prefix="dsr-", dir="/tmp")  # short: Ray's socket paths live under it
    work = tmp_path_factory.mktemp("autoscaled")
    port = free_port()
    import ray._private.services as services

    address = f"{services.get_node_ip_address()}:{port}"
    cfg = fake_config(yaml.safe_load(CONFIG.read_text()), address, idle_timeout_minutes=IDLE_MINUTES, min_workers=0)
    (work / "fake.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_FAKE_CLUSTER="1", RAY_AUTH_MODE="disabled")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", f"--resources={json.dumps(node_resources({}, head=True))}", f"--temp-dir={temp}",
         f"--autoscaling-config={work / 'fake.yaml'}", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    url = f"sqlite:///{work}/jobs.db"
    ever: set[str] = set()
    try:
        ray.init(address=address, logging_level="ERROR")
        # POOL_IDLE_S: the node's pool goes soon after the jobs, leaving the node idle for the autoscaler
        with api_service(work, RAY_ADDRESS=address, DATABASE_URL=url, WALL_TIME_S="20",
                         PENDING_LIMIT_S="600", POOL_IDLE_S="5") as svc:
            with httpx.Client(base_url=svc.url, timeout=30) as client:
                yield Jobs(client), JobStore(url)
        ever = {n["NodeID"] for n in ray.nodes()}
    finally:
        ray.shutdown()
        for pid in _processes_under(temp):  # the head, the autoscaler and the nodes it started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap(dead_nodes=ever)  # sandboxes the pools of its nodes had started
        shutil.rmtree(temp, ignore_errors=True)


def slots(jobs: Jobs) -> int:
    return jobs.client.get("/actuator/health").json()["components"]["ray"]["details"]["agentTypes"][MONO]["slots"]


def test_jobs_for_an_agent_type_without_nodes_make_the_autoscaler_add_one_which_goes_when_idle(autoscaled):
    jobs, store = autoscaled
    assert slots(jobs) == 0
    ids = []
    for i in range(3):
        r = jobs.submit(f'Console.WriteLine("scaled {i}");')
        assert r.status_code == 201, r.text
        ids.append(r.json()["jobId"])
    for i, job_id in enumerate(ids):
        job = jobs.wait(job_id, timeout=240)
        assert job["status"] == "FINISHED" and job["result"]["stdout"] == f"scaled {i}\n", job
    assert store.get(uuid.UUID(ids[0])).node_id  # ran on the node the autoscaler added
    assert slots(jobs) > 0
    until(lambda: slots(jobs) == 0, IDLE_MINUTES * 60 + 120, "the idle node was removed", interval=2)
