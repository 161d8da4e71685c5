"""Which sandboxes the reaper removes (pure part)."""

from executors.reaper import expired, orphaned
from executors.spec import LABEL


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
