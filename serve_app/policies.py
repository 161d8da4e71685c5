"""Job policies that run in the background of every replica: stale jobs become REJECTED, results
are deleted after their retention time. Each step is a conditional update, so replicas running
the same sweep at once do no harm."""

import asyncio
import logging
from datetime import timedelta, timezone

import ray

from serve_app.deps import Services
from serve_app.models import JobStatus, utcnow

log = logging.getLogger("dotnet_scripts.jobs")


def stale_reason(status: JobStatus, agent_type: str, seconds: float, slots: int) -> str:
    if status == JobStatus.PENDING and not slots:
        return (f"no live node offers agent type {agent_type}, and none was added within {seconds:g} s "
                f"(no autoscaler, or it cannot add such a node)")
    if status == JobStatus.PENDING:
        return f"all {slots} sandbox slots of agent type {agent_type} stayed busy for {seconds:g} s"
    return f"no result within {seconds:g} s of starting: its node or the service lost the job"


def sweep(svc: Services) -> tuple[list, int]:
    """One pass of the policies; returns (ids of the jobs rejected, number of jobs deleted)."""
    cfg, store = svc.settings, svc.store
    now = utcnow()
    rejected = []
    candidates = store.stale(now - timedelta(seconds=min(cfg.stale_after_s, cfg.pending_limit_s)))
    total = ray.cluster_resources() if candidates else {}
    for job in candidates:
        slots = int(total.get(job.agent_type, 0))
        # a job whose agent type has no node waits for the autoscaler; one behind busy slots or running, for news
        limit = cfg.pending_limit_s if job.status == JobStatus.PENDING and not slots else cfg.stale_after_s
        updated = job.updated_at if job.updated_at.tzinfo else job.updated_at.replace(tzinfo=timezone.utc)  # SQLite: naive UTC
        if updated >= now - timedelta(seconds=limit):
            continue
        reason = stale_reason(job.status, job.agent_type, limit, slots)
        if store.transition(job.id, JobStatus.REJECTED, reason=reason):
            rejected.append(job.id)
            log.info("job %s REJECTED reason=%s", job.id, reason)
            svc.dispatcher.stop(job.id, job.node_id)
    deleted = store.delete_expired(
        fetched_before=now - timedelta(seconds=cfg.fetched_retention_s),
        ended_before=now - timedelta(seconds=cfg.unfetched_retention_s),
    )
    if deleted:
        log.info("retention: deleted %d ended jobs", deleted)
    return rejected, deleted


async def run_forever(svc: Services) -> None:
    while True:
        await asyncio.sleep(svc.settings.sweep_interval_s)
        try:
            rejected, _ = await asyncio.to_thread(sweep, svc)
            for job_id in rejected:
                await svc.events.publish(job_id, JobStatus.REJECTED.value)
        except Exception:
            log.exception("policy sweep failed; retrying at the next interval")
