"""GET /actuator/health: UP when the database answers, Ray is there and sandboxes can start."""

import asyncio
import shutil
import subprocess

import ray
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from cluster.agent_types import CATALOGUE
from executors.spec import NAMESPACE, POOL_PREFIX
from serve_app.deps import Services, get_services

router = APIRouter(tags=["service"])
POOL_ANSWER_S = 2.0  #: a pool busy longer than this is left out of the answer


def _database(svc: Services) -> dict:
    try:
        svc.store.ping()
        return {"status": "UP"}
    except Exception as e:
        return {"status": "DOWN", "details": {"error": type(e).__name__}}


def _cluster(svc: Services) -> dict:
    total = ray.cluster_resources()
    free = ray.available_resources()
    waiting = svc.store.pending_counts()
    slots = {t: {"slots": int(total.get(t, 0)), "free": int(free.get(t, 0)), "waiting": waiting.get(t, 0)}
             for t in svc.settings.agent_types}
    # an agent type without nodes is not an outage: its jobs wait (and an autoscaler may add nodes)
    return {"status": "UP", "details": {"agentTypes": slots}}


def _pools() -> dict:
    """Each node's sandbox pools (executors/pool/): idle, warmed, starting and active sandboxes,
    and their compiled-script caches. Informational: jobs run without pools too."""
    asked = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == NAMESPACE and actor["name"].startswith(POOL_PREFIX):
            try:
                asked[actor["name"]] = ray.get_actor(actor["name"], namespace=NAMESPACE).state.remote()
            except ValueError:
                continue  # retired meanwhile
    ready, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=POOL_ANSWER_S) if asked else ([], [])
    found = {}
    for name, ref in asked.items():  # all asked at once; one busy past the timeout is left out
        if ref in ready:
            try:
                found[name] = ray.get(ref)
            except ray.exceptions.RayError:
                continue  # retired while it answered
    return {"status": "UP", "details": {"pools": found}}


def _sandbox(svc: Services) -> dict:
    """Docker and the agent types' images, as seen from this replica's node."""
    if shutil.which("docker") is None:
        return {"status": "UNKNOWN", "details": {"reason": "no Docker on this replica's node"}}
    images = {}
    for name in svc.settings.agent_types:
        image = CATALOGUE[name].image
        try:
            ok = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                                capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return {"status": "DOWN", "details": {"reason": "Docker does not answer"}}
        images[name] = {"image": image, "present": ok}
    if not images or not any(i["present"] for i in images.values()):
        return {"status": "DOWN", "details": {"images": images}}
    return {"status": "UP", "details": {"images": images, "runtime": svc.settings.sandbox_runtime}}


@router.get("/actuator/health")
async def health(svc: Services = Depends(get_services)):
    db, cluster, sandbox, pools = await asyncio.gather(
        asyncio.to_thread(_database, svc), asyncio.to_thread(_cluster, svc), asyncio.to_thread(_sandbox, svc),
        asyncio.to_thread(_pools))
    events = await svc.events.ping()  # without Redis the API still works: not part of UP/DOWN
    dispatcher = await svc.dispatcher.ping()
    up = all(c["status"] == "UP" for c in (db, cluster, dispatcher)) and sandbox["status"] != "DOWN"
    body = {"status": "UP" if up else "DOWN",
            "components": {"db": db, "ray": cluster, "dispatcher": dispatcher, "sandbox": sandbox, "redis": events,
                           "pools": pools}}
    return JSONResponse(status_code=200 if up else 503, content=body)
