"""ray-cluster.yaml passes Ray's own config validation and offers every catalogued agent type."""

import ast
import importlib
import inspect
import re
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


def test_the_python_the_nodes_run_calls_what_the_code_has():
    # a renamed function or parameter broke every worker's start without any other test noticing
    cfg = yaml.safe_load(CONFIG.read_text())
    commands = [c for key, value in cfg.items() if key.endswith("_commands") for c in value]
    snippets = [m.group(1) for c in commands for m in re.finditer(r"python -c '([^']*)'", c)]
    assert snippets
    for code in snippets:
        names = {}
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                names |= {a.asname or a.name: getattr(module, a.name) for a in node.names}
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
                args = [ast.literal_eval(a) for a in node.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
                inspect.signature(names[node.func.id]).bind(*args, **kwargs)
