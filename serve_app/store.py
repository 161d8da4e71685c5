"""Persistence of jobs with SQLModel; the only state the API replicas share."""

import uuid
from datetime import datetime
from typing import Optional

from sqlalchemy import and_, delete, event, func, inspect, or_, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, create_engine, select

from serve_app.models import IDEMPOTENCY_COLUMNS, IDEMPOTENCY_INDEX, Job, JobRequest, JobResult, JobStatus, utcnow

#: transitions a job may make; anything else is ignored (e.g. a late result for a REJECTED job)
TRANSITIONS: dict[JobStatus, set[JobStatus]] = {
    JobStatus.PENDING: {JobStatus.RUNNING, JobStatus.FINISHED, JobStatus.REJECTED},
    JobStatus.RUNNING: {JobStatus.FINISHED, JobStatus.REJECTED},
    JobStatus.FINISHED: set(),
    JobStatus.REJECTED: set(),
}


def make_engine(url: str):
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # WAL: readers do not block the writer across replicas
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")

        return engine
    return create_engine(url, pool_pre_ping=True)


#: columns added since the first release, for databases created before them (no migration tool)
ADDED_COLUMNS = {
    "dispatched": "BOOLEAN NOT NULL DEFAULT false",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
}


#: the PostgreSQL advisory lock (any fixed key) held while the schema is brought up to date: replicas start at once
SCHEMA_LOCK = 0x6A6F62_73636865


def migrate_idempotency_index(engine) -> None:
    """Makes the unique index of a requestId the one over IDEMPOTENCY_COLUMNS, and drops any other
    unique index or constraint over request_id: databases from before idempotency was per sender
    have one over request_id alone, which answered one sender's requestId with another's job. The
    new index comes first, so that a request never finds neither. Idempotent."""
    table, want = Job.__tablename__, list(IDEMPOTENCY_COLUMNS)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        schema = inspect(conn)
        # an index that backs a constraint is dropped with the constraint, below
        unique = [i for i in schema.get_indexes(table) if i["unique"] and not i.get("duplicates_constraint")]
        if not any(i["column_names"] == want for i in unique):
            conn.execute(text(f"CREATE UNIQUE INDEX IF NOT EXISTS {IDEMPOTENCY_INDEX} ON {table} ({', '.join(want)})"))
        for i in unique:
            if "request_id" in i["column_names"] and i["column_names"] != want:
                conn.execute(text(f'DROP INDEX IF EXISTS "{i["name"]}"'))
        if conn.dialect.name != "sqlite":  # SQLite cannot drop a constraint (and no version of ours made one)
            for c in schema.get_unique_constraints(table):
                if "request_id" in c["column_names"] and c["column_names"] != want:
                    conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT IF EXISTS "{c["name"]}"'))


