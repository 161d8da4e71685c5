"""ray-cluster.yaml passes Ray's own config validation and offers every catalogued agent type."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.agent_types import CATALOGUE
from cluster.node import API_RESOURCE, SERVE_TUNING

CONFIG = Path(__file__).resolve().parents[2] / "ray-cluster.yaml"


def test_ray_validates_the_cluster_config():
    cfg = prepare_config(yaml.safe_load(CONFIG.read_text()))
    validate_config(cfg)  # raises on an invalid config
    types = cfg["available_node_types"]
    for name in CATALOGUE:
        assert types[name]["resources"].get(name, 0) >= 1, name
    assert cfg["head_node_type"] == "head"
    assert types["head"]["resources"] == {API_RESOURCE: 100}  # the API's replicas, and no sandboxes


def test_the_cluster_has_gcs_fault_tolerance_and_installs_the_sandbox():
    cfg = yaml.safe_load(CONFIG.read_text())
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "RAY_REDIS_ADDRESS=" in head_start and "--autoscaling-config" in head_start
    assert "REDIS_URL=" in head_start  # job events over the same Redis
    assert any("scripts/setup.sh" in c for c in cfg["setup_commands"])  # Docker, gVisor, venv, Mono image
    for name in CATALOGUE:
        assert 0 <= cfg["available_node_types"][name]["min_workers"] <= cfg["available_node_types"][name]["max_workers"]


def test_every_node_s_ray_starts_with_the_service_s_serve_knobs():
    cfg = yaml.safe_load(CONFIG.read_text())
    for commands in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        for key, value in SERVE_TUNING.items():
            assert f"{key}={value} " in start, (key, start)
