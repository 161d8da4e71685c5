"""Sandboxes started by gVisor's runsc alone, without Docker (`SandboxSpec.engine == "runsc"`).

Docker's machinery costs a share of every sandbox's start (docs/PERFORMANCE.md). Here the node
keeps a read-only copy of the image's files, writes an OCI bundle per sandbox (`oci_config`, pure,
mirroring `container_config`) and runs `runsc run` on it: the same runtime, limits and hardening.
Sandboxes with network "egress" stay with Docker: their filtered bridge is Docker's network.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

from executors.engines.base import Engine, Exit, Stdio
from executors.engines.oci import CGROUP_PARENT, image_rootfs, oci_config
from executors.spec import KILLED, SandboxError, SandboxGone, labels

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/dotnet-scripts/runsc")  #: the state of this node's runsc sandboxes
STATE_DIR = RUN_DIR / "state"  #: runsc's own (`--root`)
BUNDLES_DIR = RUN_DIR / "bundles"  #: one OCI bundle per sandbox, named like its container
JOBS_DIR = RUN_DIR / "jobs"  #: a job's name → the pooled sandbox it took (runsc cannot rename)
#: what `docker events` tells of Docker's: each sandbox created (and for which job), each taken by
#: a job (under the job's name); tab separated, the last ~1 MiB (the previous one in events.1)
EVENTS = RUN_DIR / "events"
EVENTS_MAX_BYTES = 1 << 20
START_FAILED = 128  #: `runsc run` itself failed (its message on stderr): not the script's fault
PANIC_LOG = "panic.log"  #: in the bundle: what gVisor's Go runtime says when it panics
RUNSC_LOG = "runsc.log"  #: in the bundle: runsc's warnings and errors (empty when all goes well)


def runsc(*args: str) -> list[str]:
    """A runsc command line on this node's state; network "none" is the only one used here."""
    return ["runsc", "--root", str(STATE_DIR), "--network=none", *args]


def record(action: str, name: str, job: str = "") -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(EVENTS, "a") as f:  # one short append: whole lines even from several processes
        f.write(f"{time.time():.3f}\t{action}\t{name}\t{job}\n")
        if f.tell() > EVENTS_MAX_BYTES:
            os.replace(EVENTS, EVENTS.with_suffix(".1"))


def events(since: float) -> list[tuple[str, str, str]]:
    """(action, name, job) recorded since a Unix time, oldest first."""
    found = []
    for path in (EVENTS.with_suffix(".1"), EVENTS):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            at, action, name, job = (line.split("\t") + ["", "", ""])[:4]
            try:
                if float(at) >= since:
                    found.append((action, name, job))
            except ValueError:
                continue  # a line cut short by a crash
    return found


def write_bundle(spec, labels: dict[str, str]) -> Path:
    """Its bundle, whole or not at all: the reaper takes one without labels for a broken one."""
    rootfs, env = image_rootfs(spec.image)
    BUNDLES_DIR.mkdir(parents=True, exist_ok=True)
    bundle, new = BUNDLES_DIR / spec.name, Path(tempfile.mkdtemp(dir=BUNDLES_DIR, prefix=".new-"))
    try:
        (new / "config.json").write_text(json.dumps(oci_config(spec, rootfs, env, labels)))
        if bundle.exists():
            raise FileExistsError(f"a sandbox named {spec.name} exists")
        new.rename(bundle)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    record("create", spec.name, spec.job_id)
    return bundle


def run_args(spec, bundle: Path) -> list[str]:
    return runsc("--panic-log", str(bundle / PANIC_LOG), "--log", str(bundle / RUNSC_LOG), "run", "--bundle", str(bundle),
                 "--pid-file", str(bundle / "pid"), spec.name)


def start_failure(name: str) -> str | None:
    """runsc's own words when `runsc run` failed (they go to its log, which no script can write);
    None when it did not: its exit code and stderr were the script's."""
    try:
        text = (BUNDLES_DIR / name / RUNSC_LOG).read_text(errors="replace")
    except OSError:
        return None
    return text.strip()[-500:] if "running container: " in text else None


