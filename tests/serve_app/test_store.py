"""The job store on a real SQLite file: idempotency by unique constraint, legal transitions only."""

import json
import threading
import uuid

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlmodel import Session

from serve_app.models import IDEMPOTENCY_INDEX, FinishedWith, Job, JobRequest, JobResult, JobStatus
from serve_app.store import JobStore


@pytest.fixture(scope="module")
def store_url(new_database) -> str:
    # a database of its own: the session's service, alive meanwhile, dispatches the PENDING jobs it
    # finds in the shared one (every RESCAN_S), and took one of a test's queue once
    return new_database("store")


@pytest.fixture
def store(store_url):
    return JobStore(store_url)


def request(rid=None, sender="s") -> JobRequest:
    rid = rid or str(uuid.uuid4())
    return JobRequest.model_validate({"requestId": rid, "senderId": sender,
                                      "payload": {"script": "x", "agentType": "linux-amd64-mono-6"}})


def test_repeated_request_id_gives_the_existing_job(store):
    rid = str(uuid.uuid4())
    a, created_a = store.create(request(rid))
    b, created_b = store.create(request(rid))
    assert created_a and not created_b and a.id == b.id


def test_a_request_id_is_unique_per_sender_not_globally(store):
    rid = str(uuid.uuid4())
    a, created_a = store.create(request(rid, sender="alice"))
    b, created_b = store.create(request(rid, sender="bob"))  # bob guessed, or chose, alice's requestId
    assert created_a and created_b and a.id != b.id
    again, created = store.create(request(rid, sender="bob"))
    assert not created and again.id == b.id and again.sender_id == "bob"


def test_concurrent_creates_make_one_job_per_sender(store):
    results = []
    barrier = threading.Barrier(10)
    rid = str(uuid.uuid4())

    def go(sender: str):
        barrier.wait()
        results.append(store.create(request(rid, sender)))

    threads = [threading.Thread(target=go, args=("ab"[i % 2],)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created for _, created in results) == 2
    assert {job.sender_id: job.id for job, _ in results} == {
        job.sender_id: job.id for job, created in results if created}  # each sender's requests: its one job


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


#: the unique index every release before per-sender idempotency made (SQLModel's unique=True, index=True)
OLD_INDEX = "CREATE UNIQUE INDEX ix_job_request_id ON job (request_id)"


def make_old(url: str, shape: str) -> tuple[uuid.UUID, str]:
    """A database as an earlier release left it (a global unique requestId), with alice's job in it."""
    rid = str(uuid.uuid4())
    first, _ = JobStore(url).create(request(rid, sender="alice"))
    engine = create_engine(url)
    with engine.begin() as db:
        db.execute(text(f"DROP INDEX {IDEMPOTENCY_INDEX}"))
        db.execute(text(OLD_INDEX if shape == "index" else
                        "ALTER TABLE job ADD CONSTRAINT job_request_id_key UNIQUE (request_id)"))
    engine.dispose()
    return first.id, rid


def test_a_database_with_a_global_request_id_index_becomes_per_sender(new_database):
    url = new_database("old_idempotency_index")
    assert_migrates(url, *make_old(url, "index"))


@pytest.mark.integration
def test_a_database_with_a_global_request_id_constraint_becomes_per_sender(pg_server):
    # PostgreSQL only: SQLite cannot add a constraint to a table (and no release made one there)
    url = pg_server.create_db("old_idempotency_constraint")
    assert_migrates(url, *make_old(url, "constraint"))


def assert_migrates(url: str, first_id: uuid.UUID, rid: str) -> None:
    JobStore(url)  # the service starts on it
    store = JobStore(url)  # and again: nothing left to do
    bobs, created = store.create(request(rid, sender="bob"))
    assert created and bobs.id != first_id
    assert store.create(request(rid, sender="alice"))[0].id == first_id
    assert store.create(request(rid, sender="bob"))[0].id == bobs.id
    schema = inspect(store.engine)
    unique = [(i["name"], i["column_names"]) for i in schema.get_indexes("job") if i["unique"]]
    unique += [(c["name"], c["column_names"]) for c in schema.get_unique_constraints("job")]
    assert [columns for _, columns in unique if "request_id" in columns] == [["sender_id", "request_id"]], unique


def test_a_request_stored_with_control_characters_still_reads_back(store):
    """Stored before identifiers were checked: shown (and run) with U+FFFD, never a 500 or a stuck queue."""
    job, _ = store.create(request())
    with Session(store.engine) as s:
        row = s.get(Job, job.id)
        row.request_json = json.dumps({**json.loads(row.request_json), "senderId": "evil\nINFO forged"})
        s.add(row)
        s.commit()
    assert store.get(job.id).request().sender_id == "evil\ufffdINFO forged"
