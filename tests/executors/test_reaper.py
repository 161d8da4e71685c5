"""Which sandboxes the reaper removes (pure part)."""

from executors.reaper import expired
from executors.sandbox import LABEL


def test_past_deadline_is_expired():
    assert expired({f"{LABEL}.deadline": "100"}, now=101)
    assert not expired({f"{LABEL}.deadline": "100"}, now=99)


def test_missing_or_garbled_deadline_is_expired():
    assert expired({LABEL: "job"}, now=0.0 + 1)
    assert expired({f"{LABEL}.deadline": "soon"}, now=1)
