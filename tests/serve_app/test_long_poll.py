"""GET /jobs/{id}/result?wait=N answers the moment the job ends (Redis events), and still does,
told by the dispatcher, when Redis is gone."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import pytest

from testing.services import api_service, redis_server
from tests.conftest import MONO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_and_client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long-poll")
    with redis_server() as (url, proc):
        with api_service(tmp, DATABASE_URL=f"sqlite:///{tmp}/jobs.db", REDIS_URL=url) as svc:
            with httpx.Client(base_url=svc.url, timeout=90) as client:
                yield proc, client


def submit(client, script: str) -> str:
    return client.post("/jobs", json={"requestId": str(uuid.uuid4()), "senderId": "lp",
                                      "payload": {"script": script, "agentType": MONO}}).json()["jobId"]


def test_long_poll_returns_within_a_second_of_the_end(redis_and_client):
    _, client = redis_and_client
    job_id = submit(client, "System.Threading.Thread.Sleep(2500);\nConsole.WriteLine(\"done\");")
    r = client.get(f"/jobs/{job_id}/result", params={"wait": 30})
    answered = datetime.now(timezone.utc)
    result = r.json()["result"]
    assert result["stdout"] == "done\n"
    finished = datetime.fromisoformat(result["finishedAt"].replace("Z", "+00:00"))
    assert (answered - finished).total_seconds() < 1.0
    assert client.get("/actuator/health").json()["components"]["redis"]["status"] == "UP"


def test_long_poll_gives_up_after_wait_seconds(redis_and_client):
    _, client = redis_and_client
    job_id = submit(client, "System.Threading.Thread.Sleep(20000);")
    start = time.monotonic()
    r = client.get(f"/jobs/{job_id}/result", params={"wait": 2})
    assert r.json()["result"] is None and 2 <= time.monotonic() - start < 4
    assert client.delete(f"/jobs/{job_id}").status_code == 200


def test_many_waiting_clients_do_not_hold_up_the_others(redis_and_client):
    """More long-polls than Serve's default lets a replica take (5 each) must not queue the other
    clients' requests behind them until a wait ends."""
    _, client = redis_and_client
    job_id = submit(client, "System.Threading.Thread.Sleep(20000);")
    with ThreadPoolExecutor(16) as pool:
        polls = [pool.submit(client.get, f"/jobs/{job_id}/result", params={"wait": 30}) for _ in range(16)]
        time.sleep(2)  # they have reached the replicas (kept: no outside sign shows that a wait is waiting)
        other = submit(client, 'Console.WriteLine("x");')
        status = client.get(f"/jobs/{other}/status")
        assert not any(p.done() for p in polls)  # answered while every wait still waits
        assert status.status_code == 200 and status.json()["status"] in ("PENDING", "RUNNING", "FINISHED")
        deleted = time.monotonic()
        assert client.delete(f"/jobs/{job_id}").status_code == 200
        assert {p.result().status_code for p in polls} == {404}  # the waits end with it, not at their 30 s
        assert time.monotonic() - deleted < 5


@pytest.mark.parametrize("wait", [-1, 61, "x"])
def test_wait_out_of_range_is_a_400(redis_and_client, wait):
    _, client = redis_and_client
    job_id = submit(client, 'Console.WriteLine("x");')
    r = client.get(f"/jobs/{job_id}/result", params={"wait": wait})
    assert r.status_code == 400 and "wait" in r.json()["message"]


def test_without_redis_the_api_still_works_and_health_says_so(redis_and_client):
    proc, client = redis_and_client
    proc.terminate()
    proc.wait(10)
    job_id = submit(client, 'System.Threading.Thread.Sleep(1500); Console.WriteLine("still here");')
    r = client.get(f"/jobs/{job_id}/result", params={"wait": 30})
    answered = datetime.now(timezone.utc)
    assert r.status_code == 200 and r.json()["result"]["stdout"] == "still here\n"
    # the dispatcher tells the waiting replica instead: still at once, not on a database poll
    finished = datetime.fromisoformat(r.json()["result"]["finishedAt"].replace("Z", "+00:00"))
    assert (answered - finished).total_seconds() < 1.0
    start = time.monotonic()  # and a wait for a job that does not end still lasts `wait` seconds
    slow = submit(client, "System.Threading.Thread.Sleep(20000);")
    assert client.get(f"/jobs/{slow}/result", params={"wait": 2}).json()["result"] is None
    assert 2 <= time.monotonic() - start < 4
    with ThreadPoolExecutor(1) as pool:  # and deleting the job ends a wait for it at once
        poll = pool.submit(client.get, f"/jobs/{slow}/result", params={"wait": 30})
        time.sleep(1)  # it waits by now (kept: no outside sign shows it)
        deleted = time.monotonic()
        assert client.delete(f"/jobs/{slow}").status_code == 200
        assert poll.result().status_code == 404 and time.monotonic() - deleted < 5
    health = client.get("/actuator/health").json()
    assert health["status"] == "UP" and health["components"]["redis"]["status"] == "DOWN"