def crashed(name: str) -> bool:
    """Whether gVisor itself ended the sandbox (its Go runtime panicked: `runsc run` then exits 2,
    as a script may). It does when the kernel OOM-kills one of its ptrace stubs, which hold the
    script's memory: "ptrace get regs failed: no such process"."""
    try:
        return "panic" in (BUNDLES_DIR / name / PANIC_LOG).read_text(errors="replace")
    except OSError:
        return False


def started(name: str) -> bool:
    """Whether the sandbox exists (runsc wrote its pid file once it created it)."""
    return (BUNDLES_DIR / name / "pid").exists()


def take(name: str, job_name: str) -> None:
    """Gives a pooled sandbox the job's name, so the job is stopped by name as under Docker."""
    JOBS_DIR.mkdir(parents=True, exist_ok=True)
    link = JOBS_DIR / job_name
    link.unlink(missing_ok=True)
    link.symlink_to(name)
    record("take", job_name, name)


def container_of(name: str) -> str | None:
    """The runsc sandbox known by this name (its own, or a job's that took it), if any."""
    link = JOBS_DIR / name
    if link.is_symlink():
        return os.readlink(link)
    return name if (BUNDLES_DIR / name).is_dir() else None


def exists(cid: str) -> bool:
    return subprocess.run(runsc("state", cid), capture_output=True, timeout=30).returncode == 0


def remove(name: str) -> bool:
    """Kills and removes the runsc sandbox of this name from any process (a job stopped, the
    reaper), then its job name. False: none is known by this name here (Docker's, or gone)."""
    cid = container_of(name)
    if cid is None:
        return False
    destroy(cid)
    (JOBS_DIR / name).unlink(missing_ok=True)
    return True


def remove_listed(cid: str, listed: dict[str, str]) -> None:
    """Removes the sandbox `sandboxes()` listed as `cid`, unless a new one has its name by now
    (a job's next run): its bundle's labels tell them apart. Job names go with `tidy`."""
    if (_annotations(BUNDLES_DIR / cid) or {}) == listed:
        destroy(cid)


