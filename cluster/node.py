"""Nodes that offer agent types: a node advertises one Ray custom resource per agent type, with
its number of sandbox slots as the count, so Ray never runs more sandboxes there than it has slots.

    python -m cluster.node head   --agent-type linux-amd64-mono-6=4    # a head that is also a worker
    python -m cluster.node worker --address HEAD:6379 --agent-type linux-amd64-mono-6=2
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cluster.agent_types import CATALOGUE


#: the `ray` command of this Python's environment (the venv's, when run as .venv/bin/python)
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"


def parse_offer(text: str) -> tuple[str, int]:
    """`NAME=SLOTS` (or just NAME, one slot) → (name, slots); the name must be in the catalogue."""
    name, _, slots = text.partition("=")
    if name not in CATALOGUE:
        raise ValueError(f"unknown agent type {name!r}; known: {', '.join(sorted(CATALOGUE))}")
    n = int(slots) if slots else 1
    if n < 0:
        raise ValueError("slots must be >= 0")
    return name, n


#: the head advertises it and the API replicas ask for a sliver of it: they stay on the head, off
#: the sandbox nodes (whose CPUs are the scripts', and which an autoscaler must be able to remove)
API_RESOURCE = "dotnet-scripts-api"


def on_the_head(near_node_id: str | None = None) -> dict:
    """Ray actor options that keep a service actor (API replica, dispatcher, launcher) on the head
    when the cluster has one made for the API; otherwise near `near_node_id` (e.g. the driver's)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if ray.cluster_resources().get(API_RESOURCE):
        return {"resources": {API_RESOURCE: 0.01}}
    if near_node_id:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=near_node_id, soft=True)}
    return {}


#: Ray Serve's knobs for this service, in the environment of every node's Ray (the processes of
#: Serve's controller, proxies and replicas read them at start): set by `python -m serve_app` for
#: its local head, by `python -m cluster.node` and by ray-cluster.yaml's start commands
SERVE_TUNING = {
    # the controller reconciles every 0.1 s by default, and its GCS queries take CPU from the
    # sandboxes; this deployment changes rarely (docs/PERFORMANCE.md)
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    # per request, proxies and replicas otherwise hop between two event loops each (the router's,
    # the user code's: a thread more) and copy every log line to stderr, which Ray ships through
    # its log monitor and the GCS to the driver. Serve's lines, and the API replicas' own, stay in
    # Serve's files (logs/serve/ of the Ray session); the figures are in docs/PERFORMANCE.md
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def set_ray_defaults() -> None:
    """This process's environment, for a Ray node it starts: the service's Serve knobs and no
    token auth, unless the environment says otherwise."""
    for key, value in {"RAY_AUTH_MODE": "disabled", **SERVE_TUNING}.items():
        os.environ.setdefault(key, value)


def node_resources(offers: dict[str, int], head: bool = False) -> dict[str, float]:
    resources = {name: float(slots) for name, slots in offers.items() if slots > 0}
    if head:
        resources[API_RESOURCE] = 100.0
    return resources


def ray_start_args(role: str, offers: dict[str, int], address: str = "", port: int = 6379) -> list[str]:
    args = [RAY, "start", "--resources", json.dumps(node_resources(offers, head=role == "head"))]
    if role == "head":
        args += ["--head", f"--port={port}", "--dashboard-host=127.0.0.1"]
    else:
        args += [f"--address={address}"]
    return args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.node", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=["head", "worker"])
    p.add_argument("--agent-type", action="append", default=[], metavar="NAME=SLOTS")
    p.add_argument("--address", default="", help="head's GCS address (workers)")
    p.add_argument("--port", type=int, default=6379, help="GCS port (head)")
    a = p.parse_args(argv)
    if a.role == "worker" and not a.address:
        p.error("a worker needs --address")
    try:
        offers = dict(parse_offer(o) for o in a.agent_type)
    except ValueError as e:
        p.error(str(e))
    set_ray_defaults()
    return subprocess.call(ray_start_args(a.role, offers, a.address, a.port))


if __name__ == "__main__":
    sys.exit(main())
