"""GET /agent-types: what each enabled platform offers (pure part), and through HTTP."""

import pytest

from serve_app.agent_types import views
from serve_app.config import Settings

MONO = "linux-amd64-mono-6"
DOTNET = "linux-amd64-dotnet-7"


def test_each_enabled_type_with_its_limits_network_and_capacity():
    settings = Settings(agent_types=f"{MONO},{DOTNET}", wall_time_s=30,
                        agent_overrides={DOTNET: {"network": "egress", "memory_mb": 1024}})
    nodes = [{"Alive": True, "Resources": {MONO: 4}}, {"Alive": True, "Resources": {MONO: 2, DOTNET: 1}},
             {"Alive": False, "Resources": {MONO: 8}}]
    mono, dotnet = views(settings, nodes, total={MONO: 6, DOTNET: 1}, free={MONO: 5})
    assert (mono.name, mono.runtime, mono.runtime_version, mono.language_version) == (MONO, "Mono", "6.8", "7.2")
    assert (mono.nodes, mono.slots, mono.free_slots) == (2, 6, 5)  # the dead node does not count
    assert mono.default_limits == mono.max_limits and mono.max_limits.wall_time_s == 30
    assert mono.network_modes == ["none"] and mono.nuget  # the service restores its packages
    assert (dotnet.nodes, dotnet.slots, dotnet.free_slots, dotnet.max_limits.memory_mb) == (1, 1, 0, 1024)
    assert dotnet.network_modes == ["none", "egress"] and dotnet.nuget  # restores itself over its network
    assert not views(Settings(agent_types=DOTNET), [], {}, {})[0].nuget  # no network: no packages


@pytest.mark.integration
def test_the_service_lists_what_it_runs_and_an_unknown_type_points_there(client, jobs):
    r = client.get("/agent-types")
    assert r.status_code == 200, r.text
    (mono,) = [t for t in r.json() if t["name"] == MONO]
    assert mono["runtime"] == "Mono" and mono["languageVersion"] == "7.2"
    assert (mono["nodes"], mono["slots"]) == (1, 2) and 0 <= mono["freeSlots"] <= 2  # LOCAL_SLOTS=2
    assert mono["maxLimits"]["wallTimeS"] == 8 and mono["maxLimits"]["memoryMb"] == 256  # the tests' settings
    assert "/agent-types" in client.get("/api-docs").json()["paths"]
    r = jobs.submit('Console.WriteLine("x");', agent_type="windows-arm64-dotnet-99")
    assert r.status_code == 400 and "GET /agent-types" in r.json()["message"]
