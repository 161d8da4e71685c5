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

import requests
from docker.errors import DockerException

from executors.engines import docker as docker_engine, runsc
from executors.network import NetworkError, create_network, remove_network
from executors.protocol import (
    END_FRAME, EXIT_FRAME, WARMUP_MARKER, CappedReader, artifact_frame, references_frame,
)
from executors.spec import (
    CONTAINER_PREFIX, EXIT_GRACE_S, KILLED, Outcome, SandboxError, SandboxGone, SandboxSpec, labels, via_runsc,
)

log = logging.getLogger(__name__)


def remove_container(name: str) -> None:
    """Kills and removes a sandbox by name, whether Docker or runsc alone started it."""
    if not runsc.remove(name):
        docker_engine.remove(name)


def stop_job_sandbox(job_id: str) -> None:
    """Kills and removes a job's container (pooled ones carry the job's name once taken)."""
    remove_container(CONTAINER_PREFIX + job_id)


class Sandbox:
    """A started container whose runner waits for its script on stdin. It runs exactly one script;
    started ahead of time it is what the warm pool holds (executors/pool.py)."""

    def __init__(self, spec: SandboxSpec):
        self.spec, self.name = spec, spec.name
        self.egress = ""  #: its own Docker network, for network "egress"; removed with it
        self.created = time.monotonic()
        self.runsc = via_runsc(spec)
        if self.runsc:
            try:
                args = runsc.run_args(spec, runsc.write_bundle(spec, labels(spec)))
            except (OSError, subprocess.CalledProcessError) as e:
                raise SandboxError(f"sandbox could not be prepared: {e}") from None
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            try:
                if spec.network == "egress":
                    self.egress = create_network(docker_engine.engine(), spec.egress_allow)
                self.proc = docker_engine.Attached(spec, docker_engine.container_config(spec, gvisor_netns=docker_engine.gvisor_makes_netns(),
                                                             egress_network=self.egress))
            except (SandboxError, NetworkError) as e:
                if self.egress:
                    remove_network(docker_engine.engine(), self.egress)
                raise SandboxError(str(e)) from None
        self.changed = threading.Event()  #: a reader saw an end frame, or its stream's end
        frames = spec.end_frames  # only then is a frame at the end not the script's output
        self.out = CappedReader(self.proc.stdout, spec.limits.output_bytes, EXIT_FRAME if frames else None, self.changed)
        self.err = CappedReader(self.proc.stderr, spec.limits.output_bytes, END_FRAME if frames else None, self.changed)
        self.out.start()
        self.err.start()
        self.artifact: bytes | None = None
        self.warmed = False
        self.told = False  #: the outcome came from the runner's end frames, not the container's exit
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
        """Waits until its container runs (for the pool, off any job's path): a job renaming a
        sandbox that runsc has not created yet would have to start a cold one instead. Docker's
        was started before the Sandbox was made."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if not self.runsc or runsc.started(self.spec.name):
                return True
            time.sleep(0.05)
        return False

    def run(self, script: str, name: str | None = None, remove: bool = True, artifact: bytes | None = None,
            keep_artifact: bool = False, references: tuple[str, ...] | None = None) -> Outcome:
        """Renames the container to `name` (a job's), hands it the script and waits for the end.
        With `artifact` the runner runs that compiled script instead of compiling; with
        `keep_artifact` the one it compiles is kept in `self.artifact` (`spec.artifacts`).
        `references`: the job's package assemblies, for a runner with `spec.references_on_stdin`."""
        try:
            if name and name != self.name:
                try:
                    if self.runsc and not self.alive():
                        raise SandboxGone("the pre-started sandbox is gone")
                    runsc.take(self.spec.name, name) if self.runsc else docker_engine.engine().rename(self.name, name)
                except (DockerException, OSError) as e:  # requests' errors (a timeout) are OSErrors
                    remove_container(name)  # a rename whose answer timed out may have been done
                    raise SandboxGone(f"the pre-started sandbox is gone: {e}") from None
                self.name = name
            started = datetime.now(timezone.utc)
            self.out.expect_frame = keep_artifact and artifact is None
            data = b"".join((references_frame(references) if references else b"",
                             artifact_frame(artifact) if artifact is not None else b"", script.encode()))
            kills = oom_kills()
            threading.Thread(target=_feed, args=(self.proc, data), daemon=True).start()
            timed_out, deadline = False, time.monotonic() + self.spec.limits.wall_time_s
            while True:  # until both streams end, or both end frames came last (the runner is done)
                self.changed.clear()
                if (self.out.eof and self.err.eof) or (self.out.ended and self.err.ended):
                    break
                if not self.changed.wait(deadline - time.monotonic()) and time.monotonic() >= deadline:
                    timed_out = True
                    try:
                        runsc.kill(self.name) if self.runsc else docker_engine.engine().kill(self.name)
                    except (DockerException, requests.RequestException, subprocess.SubprocessError):
                        pass  # it ended meanwhile, or the engine is slow: it is removed afterwards anyway
                    break
            self.told = not timed_out and not (self.out.eof and self.err.eof)  # by the runner's end frames
            if not self.told:
                self.proc.wait(timeout=30)
                self.out.join(10)
                self.err.join(10)
            finished = datetime.now(timezone.utc)
            self.artifact = self.out.frame
            if self.told:
                return Outcome(
                    exit_code=int(self.out.ended.group(1)) & 0xFF, stdout=self.out.text(), stderr=self.err.text(),
                    stdout_truncated=self.out.truncated, stderr_truncated=self.err.truncated,
                    timed_out=False, out_of_memory=False, started_at=started, finished_at=finished,
                )
            state = self._runsc_state() if self.runsc else docker_engine.state(self.name)
            if state is None:  # our words only: what the sandbox wrote may be the script's
                raise SandboxError(f"sandbox ended without a state (exit {self.proc.returncode}): "
                                   "it did not start, or it was removed")
            return Outcome(
                exit_code=None if timed_out else state.get("ExitCode", self.proc.returncode),
                stdout=self.out.text(), stderr=self.err.text(),
                stdout_truncated=self.out.truncated, stderr_truncated=self.err.truncated,
                timed_out=timed_out, out_of_memory=killed_for_memory(state, timed_out, kills, oom_kills()),
                started_at=started, finished_at=finished,
            )
        finally:
            if remove:
                self.discard()
            elif not self.runsc and self.proc.poll() is None:
                self.proc.kill()  # detached: it lives on until removed; `runsc run` must see it end

    def _runsc_state(self) -> dict | None:
        """What Docker's inspect would say, from `runsc run`'s exit: None if it was removed meanwhile
        (the job was stopped) or runsc could not start it, as its own log says: a script exiting 128
        after printing runsc's words gets its own outcome."""
        code = self.proc.returncode
        if not (runsc.BUNDLES_DIR / self.spec.name).is_dir():
            return None
        if code == runsc.START_FAILED and (failure := runsc.start_failure(self.spec.name)):
            log.warning("runsc could not start sandbox %s: %s", self.spec.name, failure)
            return None
        if code != 0 and runsc.crashed(self.spec.name):  # the script was killed with its sandbox (by the OOM killer?)
            code = KILLED
        return {"ExitCode": code, "OOMKilled": False}  # it ran: a 125 is the script's

    def discard(self) -> None:
        if self.told and EXIT_GRACE_S > 0:
            self._wait_exit(EXIT_GRACE_S)
        if self.runsc:  # its `runsc run` destroys it once it ends: only if that fails is more needed
            if self.alive():
                runsc.kill(self.spec.name)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                runsc.remove(self.name)
            runsc.release(self.name, self.spec.name)
            return
        if self.proc.poll() is None:
            self.proc.kill()
        remove_container(self.name)
        if self.egress:
            remove_network(docker_engine.engine(), self.egress)

    def _wait_exit(self, timeout: float) -> None:
        try:
            if self.runsc:
                self.proc.wait(timeout)
            else:  # a pooled one has been detached from
                docker_engine.engine().wait(self.name, timeout=timeout)
        except (subprocess.TimeoutExpired, DockerException, requests.RequestException):
            pass  # still running: killed now


def run_sandbox(spec: SandboxSpec, script: str) -> Outcome:
    """Runs `script` in a fresh container and returns how it ended. Raises SandboxError."""
    return Sandbox(spec).run(script)


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


def killed_for_memory(state: dict, timed_out: bool, kills_before: int | None, kills_after: int | None) -> bool:
    """Docker marks OOMKilled from the runtime's OOM event, which runsc's shim drops when the
    container's cgroup is already gone (about 1 run in 25 under load). So a runner killed by
    SIGKILL that we did not kill counts too if the kernel OOM-killed something meanwhile. Only a
    script killing its own runner while another sandbox on the node is OOM-killed is mislabelled."""
    if state.get("OOMKilled"):
        return True
    return (not timed_out and state.get("ExitCode") == KILLED
            and kills_before is not None and kills_after is not None and kills_after > kills_before)
