"""The /jobs resource."""

import asyncio
import logging
import uuid

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status

from executors.nuget import config as nuget_config
from serve_app.deps import Services, get_services
from serve_app.plan import validate
from serve_app.models import (
    Job, JobCreated, JobRequest, JobRequestView, JobResultView, JobStatusView, JobView, Message,
)

log = logging.getLogger("dotnet_scripts.jobs")
router = APIRouter(prefix="/jobs", tags=["jobs"])

NOT_FOUND = {404: {"model": Message, "description": "no job with this id"}}


def _job(svc: Services, job_id: str) -> Job:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        raise HTTPException(404, f"job {job_id!r} not found: job ids are UUIDs") from None
    job = svc.store.get(key)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


def _shown(job: Job) -> JobRequest:
    """The job's request as clients see it again: feed credentials redacted."""
    request = job.request()
    config = request.payload.job_config
    if config and config.nuget_config_xml:
        config.nuget_config_xml = nuget_config.redact(config.nuget_config_xml)
    return request


def _fetched(svc: Services, job_id: str) -> Job:
    """A job read by a client; a result handed out starts its retention clock."""
    job = _job(svc, job_id)
    if job.result_json is not None and job.fetched_at is None:
        svc.store.mark_fetched(job.id)
    return job


def _check_sizes(settings, payload) -> None:
    """413 for a text over its limit, 400 for too many arguments: named, before anything is stored."""
    sizes = [("payload.script", len(payload.script.encode()), settings.max_script_bytes),
             ("payload.stdin", len((payload.stdin or "").encode()), settings.max_stdin_bytes),
             ("payload.args", sum(len(a.encode()) for a in payload.args or ()), settings.max_args_bytes)]
    for field, size, limit in sizes:
        if size > limit:
            raise HTTPException(413, f"{field} is {size} bytes; the limit is {limit}")
    if len(payload.args or ()) > settings.max_args:
        raise HTTPException(400, f"payload.args has {len(payload.args)} arguments; the limit is {settings.max_args}")


@router.post(
    "", status_code=201, response_model=JobCreated,
    responses={200: {"model": JobCreated, "description": "this sender's requestId was seen before: the existing job"},
               400: {"model": Message, "description": "invalid request"},
               413: {"model": Message, "description": "script, stdin, args, or the whole request, too large"}},
)
async def create_job(body: JobRequest, response: Response, svc: Services = Depends(get_services)):
    """Stores a job and starts it on a node of its agent type."""
    settings = svc.settings
    if body.payload.agent_type not in settings.agent_types:
        raise HTTPException(400, f"unknown agentType {body.payload.agent_type!r}; "
                                 f"known agent types: {', '.join(settings.agent_types)} (GET /agent-types)")
    _check_sizes(settings, body.payload)
    config = body.payload.job_config
    try:
        validate(settings, body.payload.agent_type, config)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    job, created = await asyncio.to_thread(svc.store.create, body)
    if not created:
        response.status_code = status.HTTP_200_OK
        log.info("job %s repeated requestId of its sender: not run again", job.id)
        return JobCreated(job_id=job.id)
    # one line whatever the client sent: agentType is one of ours, senderId has no control characters
    log.info("job %s PENDING agentType=%s sender=%s script=<CONTENT OMITTED>", job.id, job.agent_type, job.sender_id)
    svc.dispatcher.kick()  # the job is in the queue (the database); the dispatcher takes it from there
    return JobCreated(job_id=job.id)


@router.get("/{job_id}", response_model=JobView, response_model_exclude_none=False, responses=NOT_FOUND)
def get_job(job_id: str, svc: Services = Depends(get_services)):
    job = _fetched(svc, job_id)
    return JobView(job_id=job.id, request=_shown(job), status=job.status,
                   rejected_reason=job.rejected_reason, result=job.result())


@router.get("/{job_id}/request", response_model=JobRequestView, responses=NOT_FOUND)
def get_job_request(job_id: str, svc: Services = Depends(get_services)):
    job = _job(svc, job_id)
    return JobRequestView(job_id=job.id, request=_shown(job))


@router.get("/{job_id}/status", response_model=JobStatusView, responses=NOT_FOUND)
def get_job_status(job_id: str, svc: Services = Depends(get_services)):
    job = _job(svc, job_id)
    return JobStatusView(job_id=job.id, status=job.status, rejected_reason=job.rejected_reason)


@router.get("/{job_id}/result", response_model=JobResultView, responses=NOT_FOUND)
async def get_job_result(
    job_id: str,
    wait: int = Query(0, ge=0, le=60, description="seconds to wait for the job to end (long-poll); 0 answers at once"),
    svc: Services = Depends(get_services),
):
    """The result; null until the job is FINISHED. With `wait`, answers the moment the job ends."""
    job = await asyncio.to_thread(_job, svc, job_id)
    if wait and not job.status.ended:

        async def ended() -> bool:
            current = await asyncio.to_thread(svc.store.get, job.id)
            return current is None or current.status.ended

        await svc.events.wait(job.id, wait, ended, fallback=svc.dispatcher.wait_end)
    job = await asyncio.to_thread(_fetched, svc, job_id)
    return JobResultView(job_id=job.id, result=job.result())


@router.delete("/{job_id}", response_model=Message, responses=NOT_FOUND)
async def delete_job(job_id: str, svc: Services = Depends(get_services)):
    """Removes a job; a running job's sandbox is stopped."""
    job = await asyncio.to_thread(_job, svc, job_id)
    deleted = await asyncio.to_thread(svc.store.delete, job.id)
    if deleted is None:
        raise HTTPException(404, f"job {job_id} not found")
    svc.dispatcher.stop(job.id, deleted.node_id)  # also ends the long-polls that wait through the dispatcher
    await svc.events.publish(job.id, "DELETED")  # and those that wait on Redis: they answer 404 now
    log.info("job %s DELETED (was %s)", job.id, deleted.status.value)
    return Message(message=f"job {job.id} deleted")
