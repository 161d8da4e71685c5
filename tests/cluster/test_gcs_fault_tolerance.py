"""Ray GCS fault tolerance with an external Redis: the head's GCS is killed while a job runs and
started again; the API keeps answering meanwhile, and the service and its jobs carry on."""

import os
import time

import httpx
import pytest
import ray
import redis
from ray.cluster_utils import Cluster

from cluster.agent_types import MONO_6
from executors.reaper import reap
from testing.services import api_service, free_port, redis_server
from testing.waiting import until
from tests.conftest import Jobs

pytestmark = pytest.mark.integration

MONO = MONO_6.name


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with redis_server() as (redis_url, _):
        os.environ["RAY_REDIS_ADDRESS"] = redis_url.split("//")[1].split("/")[0]  # the GCS keeps its tables there
        try:
            c = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 2, "resources": {MONO: 2}, "gcs_server_port": free_port(),
                "_system_config": {"gcs_rpc_server_reconnect_timeout_s": 60}})
        finally:
            del os.environ["RAY_REDIS_ADDRESS"]
        ray.init(address=c.address)
        work = tmp_path_factory.mktemp("gcs-ft")
        ever: set[str] = set()
        try:
            with api_service(work, RAY_ADDRESS=c.address, DATABASE_URL=f"sqlite:///{work}/jobs.db",
                             REDIS_URL=redis_url, WALL_TIME_S="30") as svc:
                with httpx.Client(base_url=svc.url, timeout=30) as client:
                    yield c, Jobs(client), redis_url
            ever = {n["NodeID"] for n in ray.nodes()}
        finally:
            ray.shutdown()
            c.shutdown()
            reap(dead_nodes=ever)


def test_the_service_and_its_jobs_carry_on_when_the_gcs_is_killed_and_restarted(stack):
    cluster, jobs, redis_url = stack
    assert redis.Redis.from_url(redis_url).dbsize() > 0  # the GCS's tables are in Redis, not in its memory
    r = jobs.submit('System.Threading.Thread.Sleep(4000); Console.WriteLine("through");')
    assert r.status_code == 201, r.text
    running = r.json()["jobId"]
    until(lambda: jobs.client.get(f"/jobs/{running}/status").json()["status"] == "RUNNING", 60, "the job runs",
          interval=0.2)

    cluster.head_node.kill_gcs_server()  # it is dead on return
    time.sleep(2)  # and stays down a while: the service meets it gone
    # without the GCS the API still answers, and a job submitted now is kept (the database is the queue)
    assert jobs.client.get(f"/jobs/{running}/status").status_code == 200
    r = jobs.submit('Console.WriteLine("accepted while the GCS was down");')
    assert r.status_code == 201, r.text
    queued = r.json()["jobId"]
    cluster.head_node.start_gcs_server()

    job = jobs.wait(running, timeout=120)
    assert job["status"] == "FINISHED" and job["result"]["stdout"] == "through\n", job
    job = jobs.wait(queued, timeout=120)
    assert job["status"] == "FINISHED" and job["result"]["stdout"] == "accepted while the GCS was down\n", job
    job = jobs.run('Console.WriteLine("after");', timeout=120)
    assert job["status"] == "FINISHED" and job["result"]["stdout"] == "after\n", job
    assert jobs.client.get("/actuator/health").json()["status"] == "UP"