def destroy(cid: str) -> None:
    """Its `runsc run`, if alive, is killed, then it is destroyed; if that is gone too, `runsc
    delete` does (it would wait 5 s for an exit only that parent sees, so it is not asked first).
    Then its cgroups and bundle go."""
    shutil.rmtree(BUNDLES_DIR / cid, ignore_errors=True)  # first: its owner then sees it was stopped
    if exists(cid):
        killed = _kill(cid)
        deadline = time.monotonic() + 2
        while killed and exists(cid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if exists(cid):
            subprocess.run(runsc("delete", "--force", cid), capture_output=True, timeout=60)
    release(None, cid)


def _cgroups(name: str) -> list[Path]:
    """The sandbox cgroups of this name (a glob pattern), under every v1 controller or in v2."""
    return [*Path("/sys/fs/cgroup").glob(f"*{CGROUP_PARENT}/{name}"), *Path(f"/sys/fs/cgroup{CGROUP_PARENT}").glob(name)]


def release(name: str | None, cid: str) -> None:
    """What is left of a sandbox once its `runsc run` returned (that destroyed it): the cgroups
    if it could not, the bundle, the job's name."""
    if name:
        (JOBS_DIR / name).unlink(missing_ok=True)
    for cgroup in _cgroups(cid):
        try:
            cgroup.rmdir()
        except OSError:
            pass  # gone, or (v1) the same directory by another controller's name
    shutil.rmtree(BUNDLES_DIR / cid, ignore_errors=True)


def stale() -> list[str]:
    """Stopped sandboxes runsc still keeps whose bundle is gone (their `runsc run` was killed)."""
    if not STATE_DIR.is_dir():
        return []
    out = subprocess.run(runsc("list", "-format", "json"), capture_output=True, text=True, timeout=30).stdout
    return [c["id"] for c in json.loads(out or "null") or ()
            if c.get("status") == "stopped" and not (BUNDLES_DIR / c["id"]).is_dir()]


def forget(cid: str) -> None:
    """Removes what runsc keeps of a dead sandbox without a bundle (see `stale`)."""
    subprocess.run(runsc("delete", "--force", cid), capture_output=True, timeout=60)
    release(cid, cid)


def prune_cgroups() -> None:
    """Removes the cgroups of sandboxes that have no bundle any more (empty ones only: rmdir)."""
    for cgroup in _cgroups("*"):
        if cgroup.is_dir() and not (BUNDLES_DIR / cgroup.name).is_dir():
            try:
                cgroup.rmdir()
            except OSError:
                pass  # still in use, or not a sandbox's


def kill(name: str) -> None:
    cid = container_of(name)
    if cid:
        _kill(cid)


def _kill(cid: str) -> bool:
    return subprocess.run(runsc("kill", cid, "KILL"), capture_output=True, timeout=30).returncode == 0


def sandboxes() -> dict[str, dict[str, str]]:
    """This node's runsc sandboxes: their own name (never a job's they took) → labels (their
    bundles' annotations; {} for one half removed, or a bundle never finished, once a minute old)."""
    found = {}
    if BUNDLES_DIR.is_dir():
        for bundle in BUNDLES_DIR.iterdir():
            labels = _annotations(bundle)
            try:
                if labels is not None or time.time() - bundle.stat().st_mtime > 60:
                    found[bundle.name] = labels or {}
            except FileNotFoundError:
                pass  # removed meanwhile
    return found


def _annotations(bundle: Path) -> dict[str, str] | None:
    try:
        return json.loads((bundle / "config.json").read_text()).get("annotations", {})
    except (OSError, ValueError):
        return None


def forget_dead_jobs() -> None:
    """Removes job names whose sandbox is gone."""
    if JOBS_DIR.is_dir():
        for link in JOBS_DIR.iterdir():
            if not (BUNDLES_DIR / os.readlink(link)).is_dir():
                link.unlink(missing_ok=True)


class RunscEngine(Engine):
    """Sandboxes started by runsc alone, each an OCI bundle run by a `runsc run` of ours."""

    def start(self, spec) -> Stdio:
        try:
            args = run_args(spec, write_bundle(spec, labels(spec)))
        except (OSError, subprocess.CalledProcessError) as e:
            raise SandboxError(f"sandbox could not be prepared: {e}") from None
        return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def up(self, spec, stdio: Stdio) -> bool:
        return started(spec.name)

    def cgroup(self, spec, stdio: Stdio) -> str | None:
        return f"{CGROUP_PARENT}/{spec.name}"

    def rename(self, spec, stdio: Stdio, name: str, new: str) -> None:
        if stdio.poll() is not None:
            raise SandboxGone("the pre-started sandbox is gone")
        try:
            take(spec.name, new)
        except OSError as e:
            raise SandboxGone(f"the pre-started sandbox is gone: {e}") from None

    def kill(self, name: str) -> None:
        with suppress(subprocess.SubprocessError):  # it ended meanwhile: it is removed afterwards anyway
            kill(name)

    def exit(self, spec, stdio: Stdio, name: str) -> Exit | None:
        """From `runsc run`'s exit. None if the sandbox was removed meanwhile (the job was stopped)
        or runsc could not start it, as its own log says: a script exiting 128 after printing
        runsc's words gets its own outcome."""
        code = stdio.returncode
        if not (BUNDLES_DIR / spec.name).is_dir():
            return None
        if code == START_FAILED and (failure := start_failure(spec.name)):
            log.warning("runsc could not start sandbox %s: %s", spec.name, failure)
            return None
        if code != 0 and crashed(spec.name):  # the script was killed with its sandbox (by the OOM killer?)
            code = KILLED
        return Exit(code)  # it ran: a 125 is the script's

    def wait_exit(self, stdio: Stdio, name: str, timeout: float) -> None:
        with suppress(subprocess.TimeoutExpired):  # still running: it is killed now
            stdio.wait(timeout)

    def remove(self, spec, stdio: Stdio, name: str) -> None:
        """Its `runsc run` destroys it once it ends: only if that fails is more needed."""
        if stdio.poll() is None:
            kill(spec.name)
        try:
            stdio.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stdio.kill()
            remove(name)
        release(name, spec.name)

    def remove_by_name(self, name: str) -> bool:
        return remove(name)

    def sandboxes(self) -> dict[str, dict[str, str]]:
        return sandboxes()

    def remove_listed(self, key: str, labels: dict[str, str]) -> None:
        remove_listed(key, labels)

    def tidy(self) -> None:
        for cid in stale():
            forget(cid)
        forget_dead_jobs()
        prune_cgroups()
