"""Outcome → result, and how many jobs the dispatcher hands to Ray (pure)."""

from datetime import datetime, timedelta, timezone

from executors.spec import Outcome
from serve_app.dispatch import AHEAD, result_from_outcome, jobs_to_hand_out
from serve_app.models import FinishedWith

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def outcome(**kw) -> Outcome:
    base = dict(exit_code=0, stdout="o", stderr="e", stdout_truncated=False, stderr_truncated=False,
                timed_out=False, out_of_memory=False, started_at=T0, finished_at=T0 + timedelta(seconds=1.5))
    base.update(kw)
    return Outcome(**base)


def test_exit_code_zero_succeeds():
    r = result_from_outcome(outcome())
    assert r.finished_with == FinishedWith.SUCCEEDED
    assert (r.stdout, r.stderr, r.exit_code, r.duration_ms) == ("o", "e", 0, 1500)


def test_non_zero_exit_fails():
    assert result_from_outcome(outcome(exit_code=3)).finished_with == FinishedWith.FAILED


def test_out_of_memory_fails_and_is_marked():
    r = result_from_outcome(outcome(exit_code=137, out_of_memory=True))
    assert r.finished_with == FinishedWith.FAILED and r.out_of_memory
    assert r.limit_exceeded == "MEMORY" and r.signal == 9


def test_timeout_wins_over_everything():
    r = result_from_outcome(outcome(exit_code=None, timed_out=True, out_of_memory=True))
    assert r.finished_with == FinishedWith.TIME_LIMIT_EXCEEDED
    assert r.limit_exceeded == "WALL_TIME" and r.signal is None


def test_truncation_flags_are_kept():
    r = result_from_outcome(outcome(stdout_truncated=True))
    assert r.stdout_truncated and not r.stderr_truncated
    assert r.finished_with == FinishedWith.SUCCEEDED and r.limit_exceeded == "OUTPUT"


def test_a_clean_run_hit_no_limit():
    r = result_from_outcome(outcome(exit_code=3))
    assert r.limit_exceeded is None and r.signal is None


def test_the_dispatcher_hands_ray_the_free_slots_and_a_few_more():
    assert jobs_to_hand_out(slots=4, in_flight=0) == 4 + AHEAD
    assert jobs_to_hand_out(slots=4, in_flight=4 + AHEAD) == 0
    assert jobs_to_hand_out(slots=0, in_flight=0) == AHEAD  # no node yet: the autoscaler still sees demand
    assert jobs_to_hand_out(slots=2, in_flight=9) == 0
