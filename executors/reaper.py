"""Removes sandbox containers whose job can no longer be waiting for them (Docker's and those
runsc alone started).

Every sandbox carries the job id, a deadline (its wall time plus a margin) and the Ray node that
started it as labels. A container past its deadline belongs to a task that died (worker killed,
service stopped), and one started by a node that Ray reports dead belongs to nobody (the node
was lost and this machine joined again as a new node): nobody will read them, so they are removed.
"""

import logging
import time

from executors import engines
from executors.spec import LABEL

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


def reap(dead_nodes: set[str] = frozenset()) -> list[str]:
    """Removes orphaned sandboxes, whichever engine started them, and what they left behind.
    Returns their job ids."""
    now = time.time()
    doomed = _remove_where(lambda labels: orphaned(labels, now, dead_nodes))
    if doomed:
        log.info("reaped %d sandboxes", len(doomed))
    return doomed


def remove_all() -> list[str]:
    """Removes every sandbox on this machine: only where nothing may be running yet (a machine
    that joins the cluster again, before its `ray start`). Returns their job ids."""
    return _remove_where(lambda labels: True)


def _remove_where(doomed) -> list[str]:
    """Removes the sandboxes whose labels `doomed` picks, through their engines, and what the
    engines' sandboxes left behind; their job ids."""
    removed = []
    for engine in engines.ALL:
        for key, labels in engine.sandboxes().items():
            if doomed(labels):
                engine.remove_listed(key, labels)
                removed.append(labels.get(LABEL, key))
        engine.tidy()
    return removed


def dead_ray_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n["Alive"]}
