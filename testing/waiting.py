"""Waiting for something to happen: poll its real condition, never sleep a guessed time."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def until(condition: Callable[[], T], timeout: float, what: str | Callable[[], str] = "the condition held",
          interval: float = 0.05) -> T:
    """Calls `condition` every `interval` seconds until it returns something truthy, and returns
    that value. It is tried once more at the deadline; after `timeout` seconds without, the test
    fails (AssertionError) with `what`: what was waited for, or a function that says it then
    (e.g. with the state found). What `condition` raises goes through at once.

    `interval`: longer for a condition that is costly to ask (a `docker ps`, an HTTP request)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"not within {timeout:g} s: {what() if callable(what) else what}")
        time.sleep(min(interval, left))
