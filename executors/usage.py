"""What a sandbox's run cost, read from its cgroup on the node (both engines: Docker's
`docker/<id>`, runsc alone's `dotnet-scripts/<name>`): CPU time and peak memory.

A pooled sandbox lived before its job took it (its runner started, maybe warmed up): its CPU is
counted from the moment the job takes it, and its memory peak is reset then where the kernel
allows it (cgroup v1); on cgroup v2 the peak is the sandbox's whole life's.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


class Meter:
    """Reads the CPU time and the memory peak of the cgroup at `path` (relative to each
    hierarchy's root; None: unknown), from the cgroup's start or from `start()`; a reading it
    cannot make is None, never an error."""

    def __init__(self, path: str | None):
        self.v2 = (ROOT / "cgroup.controllers").exists()
        rel = (path or "").strip("/")
        self.known = bool(rel)
        self.cpu = ROOT / rel if self.v2 else ROOT / "cpuacct" / rel
        self.memory = ROOT / rel if self.v2 else ROOT / "memory" / rel
        self.cpu_start: int | None = 0

    def start(self) -> None:
        if not self.known:
            return
        self.cpu_start = self._cpu_ns()
        if not self.v2:
            try:
                (self.memory / "memory.max_usage_in_bytes").write_text("0")  # the peak from now on
            except OSError:
                pass

    def cpu_ms(self) -> int | None:
        now = self._cpu_ns() if self.known else None
        if now is None or self.cpu_start is None:
            return None
        return max(0, now - self.cpu_start) // 1_000_000

    def peak_memory_kb(self) -> int | None:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        if not self.known:
            return None
        try:
            return int((self.memory / name).read_text()) // 1024
        except (OSError, ValueError):
            return None

    def _cpu_ns(self) -> int | None:
        try:
            if self.v2:
                stat = dict(line.split() for line in (self.cpu / "cpu.stat").read_text().splitlines())
                return int(stat["usage_usec"]) * 1000
            return int((self.cpu / "cpuacct.usage").read_text())
        except (OSError, ValueError, KeyError):
            return None
