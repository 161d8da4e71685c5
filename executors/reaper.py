"""Removes sandbox containers whose job can no longer be waiting for them (Docker's and those
runsc alone started).

Every sandbox carries the job id, a deadline (its wall time plus a margin) and the Ray node that
started it as labels. A container past its deadline belongs to a task that died (worker killed,
service stopped), and one started by a node that Ray reports dead belongs to nobody (the node
was lost and this machine joined again as a new node): nobody will read them, so they are removed.
"""

import logging
import subprocess
import time

from executors import network
from executors.engines import runsc
from executors.spec import LABEL
from executors.engines.docker import engine

log = logging.getLogger(__name__)


def expired(labels: dict[str, str], now: float) -> bool:
    """Whether a container with these labels is past its deadline (no deadline: expired)."""
    try:
        return float(labels.get(f"{LABEL}.deadline", "0")) < now
    except ValueError:
        return True


def orphaned(labels: dict[str, str], now: float, dead_nodes: set[str]) -> bool:
    """Whether a container is nobody's: past its deadline, or started by a node now dead."""
    return expired(labels, now) or labels.get(f"{LABEL}.node", "") in dead_nodes


def sandboxes() -> dict[str, dict[str, str]]:
    """Sandbox containers on this node: name → labels."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}\t{{.Labels}}"],
        capture_output=True, text=True, timeout=30,
    ).stdout
    found = {}
    for line in out.splitlines():
        name, _, labels = line.partition("\t")
        found[name] = dict(kv.partition("=")[::2] for kv in labels.split(",") if kv)
    return found


def reap(everything: bool = False, dead_nodes: set[str] = frozenset()) -> list[str]:
    """Removes orphaned sandboxes (or all of them, when this node is shutting down)."""
    now = time.time()
    doomed = [name for name, labels in sandboxes().items() if everything or orphaned(labels, now, dead_nodes)]
    if doomed:
        subprocess.run(["docker", "rm", "--force", *doomed], capture_output=True, timeout=60)
    # those runsc alone started: the same labels, kept as their bundles' annotations
    alone = [name for name, labels in runsc.sandboxes().items() if everything or orphaned(labels, now, dead_nodes)]
    for name in alone:
        runsc.remove(name)
    for cid in runsc.stale():
        runsc.forget(cid)
    runsc.forget_dead_jobs()
    runsc.prune_cgroups()
    network.remove_unused_networks(engine())  # those whose sandbox went without removing them
    if doomed or alone:
        log.info("reaped %d sandbox containers", len(doomed) + len(alone))
    return doomed + alone


def dead_ray_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n["Alive"]}