class JobStore:
    def __init__(self, url: str):
        self.engine = make_engine(url)
        SQLModel.metadata.create_all(self.engine)
        have = {c["name"] for c in inspect(self.engine).get_columns(Job.__tablename__)}
        with self.engine.begin() as conn:
            for name, ddl in ADDED_COLUMNS.items():
                if name not in have:
                    conn.execute(text(f"ALTER TABLE {Job.__tablename__} ADD COLUMN {name} {ddl}"))
        migrate_idempotency_index(self.engine)

    def create(self, request: JobRequest) -> tuple[Job, bool]:
        """Stores a new job, or returns the existing one for a requestId repeated within its
        idempotency scope (the same sender; created=False)."""
        job = Job(
            request_id=request.request_id, sender_id=request.sender_id,
            agent_type=request.payload.agent_type,
            request_json=request.model_dump_json(by_alias=True, exclude_none=True),
        )
        with Session(self.engine, expire_on_commit=False) as s:
            s.add(job)
            try:
                s.commit()
                return job, True
            except IntegrityError:
                s.rollback()
        existing = self.same_request(job)
        if existing is None:  # the other insert was rolled back or deleted meanwhile
            raise RuntimeError("requestId conflict without a stored job")
        return existing, False

    def same_request(self, job: Job) -> Optional[Job]:
        """The stored job with `job`'s requestId in its idempotency scope (IDEMPOTENCY_COLUMNS)."""
        with Session(self.engine, expire_on_commit=False) as s:
            same = (getattr(Job, c) == getattr(job, c) for c in IDEMPOTENCY_COLUMNS)
            return s.exec(select(Job).where(*same)).first()

    def get(self, job_id: uuid.UUID) -> Optional[Job]:
        with Session(self.engine, expire_on_commit=False) as s:
            return s.get(Job, job_id)

    def transition(self, job_id: uuid.UUID, status: JobStatus, *, result: Optional[JobResult] = None,
                   reason: Optional[str] = None, node_id: Optional[str] = None) -> bool:
        """Moves a job to `status` if that is a legal step from where it is; False otherwise. One
        conditional UPDATE (on the dispatcher's path for every job): atomic, and no row loaded."""
        values = {"status": status, "updated_at": utcnow()}
        if result is not None:
            values["result_json"] = result.model_dump_json(by_alias=True)
        if reason is not None:
            values["rejected_reason"] = reason
        if node_id is not None:
            values["node_id"] = node_id
        sources = [source for source, targets in TRANSITIONS.items() if status in targets]
        with Session(self.engine) as s:
            done = s.exec(update(Job).where(Job.id == job_id, Job.status.in_(sources)).values(**values))
            s.commit()
            return done.rowcount == 1

    def queued(self, agent_type: str, limit: int) -> list[Job]:
        """PENDING jobs of an agent type not yet handed to Ray, oldest first."""
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.exec(select(Job).where(
                Job.agent_type == agent_type, Job.status == JobStatus.PENDING, Job.dispatched.is_(False),
            ).order_by(Job.created_at).limit(limit)))

    def claim(self, job_id: uuid.UUID) -> Optional[int]:
        """Marks a queued job as handed to Ray; its attempt number, or None if it is not queued."""
        with Session(self.engine) as s:
            attempts = s.exec(update(Job).where(
                Job.id == job_id, Job.status == JobStatus.PENDING, Job.dispatched.is_(False),
            ).values(dispatched=True, attempts=Job.attempts + 1).returning(Job.attempts)).scalar_one_or_none()
            s.commit()
            return attempts

    def requeue(self, job_id: uuid.UUID, counted: bool = True) -> bool:
        """Puts a job whose run was lost back in the queue (PENDING); `counted=False`: the lost
        attempt never started a sandbox and does not count. False if it has ended meanwhile."""
        with Session(self.engine) as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.status.ended:
                return False
            job.status, job.dispatched, job.node_id, job.updated_at = JobStatus.PENDING, False, None, utcnow()
            if not counted:
                job.attempts = max(0, job.attempts - 1)
            s.add(job)
            s.commit()
            return True

    def dispatched_jobs(self) -> list[Job]:
        """Jobs handed to Ray that have not ended: what a restarted dispatcher must follow again."""
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.exec(select(Job).where(
                Job.dispatched.is_(True), Job.status.in_([JobStatus.PENDING, JobStatus.RUNNING]))))

    def pending_counts(self) -> dict[str, int]:
        """PENDING jobs per agent type."""
        with Session(self.engine) as s:
            rows = s.exec(select(Job.agent_type, func.count()).where(Job.status == JobStatus.PENDING)
                          .group_by(Job.agent_type))
            return {agent_type: n for agent_type, n in rows}

    def delete(self, job_id: uuid.UUID) -> Optional[Job]:
        with Session(self.engine, expire_on_commit=False) as s:
            job = s.get(Job, job_id)
            if job is not None:
                s.delete(job)
                s.commit()
            return job

    def mark_fetched(self, job_id: uuid.UUID) -> None:
        """Starts the fetched-result retention clock (once)."""
        with Session(self.engine) as s:
            s.exec(update(Job).where(Job.id == job_id, Job.fetched_at.is_(None)).values(fetched_at=utcnow()))
            s.commit()

    def stale(self, older_than: datetime) -> list[Job]:
        """PENDING or RUNNING jobs whose status has not changed since `older_than`."""
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.exec(select(Job).where(
                Job.status.in_([JobStatus.PENDING, JobStatus.RUNNING]), Job.updated_at < older_than)))

    def delete_expired(self, fetched_before: datetime, ended_before: datetime) -> int:
        """Deletes ended jobs fetched before `fetched_before`, or never fetched and ended before `ended_before`."""
        ended = Job.status.in_([JobStatus.FINISHED, JobStatus.REJECTED])
        with Session(self.engine) as s:
            res = s.exec(delete(Job).where(ended, or_(
                Job.fetched_at < fetched_before,
                and_(Job.fetched_at.is_(None), Job.updated_at < ended_before))))
            s.commit()
            return res.rowcount

    def ping(self) -> None:
        with Session(self.engine) as s:
            s.exec(select(1)).first()
