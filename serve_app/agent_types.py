"""GET /agent-types: the platforms this deployment runs, their limits, and their capacity now."""

import asyncio

import ray
from fastapi import APIRouter, Depends

from cluster.agent_types import CATALOGUE
from serve_app.deps import Services, get_services
from serve_app.models import AgentLimits, AgentTypeView
from serve_app.plan import agent_profile
from serve_app.config import Settings

router = APIRouter(tags=["agent types"])


def views(settings: Settings, nodes: list[dict], total: dict, free: dict) -> list[AgentTypeView]:
    """The enabled agent types as the API shows them, from Ray's nodes and resources (pure)."""
    shown = []
    for name in settings.agent_types:
        t = CATALOGUE[name]
        limits, network = agent_profile(settings, name)
        most = AgentLimits(**vars(limits))
        shown.append(AgentTypeView(
            name=name, description=t.description, runtime=t.runtime, runtime_version=t.runtime_version,
            language_version=t.language_version, default_limits=most, max_limits=most,
            network_modes=["none", "egress"] if network == "egress" else ["none"],
            # service-restored packages, or a runner that restores them itself over its network
            nuget=t.nuget is not None or network == "egress",
            nodes=sum(1 for n in nodes if n.get("Alive") and n.get("Resources", {}).get(name)),
            slots=int(total.get(name, 0)), free_slots=int(free.get(name, 0))))
    return shown


def _now(settings: Settings) -> list[AgentTypeView]:
    return views(settings, ray.nodes(), ray.cluster_resources(), ray.available_resources())


@router.get("/agent-types", response_model=list[AgentTypeView])
async def agent_types(svc: Services = Depends(get_services)):
    """Each agent type this deployment runs: runtime, C# version, limits, network modes, NuGet, and
    its nodes and slots now (a type without nodes still takes jobs: they wait for one)."""
    return await asyncio.to_thread(_now, svc.settings)
