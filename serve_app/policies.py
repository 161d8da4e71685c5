"""Job policies that run in the background of every replica: stale jobs become REJECTED, results
are deleted after their retention time. Each step is a conditional update, so replicas running
the same sweep at once do no harm."""

import asyncio
import logging
from datetime import timedelta

from serve_app.deps import Services
from serve_app.models import JobStatus, utcnow

log = logging.getLogger("dotnet_scripts.jobs")


def stale_reason(status: JobStatus, agent_type: str, seconds: float) -> str:
    if status == JobStatus.PENDING:
        return (f"no sandbox of agent type {agent_type} became free within {seconds:g} s "
                f"(all slots busy, or no node offers it)")
    return f"no result within {seconds:g} s of starting: its node or the service lost the job"


def sweep(svc: Services) -> tuple[list, int]:
    """One pass of the policies; returns (ids of the jobs rejected, number of jobs deleted)."""
    cfg, store = svc.settings, svc.store
    now = utcnow()
    rejected = []
    for job in store.stale(now - timedelta(seconds=cfg.stale_after_s)):
        reason = stale_reason(job.status, job.agent_type, cfg.stale_after_s)
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
