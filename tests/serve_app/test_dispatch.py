"""Outcome → result, and how many jobs the dispatcher hands to Ray (pure)."""

from datetime import datetime, timedelta, timezone

from executors.spec import Compiled, Outcome
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


def test_the_runner_s_compile_report_gives_the_phase_diagnostics_and_compile_time():
    failed = result_from_outcome(outcome(exit_code=1, compiled=Compiled(
        "failed", 320, "script.csx(1,9): error CS0029: Cannot implicitly convert type `string' to `int'\n")))
    assert failed.phase == "COMPILE" and failed.usage.compile_ms == 320 and failed.usage.run_ms == 1500
    assert [(d.severity, d.code, d.line, d.column) for d in failed.diagnostics] == [("error", "CS0029", 1, 9)]
    ran = result_from_outcome(outcome(exit_code=1, compiled=Compiled("cached", 0, "")))
    assert (ran.phase, ran.diagnostics, ran.usage.compile_ms) == ("RUN", [], 0)


def test_without_a_report_there_is_no_phase_and_the_result_reads_as_before():
    r = result_from_outcome(outcome())
    assert r.phase is None and r.diagnostics is None and r.usage.compile_ms is None
    shown = r.model_dump(by_alias=True, mode="json")
    assert "phase" not in shown and "diagnostics" not in shown and shown["usage"]["runMs"] == 1500
