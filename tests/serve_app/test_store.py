"""The job store on a real SQLite file: idempotency by unique constraint, legal transitions only."""

import threading
import uuid

import pytest

from serve_app.models import FinishedWith, JobRequest, JobResult, JobStatus
from serve_app.store import JobStore


@pytest.fixture(scope="module")
def store_url(new_database) -> str:
    # a database of its own: the session's service, alive meanwhile, dispatches the PENDING jobs it
    # finds in the shared one (every RESCAN_S), and took one of a test's queue once
    return new_database("store")


@pytest.fixture
def store(store_url):
    return JobStore(store_url)


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


def test_the_queue_hands_out_each_job_once_oldest_first(store):
    mine = [store.create(request())[0] for _ in range(3)]
    queued = [j.id for j in store.queued("linux-amd64-mono-6", 1000) if j.id in {m.id for m in mine}]
    assert queued == [m.id for m in mine]
    assert store.claim(mine[0].id) == 1
    assert store.claim(mine[0].id) is None  # handed to Ray once
    assert mine[0].id not in {j.id for j in store.queued("linux-amd64-mono-6", 1000)}
    assert mine[0].id in {j.id for j in store.dispatched_jobs()}


def test_a_lost_run_is_requeued_and_counted_unless_it_never_started(store):
    job, _ = store.create(request())
    store.claim(job.id)
    store.transition(job.id, JobStatus.RUNNING, node_id="n1")
    assert store.requeue(job.id)
    again = store.get(job.id)
    assert again.status == JobStatus.PENDING and not again.dispatched and again.node_id is None
    assert store.claim(job.id) == 2  # the second run
    assert store.requeue(job.id, counted=False) and store.get(job.id).attempts == 1
    store.claim(job.id)
    store.transition(job.id, JobStatus.REJECTED, reason="r")
    assert not store.requeue(job.id)  # an ended job stays ended
    assert job.id not in {j.id for j in store.dispatched_jobs()}


def test_a_database_from_before_the_queue_columns_gets_them(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    JobStore(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:  # as the first release left it
        db.execute("ALTER TABLE job DROP COLUMN attempts")
        db.execute("DROP INDEX ix_job_dispatched")
        db.execute("ALTER TABLE job DROP COLUMN dispatched")
    store = JobStore(f"sqlite:///{path}")
    job, _ = store.create(request())
    assert store.claim(job.id) == 1


def test_racing_claims_and_transitions_have_one_winner(store):
    job, _ = store.create(request())
    barrier = threading.Barrier(8)
    claims, ends = [], []

    def go(i: int) -> None:
        barrier.wait()
        claims.append(store.claim(job.id))
        barrier.wait()
        status = JobStatus.FINISHED if i % 2 else JobStatus.REJECTED  # a result and a stale sweep at once
        ends.append((status, store.transition(job.id, status, reason=None if i % 2 else f"r{i}")))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claims, key=str) == [1] + [None] * 7  # handed to Ray once, as its first attempt
    winners = [status for status, won in ends if won]
    assert len(winners) == 1 and store.get(job.id).status == winners[0]
