"""Cluster status per agent type: nodes offering it, sandbox slots, busy slots, waiting tasks.

    python -m cluster.status [--address HEAD:6379]
"""

from __future__ import annotations

import argparse
import json
import os

from cluster.agent_types import CATALOGUE


def agent_type_status(nodes: list[dict], available: dict[str, float], waiting: dict[str, int]) -> dict[str, dict]:
    """Per agent type: live nodes, slots, busy and waiting (pure, from Ray's views)."""
    status = {}
    for name in CATALOGUE:
        offering = [n for n in nodes if n.get("Alive") and n.get("Resources", {}).get(name, 0) > 0]
        slots = int(sum(n["Resources"][name] for n in offering))
        status[name] = {
            "nodes": len(offering),
            "slots": slots,
            "busy": max(0, slots - int(available.get(name, 0))),
            "waiting": waiting.get(name, 0),
        }
    return status


def current(address: str | None = None) -> dict[str, dict]:
    """Reads the live cluster (connecting if this process is not yet connected)."""
    import ray
    from ray.util.state import list_tasks

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address=address or "auto", logging_level="ERROR")
    waiting: dict[str, int] = {}
    for task in list_tasks(filters=[("state", "=", "PENDING_NODE_ASSIGNMENT")], detail=True, limit=10000):
        for name in (task.required_resources or {}):
            if name in CATALOGUE:
                waiting[name] = waiting.get(name, 0) + 1
    return agent_type_status(ray.nodes(), ray.available_resources(), waiting)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m cluster.status", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=None, help="the head's GCS address (default: the local cluster)")
    print(json.dumps(current(p.parse_args().address), indent=2))


if __name__ == "__main__":
    main()
