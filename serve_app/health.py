"""GET /actuator/health: UP when the database answers and the cluster offers the agent types."""

import asyncio

import ray
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from serve_app.deps import Services, get_services

router = APIRouter(tags=["service"])


def _database(svc: Services) -> dict:
    try:
        svc.store.ping()
        return {"status": "UP"}
    except Exception as e:
        return {"status": "DOWN", "details": {"error": type(e).__name__}}


def _cluster(svc: Services) -> dict:
    total = ray.cluster_resources()
    free = ray.available_resources()
    slots = {t: {"slots": int(total.get(t, 0)), "free": int(free.get(t, 0))}
             for t in svc.settings.agent_types}
    # an agent type without nodes is not an outage: its jobs wait (and an autoscaler may add nodes)
    return {"status": "UP", "details": {"agentTypes": slots}}


@router.get("/actuator/health")
async def health(svc: Services = Depends(get_services)):
    db, cluster = await asyncio.gather(asyncio.to_thread(_database, svc), asyncio.to_thread(_cluster, svc))
    up = db["status"] == "UP" and cluster["status"] == "UP"
    body = {"status": "UP" if up else "DOWN", "components": {"db": db, "ray": cluster}}
    return JSONResponse(status_code=200 if up else 503, content=body)
