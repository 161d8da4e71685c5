"""The cluster of ray-cluster.yaml, autoscaled on this one machine by Ray's `fake_multinode`
provider: the same node types (one per agent type, its slots as the custom resource, min/max
workers), with nodes that are extra Ray processes here instead of cloud instances. For trying
the autoscaling and for its test; `ray up ray-cluster.yaml` is the real thing.

    python -m cluster.fake_autoscaling > fake.yaml
    RAY_FAKE_CLUSTER=1 ray start --head --port 6379 --resources '{}' --autoscaling-config fake.yaml
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parent.parent / "ray-cluster.yaml"
HEAD = "ray.head.default"  #: the provider's name for the head's node type


def fake_config(cloud: dict, gcs_address: str = "", idle_timeout_minutes: float | None = None,
                min_workers: int | None = None) -> dict:
    """ray-cluster.yaml turned into a `fake_multinode` config: the node types and their limits are
    kept; what only a cloud needs (instances, setup and start commands, file mounts) is dropped."""
    cfg = copy.deepcopy(cloud)
    provider = {"type": "fake_multinode", "use_node_id_as_ip": True,
                "disable_node_updaters": True, "disable_launch_config_check": True}
    if gcs_address:
        provider["gcs_address"] = gcs_address
    types = {}
    for name, node_type in cfg["available_node_types"].items():
        kept = {k: node_type[k] for k in ("resources", "min_workers", "max_workers") if k in node_type}
        kept["node_config"] = {}
        if min_workers is not None and name != cfg["head_node_type"]:
            kept["min_workers"] = min_workers
        types[HEAD if name == cfg["head_node_type"] else name] = kept
    types[HEAD].update(min_workers=0, max_workers=0)
    out = {
        "cluster_name": cfg["cluster_name"] + "-fake",
        "max_workers": cfg["max_workers"],
        "upscaling_speed": cfg.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": cfg.get("idle_timeout_minutes", 5) if idle_timeout_minutes is None else idle_timeout_minutes,
        "provider": provider,
        "auth": {"ssh_user": "ray"},
        "available_node_types": types,
        "head_node_type": HEAD,
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        out[key] = []
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.fake_autoscaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gcs-address", default="", help="the head's GCS address when not on port 6379")
    p.add_argument("--idle-timeout-minutes", type=float, default=None)
    p.add_argument("--min-workers", type=int, default=None, help="of every worker node type")
    a = p.parse_args(argv)
    cfg = fake_config(yaml.safe_load(CONFIG.read_text()), a.gcs_address, a.idle_timeout_minutes, a.min_workers)
    yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
