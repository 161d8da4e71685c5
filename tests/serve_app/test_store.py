"""The job store on a real SQLite file: idempotency by unique constraint, legal transitions only."""

import threading
import uuid

import pytest

from serve_app.models import FinishedWith, JobRequest, JobResult, JobStatus
from serve_app.store import JobStore


@pytest.fixture
def store(database_url):
    return JobStore(database_url)


def request(rid=None) -> JobRequest:
    rid = rid or str(uuid.uuid4())
    return JobRequest.model_validate({"requestId": rid, "senderId": "s",
                                      "payload": {"script": "x", "agentType": "linux-amd64-mono-6"}})


def test_repeated_request_id_gives_the_existing_job(store):
    rid = str(uuid.uuid4())
    a, created_a = store.create(request(rid))
    b, created_b = store.create(request(rid))
    assert created_a and not created_b and a.id == b.id


def test_concurrent_creates_make_one_job(store):
    results = []
    barrier = threading.Barrier(10)
    rid = str(uuid.uuid4())

    def go():
        barrier.wait()
        results.append(store.create(request(rid)))

    threads = [threading.Thread(target=go) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1


def test_lifecycle_and_illegal_steps(store):
    job, _ = store.create(request())
    assert store.transition(job.id, JobStatus.RUNNING, node_id="n1")
    result = JobResult(finished_with=FinishedWith.SUCCEEDED, stdout="hi", stderr="", exit_code=0)
    assert store.transition(job.id, JobStatus.FINISHED, result=result)
    assert not store.transition(job.id, JobStatus.REJECTED, reason="late")  # finished is final
    assert not store.transition(job.id, JobStatus.RUNNING)
    got = store.get(job.id)
    assert got.status == JobStatus.FINISHED and got.result().stdout == "hi" and got.node_id == "n1"
    assert got.rejected_reason is None


def test_request_round_trips_in_camel_case(store):
    job, _ = store.create(request())
    assert store.get(job.id).request().model_dump(by_alias=True)["payload"]["agentType"] == "linux-amd64-mono-6"


def test_delete(store):
    job, _ = store.create(request())
    assert store.delete(job.id).id == job.id
    assert store.get(job.id) is None and store.delete(job.id) is None
