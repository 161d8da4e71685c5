"""Stale jobs become REJECTED; results are deleted after their retention times (short settings)."""

import time
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlmodel import Session

from serve_app.models import Job, JobRequest, JobStatus, utcnow
from serve_app.store import JobStore
from testing.services import api_service
from testing.waiting import until
from tests.conftest import MONO, Jobs

pytestmark = pytest.mark.integration

STALE_AFTER_S = 10
PENDING_LIMIT_S = 6  #: for jobs whose agent type no live node offers
FETCHED_S = 3
UNFETCHED_S = 7
SWEEP_S = 0.5


@pytest.fixture(scope="session")
def policy_db(new_database) -> str:
    return new_database("policies")


@pytest.fixture(scope="session")
def policy_client(policy_db, tmp_path_factory):
    env = dict(DATABASE_URL=policy_db, AGENT_TYPES=f"{MONO},linux-amd64-dotnet-7", LOCAL_AGENT_TYPES=MONO,
               WALL_TIME_S="5", NUGET_RESTORE_TIMEOUT_S="4", STALE_AFTER_S=str(STALE_AFTER_S), PENDING_LIMIT_S=str(PENDING_LIMIT_S),
               SWEEP_INTERVAL_S=str(SWEEP_S),
               FETCHED_RETENTION_S=str(FETCHED_S), UNFETCHED_RETENTION_S=str(UNFETCHED_S))
    with api_service(tmp_path_factory.mktemp("policies"), **env) as svc:
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            yield c


@pytest.fixture
def pjobs(policy_client) -> Jobs:
    return Jobs(policy_client)


def wait_status(client, job_id: str, wanted: set[str], timeout: float) -> dict:
    def reached() -> dict | None:
        r = client.get(f"/jobs/{job_id}/status")
        return r.json() if r.status_code == 200 and r.json()["status"] in wanted else None

    return until(reached, timeout, f"{job_id} reached {wanted}", interval=0.2)


def test_pending_for_an_agent_type_no_node_offers_becomes_rejected_with_a_reason(policy_client, pjobs):
    start = time.monotonic()
    job_id = pjobs.submit('Console.WriteLine("x");', agent_type="linux-amd64-dotnet-7").json()["jobId"]
    assert policy_client.get(f"/jobs/{job_id}/status").json()["status"] == "PENDING"
    health = policy_client.get("/actuator/health").json()["components"]["ray"]["details"]["agentTypes"]
    assert health["linux-amd64-dotnet-7"]["slots"] == 0 and health["linux-amd64-dotnet-7"]["waiting"] >= 1
    status = wait_status(policy_client, job_id, {"REJECTED", "FINISHED"}, PENDING_LIMIT_S + 10)
    assert status["status"] == "REJECTED"
    assert time.monotonic() - start >= PENDING_LIMIT_S - 1
    assert "no live node offers agent type linux-amd64-dotnet-7" in status["rejectedReason"]
    job = policy_client.get(f"/jobs/{job_id}").json()
    assert job["result"] is None and job["rejectedReason"] == status["rejectedReason"]


def test_running_without_news_becomes_rejected(policy_client, policy_db):
    # a job whose replica died while it ran: RUNNING, and nothing has happened for a long time
    store = JobStore(policy_db)
    req = JobRequest.model_validate({"requestId": str(uuid.uuid4()), "senderId": "s",
                                     "payload": {"script": "x", "agentType": MONO}})
    job, _ = store.create(req)
    store.transition(job.id, JobStatus.RUNNING, node_id="gone")
    with Session(store.engine) as s:
        row = s.get(Job, job.id)
        row.updated_at = utcnow() - timedelta(seconds=STALE_AFTER_S + 1)
        s.add(row)
        s.commit()
    status = wait_status(policy_client, str(job.id), {"REJECTED"}, 10)
    assert "lost" in status["rejectedReason"]


def test_fetched_results_are_deleted_after_their_retention(policy_client, pjobs):
    job_id = pjobs.submit('Console.WriteLine("fetched");').json()["jobId"]
    deadline = time.monotonic() + 60
    while True:  # as Jobs.wait, timing each request: the service marks the result fetched while answering
        asked = time.monotonic()
        job = policy_client.get(f"/jobs/{job_id}").json()
        if job["status"] == "FINISHED":
            break
        assert asked < deadline, job
        time.sleep(0.2)
    answered = time.monotonic()
    assert job["result"]["stdout"] == "fetched\n"
    # gone between FETCHED_S after the fetch (it was asked for at `asked` at the earliest) and a few
    # sweeps later; timed from the requests, not from a check right after the fetch, which a loaded
    # machine can delay past FETCHED_S
    while True:
        before = time.monotonic()
        if policy_client.get(f"/jobs/{job_id}/status").status_code == 404:
            break
        assert before - answered < FETCHED_S + 5, "the fetched result was not deleted"
        time.sleep(0.2)
    assert time.monotonic() - asked >= FETCHED_S - 0.5
    assert policy_client.get(f"/jobs/{job_id}").status_code == 404


def test_unfetched_results_are_kept_longer_then_deleted(policy_client, pjobs):
    job_id = pjobs.submit('Console.WriteLine("unfetched");').json()["jobId"]
    wait_status(policy_client, job_id, {"FINISHED"}, 30)  # /status does not hand out the result
    finished = time.monotonic()
    time.sleep(FETCHED_S + 1)
    assert policy_client.get(f"/jobs/{job_id}/status").status_code == 200  # not under the fetched policy
    until(lambda: policy_client.get(f"/jobs/{job_id}/status").status_code != 200,
          finished + UNFETCHED_S + 5 - time.monotonic(), "the unfetched result was deleted", interval=0.2)
    assert time.monotonic() - finished >= UNFETCHED_S - 1.5
