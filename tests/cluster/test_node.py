"""Agent-type offers of a node (pure)."""

import json

import pytest

from cluster.node import API_RESOURCE, node_resources, parse_offer, ray_start_args


def test_parse_offer():
    assert parse_offer("linux-amd64-mono-6=4") == ("linux-amd64-mono-6", 4)
    assert parse_offer("linux-amd64-mono-6") == ("linux-amd64-mono-6", 1)
    with pytest.raises(ValueError, match="known"):
        parse_offer("windows-x86-1=2")


def test_slots_become_the_custom_resource_count():
    assert node_resources({"linux-amd64-mono-6": 4, "linux-amd64-dotnet-7": 0}) == {"linux-amd64-mono-6": 4.0}


def test_ray_start_args():
    head = ray_start_args("head", {"linux-amd64-mono-6": 2})
    assert "--head" in head
    assert json.loads(head[head.index("--resources") + 1]) == {"linux-amd64-mono-6": 2.0, API_RESOURCE: 100.0}
    worker = ray_start_args("worker", {"linux-amd64-mono-6": 2}, address="10.0.0.1:6379")
    assert "--address=10.0.0.1:6379" in worker and "--head" not in worker
    assert API_RESOURCE not in worker[worker.index("--resources") + 1]  # the API stays on the head
