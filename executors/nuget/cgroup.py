"""A cgroup of its own for one restore's process: a CPU quota, a memory limit (no swap) and a
process limit, so that what a hostile feed makes it do (download, decompress, hash) cannot take
the node's CPUs or memory from its sandboxes.

It is created under the cgroup of the process that starts the restore (the Ray worker), so every
limit that process is under holds as well. cgroup v1 (one folder per controller) and v2 (where
the worker's cgroup can delegate its controllers). Where neither works (no cgroup file system, no
permission) the restore runs without one: its deadline still holds, and `fallback_rlimits` caps
its address space instead.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
PREFIX = "dotnet-scripts-restore-"
PERIOD_US = 100_000
STALE_S = 3600  #: an empty restore cgroup this old was left by a worker killed mid-restore
_V1 = ("cpu", "memory", "pids")


def _own(controller: str | None) -> Path | None:
    """Where this process's cgroup is, for a v1 controller (None: the v2 hierarchy)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or (controller in controllers.split(",")):
            base = ROOT if controller is None else ROOT / controller
            return base / path.lstrip("/") if base.is_dir() else None
    return None


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class Cgroup:
    def __init__(self, name: str, cpus: float, memory_bytes: int, pids: int = 64):
        self.name, self.cpus, self.memory_bytes, self.pids = name, cpus, memory_bytes, pids
        self.dirs: list[Path] = []
        self.v2 = (ROOT / "cgroup.controllers").exists()

    def create(self) -> bool:
        """Makes the cgroup and sets its limits; False (and nothing left) if it cannot."""
        try:
            if self.v2:
                self._create_v2()
            else:
                self._create_v1()
            return True
        except OSError as e:
            log.warning("restores run without a cgroup of their own: %s", e)
            self.remove()
            return False

    def _mkdir(self, parent: Path) -> Path:
        _prune(parent)
        path = parent / f"{PREFIX}{self.name}"
        path.mkdir()
        self.dirs.append(path)
        return path

    def _create_v1(self) -> None:
        quota = max(1000, int(self.cpus * PERIOD_US))
        for controller in _V1:
            parent = _own(controller)
            if parent is None:
                raise OSError(f"no cgroup v1 {controller} hierarchy")
            path = self._mkdir(parent)
            if controller == "cpu":
                _write(path / "cpu.cfs_period_us", str(PERIOD_US))
                _write(path / "cpu.cfs_quota_us", str(quota))
            elif controller == "memory":
                _write(path / "memory.limit_in_bytes", str(self.memory_bytes))
                if (path / "memory.memsw.limit_in_bytes").exists():  # with swap accounting: no swap either
                    _write(path / "memory.memsw.limit_in_bytes", str(self.memory_bytes))
            else:
                _write(path / "pids.max", str(self.pids))

    def _create_v2(self) -> None:
        parent = _own(None)
        if parent is None:
            raise OSError("no cgroup v2 hierarchy")
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        missing = [c for c in _V1 if c not in enabled]
        if missing:  # EBUSY where the worker's cgroup holds processes itself: then none
            _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in missing))
        path = self._mkdir(parent)
        _write(path / "cpu.max", f"{max(1000, int(self.cpus * PERIOD_US))} {PERIOD_US}")
        _write(path / "memory.max", str(self.memory_bytes))
        if (path / "memory.swap.max").exists():
            _write(path / "memory.swap.max", "0")
        _write(path / "pids.max", str(self.pids))

    def add(self, pid: int) -> None:
        for path in self.dirs:
            _write(path / "cgroup.procs", str(pid))

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the cgroup for its memory limit."""
        for path in self.dirs:
            for name in ("memory.events", "memory.oom_control"):  # v2, v1
                try:
                    fields = dict(line.split()[:2] for line in (path / name).read_text().splitlines() if " " in line)
                except OSError:
                    continue
                if int(fields.get("oom_kill", "0")) > 0:
                    return True
        return False

    def remove(self) -> None:
        """Kills what is left in it (the restore's process is ours) and removes it."""
        for path in self.dirs:
            try:
                for pid in (path / "cgroup.procs").read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        for path in self.dirs:
            for _ in range(50):  # a killed process leaves its cgroup a moment after its exit
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                log.warning("could not remove the restore cgroup %s", path)
        self.dirs = []


def _prune(parent: Path) -> None:
    """Removes empty restore cgroups left behind by a worker that died mid-restore."""
    now = time.time()
    for path in parent.glob(f"{PREFIX}*"):
        try:
            if now - path.stat().st_mtime > STALE_S:
                path.rmdir()  # only an empty one goes
        except OSError:
            pass


def fallback_rlimits(pid: int, memory_bytes: int) -> None:
    """Without a cgroup: the process's address space is capped instead (coarser: it counts
    mappings, not memory used)."""
    try:
        resource.prlimit(pid, resource.RLIMIT_AS, (memory_bytes + (256 << 20),) * 2)
    except (OSError, ValueError) as e:
        log.warning("cannot cap the restore's memory: %s", e)
