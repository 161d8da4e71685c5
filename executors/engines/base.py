"""What starts and ends sandboxes. The run loop (executors/sandbox.py) drives a sandbox through
this interface, chosen once per sandbox (`engine_for`), and never asks which engine it is."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import IO, Protocol


@dataclass(frozen=True)
class Exit:
    """How a sandbox's runner ended, as its engine tells it."""
    code: int
    oom_killed: bool = False  #: the runtime says the kernel killed it for memory


class Stdio(Protocol):
    """A started sandbox's streams and process-like state (what the run loop uses of a Popen)."""
    stdin: IO[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float) -> int: ...


class Engine(ABC):
    """One way of running sandboxes on a node. `name` is a sandbox's current name (a pooled one
    takes its job's); `spec.name` the name it started with."""

    @abstractmethod
    def start(self, spec) -> Stdio:
        """Starts a sandbox whose runner waits for its input on stdin. SandboxError: it could not."""

    def up(self, spec, stdio: Stdio) -> bool:
        """Whether it has been created (a pool hands out only those)."""
        return True

    @abstractmethod
    def rename(self, spec, stdio: Stdio, name: str, new: str) -> None:
        """Gives a pre-started sandbox its job's name. SandboxGone: it is gone (no script reached it)."""

    @abstractmethod
    def kill(self, name: str) -> None:
        """Kills its runner (at its time limit); done, or it had ended: no error either way."""

    @abstractmethod
    def exit(self, spec, stdio: Stdio, name: str) -> Exit | None:
        """How its runner ended; None if it never started or was removed meanwhile (stopped)."""

    @abstractmethod
    def wait_exit(self, stdio: Stdio, name: str, timeout: float) -> None:
        """Waits up to `timeout` for it to end by itself."""

    def detach(self, stdio: Stdio) -> None:
        """Lets go of its streams once its run is over (it stays until removed)."""

    @abstractmethod
    def remove(self, spec, stdio: Stdio, name: str) -> None:
        """Ends it if it runs and removes all of it (container or bundle, network)."""

    @abstractmethod
    def remove_by_name(self, name: str) -> bool:
        """Ends and removes a sandbox of this engine by name; False if it has none of that name."""

    @abstractmethod
    def sandboxes(self) -> dict[str, dict[str, str]]:
        """This node's sandboxes of this engine: key → labels (job, deadline, node). A key names
        only that sandbox, never one started later under the same name."""

    @abstractmethod
    def remove_listed(self, key: str, labels: dict[str, str]) -> None:
        """Removes a sandbox `sandboxes()` listed, and not another that took its name since (the
        reaper's list is old by then: a lost job's next run may have started under its name)."""

    def cgroup(self, spec, stdio: Stdio) -> str | None:
        """Its cgroup's path under each hierarchy's root (executors/usage.py), if known."""
        return None

    def tidy(self) -> None:
        """Removes what sandboxes of this engine left behind besides themselves."""
