"""One script, one fresh sandbox: the run loop on a node. A sandbox is started by an engine
(Docker's, executors/engines/docker.py, or runsc alone, executors/engines/runsc.py), gets the
script on stdin, never on a command line, and is always removed afterwards."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from executors import engines
from executors.engines.base import Exit
from executors.protocol import (ARTIFACT_MAGIC, COMPILED_MAGIC, END_FRAME, EXIT_FRAME, WARMUP_MARKER, CappedReader,
                                artifact_frame, compile_report, references_frame)
from executors.usage import Meter
from executors.spec import CONTAINER_PREFIX, EXIT_GRACE_S, KILLED, Outcome, SandboxError, SandboxSpec

log = logging.getLogger(__name__)


def remove_sandbox(name: str) -> None:
    """Kills and removes a sandbox by name, whichever engine started it."""
    any(e.remove_by_name(name) for e in engines.ALL)


def remove_job_sandbox(job_id: str) -> None:
    """Kills and removes a job's sandbox (pooled ones carry the job's name once taken)."""
    remove_sandbox(CONTAINER_PREFIX + job_id)


class Sandbox:
    """A started sandbox whose runner waits for its script on stdin. It runs exactly one script;
    started ahead of time it is what the warm pool holds (executors/pool/actor.py)."""

    def __init__(self, spec: SandboxSpec):
        self.spec, self.name = spec, spec.name
        self.created = time.monotonic()
        self.engine = engines.engine_for(spec)
        self.proc = self.engine.start(spec)
        self.changed = threading.Event()  #: a reader saw an end frame, or its stream's end
        frames = spec.end_frames  # only then is a frame at the end not the script's output
        self.out = CappedReader(self.proc.stdout, spec.limits.output_bytes, EXIT_FRAME if frames else None, self.changed)
        self.err = CappedReader(self.proc.stderr, spec.limits.output_bytes, END_FRAME if frames else None, self.changed)
        self.out.start()
        self.err.start()
        self.artifact: bytes | None = None
        self.warmed = False
        self.ended_by_frames = False  #: the outcome came from the runner's end frames, not its exit
        self.folder: Path | None = None  #: the pool's package folder it binds at /nuget; removed with it

    def warm_up(self) -> None:
        """Tells a waiting runner (csrun) to warm its compiler up before its script arrives; only
        while nobody can have given it a script yet (the pool holds it idle)."""
        if self.warmed:
            return
        self.warmed = True
        try:
            self.proc.stdin.write(WARMUP_MARKER)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it is gone: the job that takes it will see so

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_started(self, timeout: float = 60.0) -> bool:
        """Waits until it has been created (for the pool, off any job's path): a job taking a
        sandbox that runsc has not created yet would have to start a cold one instead."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if self.engine.up(self.spec, self.proc):
                return True
            time.sleep(0.05)
        return False

    def run(self, script: str, name: str | None = None, remove: bool = True, artifact: bytes | None = None,
            keep_artifact: bool = False, references: tuple[str, ...] | None = None, head: bytes = b"") -> Outcome:
        """Gives it `name` (a job's), hands it the script and waits for the end. SandboxGone only
        before the script reached it. With `artifact` the runner runs that compiled script instead
        of compiling; with `keep_artifact` the one it compiles is kept in `self.artifact`
        (`spec.artifacts`). `references`: the job's package assemblies, for a runner with
        `spec.references_on_stdin`. `head`: what its runner reads after those and before the script."""
        meter = Meter(self.engine.cgroup(self.spec, self.proc))
        try:
            if name and name != self.name:
                self.engine.rename(self.spec, self.proc, self.name, name)
                self.name = name
                meter.start()  # pre-started: its cost counts from now (a cold one's from its start)
            started = datetime.now(timezone.utc)
            self.out.expect = ((COMPILED_MAGIC,) if self.spec.report else ()) + (
                (ARTIFACT_MAGIC,) if keep_artifact and artifact is None else ())
            data = b"".join((references_frame(references) if references else b"",
                             artifact_frame(artifact) if artifact is not None else b"", head, script.encode()))
            kills = oom_kills()
            threading.Thread(target=_feed, args=(self.proc, data), daemon=True).start()
            timed_out, deadline = False, time.monotonic() + self.spec.limits.wall_time_s
            while True:  # until both streams end, or both end frames came last (the runner is done)
                self.changed.clear()
                if (self.out.eof and self.err.eof) or (self.out.ended and self.err.ended):
                    break
                if not self.changed.wait(deadline - time.monotonic()) and time.monotonic() >= deadline:
                    timed_out = True
                    break
            used = (meter.cpu_ms(), meter.peak_memory_kb())  # before its cgroup goes with its end
            if timed_out:
                self.engine.kill(self.name)
            self.ended_by_frames = not timed_out and not (self.out.eof and self.err.eof)
            if not self.ended_by_frames:
                self.proc.wait(timeout=30)
                self.out.join(10)
                self.err.join(10)
            finished = datetime.now(timezone.utc)
            self.artifact = self.out.frame
            told = dict(compiled=compile_report(self.out.frames.get(COMPILED_MAGIC)), cpu_ms=used[0],
                        memory_peak_kb=used[1])
            if self.ended_by_frames:
                return Outcome(
                    exit_code=int(self.out.ended.group(1)) & 0xFF, stdout=self.out.text(), stderr=self.err.text(),
                    stdout_truncated=self.out.truncated, stderr_truncated=self.err.truncated,
                    timed_out=False, out_of_memory=False, started_at=started, finished_at=finished, **told,
                )
            ended = self.engine.exit(self.spec, self.proc, self.name)
            if ended is None:  # our words only: what the sandbox wrote may be the script's
                raise SandboxError(f"sandbox ended without a state (exit {self.proc.returncode}): "
                                   "it did not start, or it was removed")
            return Outcome(
                exit_code=None if timed_out else ended.code,
                stdout=self.out.text(), stderr=self.err.text(),
                stdout_truncated=self.out.truncated, stderr_truncated=self.err.truncated,
                timed_out=timed_out, out_of_memory=killed_for_memory(ended, timed_out, kills, oom_kills()),
                started_at=started, finished_at=finished, **told,
            )
        finally:
            if remove:
                self.remove()
            else:
                self.engine.detach(self.proc)  # it lives on until removed

    def remove(self) -> None:
        """Ends it and removes all of it; a runner that sent its end frames may first end by itself."""
        if self.ended_by_frames and EXIT_GRACE_S > 0:
            self.engine.wait_exit(self.proc, self.name, EXIT_GRACE_S)
        self.engine.remove(self.spec, self.proc, self.name)


def run_sandbox(spec: SandboxSpec, script: str, head: bytes = b"") -> Outcome:
    """Runs `script` (after `head`: its runner's input ahead of it, serve_app/plan.py) in a fresh
    container and returns how it ended. Raises SandboxError."""
    return Sandbox(spec).run(script, head=head)


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)
    except (BrokenPipeError, OSError):
        pass  # the script exited without reading everything: fine
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


def oom_kills() -> int | None:
    """The host kernel's count of OOM kills so far, or None where it does not keep one."""
    try:
        with open("/proc/vmstat") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("oom_kill ")), None)
    except (OSError, ValueError):
        return None


def killed_for_memory(ended: Exit, timed_out: bool, kills_before: int | None, kills_after: int | None) -> bool:
    """Docker marks OOMKilled from the runtime's OOM event, which runsc's shim drops when the
    container's cgroup is already gone (about 1 run in 25 under load). So a runner killed by
    SIGKILL that we did not kill counts too if the kernel OOM-killed something meanwhile. Only a
    script killing its own runner while another sandbox on the node is OOM-killed is mislabelled."""
    if ended.oom_killed:
        return True
    return (not timed_out and ended.code == KILLED
            and kills_before is not None and kills_after is not None and kills_after > kills_before)
