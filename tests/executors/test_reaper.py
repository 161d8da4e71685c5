"""Which sandboxes the reaper removes, and that it removes only those (real engines)."""

import uuid
from dataclasses import replace

import pytest

from cluster.agent_types import MONO_6
from executors.engines import engine_for
from executors.reaper import expired, orphaned
from executors.sandbox import Sandbox, remove_sandbox
from executors.spec import LABEL, Limits, SandboxSpec
from tests.conftest import sandbox_containers


def test_past_deadline_is_expired():
    assert expired({f"{LABEL}.deadline": "100"}, now=101)
    assert not expired({f"{LABEL}.deadline": "100"}, now=99)


def test_missing_or_garbled_deadline_is_expired():
    assert expired({LABEL: "job"}, now=0.0 + 1)
    assert expired({f"{LABEL}.deadline": "soon"}, now=1)


def test_a_sandbox_of_a_dead_node_is_orphaned_even_before_its_deadline():
    labels = {f"{LABEL}.deadline": "100", f"{LABEL}.node": "n1"}
    assert orphaned(labels, now=50, dead_nodes={"n1"})
    assert not orphaned(labels, now=50, dead_nodes={"n2"})
    assert not orphaned({f"{LABEL}.deadline": "100"}, now=50, dead_nodes=set())  # no node label: the deadline decides


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["docker", "runsc"])
def test_an_orphan_listed_then_replaced_under_its_name_is_not_the_one_removed(engine):
    # the reaper lists a lost node's sandbox; meanwhile the job's next run removes it and starts its
    # own under the same name. Removed by name, that new sandbox went: the job REJECTED ("could not
    # be started") or its script killed
    lost = SandboxSpec(job_id=f"reap-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command, engine=engine,
                       limits=Limits(wall_time_s=30), node_id="lost-node")
    Sandbox(lost)
    listed = {k: v for k, v in engine_for(lost).sandboxes().items() if v.get(LABEL) == lost.job_id}
    assert len(listed) == 1
    remove_sandbox(lost.name)
    again = Sandbox(replace(lost, node_id="live-node"))
    try:
        for key, labels in listed.items():
            engine_for(lost).remove_listed(key, labels)
        assert again.run('Console.WriteLine("still mine");').stdout == "still mine\n"
    finally:
        remove_sandbox(lost.name)
    assert lost.name not in sandbox_containers()
