"""Cluster status per agent type (pure part)."""

from cluster.status import agent_type_status

MONO, DOTNET = "linux-amd64-mono-6", "linux-amd64-dotnet-7"


def test_counts_live_nodes_slots_busy_and_waiting():
    nodes = [
        {"Alive": True, "Resources": {MONO: 2.0, "CPU": 2.0}},
        {"Alive": True, "Resources": {MONO: 4.0}},
        {"Alive": False, "Resources": {MONO: 8.0}},  # a dead node offers nothing
        {"Alive": True, "Resources": {"CPU": 2.0}},
    ]
    s = agent_type_status(nodes, available={MONO: 5.0}, waiting={MONO: 3})
    assert s[MONO] == {"nodes": 2, "slots": 6, "busy": 1, "waiting": 3}
    assert s[DOTNET] == {"nodes": 0, "slots": 0, "busy": 0, "waiting": 0}
