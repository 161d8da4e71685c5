"""Sandboxes started by runsc alone: the OCI configuration (pure) mirrors Docker's arguments, and
against the real runsc a sandbox is stopped by its job's name, an orphan is reaped with its
cgroups, and a start failure is ours, not the script's."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from cluster.agent_types import MONO_6
from executors.engines import oci, runsc
from executors.reaper import reap
from executors.spec import KILLED, LABEL, Limits, SandboxError, SandboxSpec, labels, via_runsc
from executors.sandbox import Sandbox, run_sandbox, remove_job_sandbox
from testing.waiting import until
from tests.conftest import sandbox_containers

pytestmark = pytest.mark.integration  # most run runsc; the pure OCI configuration tests come along

SPEC = SandboxSpec(job_id="j1", image="img", command=("mono", "run.exe"), node_id="n1", engine="runsc",
                   limits=Limits(wall_time_s=5, memory_mb=300, cpus=0.5, pids=99, nofile=77, disk_mb=8, tmp_mb=4),
                   mounts=(("/host/pkgs", "/nuget/a"),), end_frames=True)


def config(spec: SandboxSpec = SPEC) -> dict:
    return oci.oci_config(spec, "/roots/abc", ("LANG=C.UTF-8", "HOME=/sandbox"), labels(spec))


def test_only_gvisor_without_network_is_started_alone():
    assert via_runsc(SPEC)
    assert not via_runsc(replace(SPEC, network="egress"))  # Docker's bridge network
    assert not via_runsc(replace(SPEC, runtime="runc"))
    assert not via_runsc(replace(SPEC, engine="docker"))


def test_the_process_runs_unprivileged_with_the_runner_and_its_environment():
    p = config()["process"]
    assert p["args"] == ["mono", "run.exe"] and p["user"] == {"uid": 10001, "gid": 10001} and p["cwd"] == "/sandbox"
    assert p["noNewPrivileges"] is True and not p["terminal"]
    assert all(caps == [] for caps in p["capabilities"].values()) and len(p["capabilities"]) == 5
    assert p["env"][0].startswith("PATH=") and "CSRUN_END=1" in p["env"] and "HOME=/sandbox" in p["env"]
    assert {"type": "RLIMIT_NOFILE", "hard": 77, "soft": 77} in p["rlimits"]
    assert {"type": "RLIMIT_CORE", "hard": 0, "soft": 0} in p["rlimits"]


def test_limits_are_the_cgroups_of_the_sandbox():
    linux = config()["linux"]
    assert linux["resources"] == {"memory": {"limit": 300 << 20, "swap": 300 << 20},
                                  "cpu": {"quota": 50_000, "period": 100_000}, "pids": {"limit": 99}}
    assert linux["cgroupsPath"] == f"{oci.CGROUP_PARENT}/{SPEC.name}"
    assert {n["type"] for n in linux["namespaces"]} == {"pid", "network", "ipc", "uts", "mount"}


def test_the_least_cpu_a_job_may_ask_for_is_still_a_quota():
    # a quota of 0 is none; a cgroup takes 1 ms per period at the least
    least = replace(SPEC, limits=replace(SPEC.limits, cpus=0.01))
    assert config(least)["linux"]["resources"]["cpu"] == {"quota": 1000, "period": 100_000}


def test_read_only_root_sized_tmpfs_for_the_work_dir_and_tmp_and_read_only_packages():
    c = config()
    assert c["root"] == {"path": "/roots/abc", "readonly": True} and c["hostname"] == "sandbox"
    mounts = {m["destination"]: m for m in c["mounts"]}
    for dst, size in (("/sandbox", "size=8m"), ("/tmp", "size=4m")):
        assert mounts[dst]["type"] == "tmpfs" and size in mounts[dst]["options"]
        assert {"uid=10001", "gid=10001", "mode=0700", "nosuid", "nodev"} <= set(mounts[dst]["options"])
    assert mounts["/nuget/a"]["source"] == "/host/pkgs" and "ro" in mounts["/nuget/a"]["options"]
    assert "ro" in mounts["/sys"]["options"]


def test_the_reaper_s_labels_are_the_bundle_s_annotations():
    a = config()["annotations"]
    assert a[LABEL] == "j1" and a[f"{LABEL}.node"] == "n1"
    assert abs(float(a[f"{LABEL}.deadline"]) - (time.time() + 5 + SPEC.reap_grace_s)) < 5


def spec(**kw) -> SandboxSpec:
    return SandboxSpec(**{"job_id": f"alone-{uuid.uuid4()}", "image": MONO_6.image, "command": MONO_6.command,
                          "env": MONO_6.env, "end_frames": MONO_6.end_frames, "limits": Limits(wall_time_s=30),
                          "engine": "runsc", **kw})


def cgroups(cid: str) -> list[Path]:
    return [d for d in Path("/sys/fs/cgroup").glob(f"*{oci.CGROUP_PARENT}/{cid}") if d.is_dir()]


def test_a_taken_sandbox_is_stopped_by_its_job_s_name():
    s = Sandbox(spec())
    assert s.wait_started()
    job = f"alone-job-{uuid.uuid4()}"
    got = {}
    try:
        runner = threading.Thread(target=lambda: got.update(e=_run_expecting_error(s, job)))
        runner.start()
        until(lambda: f"dotnet-scripts-job-{job}" in sandbox_containers(), 20, "the job has taken the sandbox")
        remove_job_sandbox(job)  # as the service does on DELETE, from another process
        runner.join(20)
        assert got["e"] is True and not runner.is_alive()
    finally:
        s.remove()
    assert f"dotnet-scripts-job-{job}" not in sandbox_containers() and s.spec.name not in sandbox_containers()
    assert not runsc.exists(s.spec.name) and cgroups(s.spec.name) == []


def _run_expecting_error(s: Sandbox, job: str) -> bool:
    try:
        s.run("while (true) { }", name=f"dotnet-scripts-job-{job}", remove=False)
    except SandboxError:
        return True
    return False


def test_an_orphan_s_sandbox_is_reaped_with_its_cgroups():
    s = spec(reap_grace_s=0, limits=Limits(wall_time_s=1))
    proc = subprocess.Popen(runsc.run_args(s, runsc.write_bundle(s, labels(s))), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # nobody will read or stop it
    try:
        until(lambda: cgroups(s.name), 20, "the sandbox has its cgroups")
        time.sleep(1.5)  # past its deadline
        assert s.job_id in reap()
        proc.wait(10)
        assert s.name not in sandbox_containers() and not runsc.exists(s.name) and cgroups(s.name) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        runsc.remove(s.name)


def test_what_runsc_keeps_of_a_sandbox_whose_runsc_run_was_killed_is_reaped():
    s = spec()
    proc = subprocess.Popen(runsc.run_args(s, runsc.write_bundle(s, labels(s))), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: runsc.started(s.name) and runsc.exists(s.name), 20, "the sandbox started")
        proc.kill()  # its worker and `runsc run` die together: the sandbox stops, runsc's state stays
        proc.wait(10)
        shutil.rmtree(runsc.BUNDLES_DIR / s.name)  # and its bundle is gone already (a stop half done)
        assert runsc.stale() == [s.name]
        reap()
        assert not runsc.exists(s.name) and cgroups(s.name) == [] and runsc.stale() == []
    finally:
        runsc.forget(s.name)


def test_a_sandbox_runsc_cannot_start_is_our_error_not_the_script_s():
    broken = spec(command=("/no/such/runner",))
    with pytest.raises(SandboxError, match="did not start"):
        run_sandbox(broken, "")
    assert broken.name not in sandbox_containers()


def test_a_missing_image_is_our_error_and_leaves_nothing():
    missing = spec(image="dotnet-scripts/no-such-image")
    with pytest.raises(SandboxError, match="could not be prepared"):
        run_sandbox(missing, "")
    assert missing.name not in sandbox_containers()


def test_the_image_copy_is_read_only_to_the_sandbox_and_named_by_image_id():
    rootfs, env = oci.image_rootfs(MONO_6.image)
    image_id = json.loads(subprocess.run(["docker", "image", "inspect", MONO_6.image], capture_output=True,
                                         text=True, check=True).stdout)[0]["Id"]
    assert Path(rootfs).name == image_id.removeprefix("sha256:")[:32] and "MONO_PATH=/usr/lib/mono/4.5" in env
    o = run_sandbox(spec(), 'try { File.WriteAllText("/opt/x", "x"); WriteLine("wrote"); } catch (Exception e) { WriteLine(e.GetType().Name); }')
    assert o.exit_code == 0 and o.stdout.strip() in {"UnauthorizedAccessException", "IOException"}
    assert not (Path(rootfs) / "opt/x").exists()


def test_the_event_record_keeps_the_last_mebibyte_or_so_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(runsc, "RUN_DIR", tmp_path)
    monkeypatch.setattr(runsc, "EVENTS", tmp_path / "events")
    monkeypatch.setattr(runsc, "EVENTS_MAX_BYTES", 200)
    start = time.time()
    for i in range(40):
        runsc.record("create", f"c{i}", f"j{i}")
    kept = runsc.events(start)
    assert kept[-1] == ("create", "c39", "j39") and kept[0] != ("create", "c0", "j0")
    assert [int(name[1:]) for _, name, _ in kept] == sorted(int(name[1:]) for _, name, _ in kept)
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 3 * 200
    assert runsc.events(time.time() + 1) == []


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, resident KiB) of every process under `pid`."""
    rows = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[tuple[int, int]]] = {}
    for line in rows.splitlines():
        child, parent, rss = map(int, line.split())
        children.setdefault(parent, []).append((child, rss))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def test_a_script_whose_gvisor_dies_under_it_is_reported_killed_not_as_gvisor_s_exit_code():
    # the kernel's OOM killer picks the biggest process of a sandbox's cgroup: the ptrace stub that
    # holds the script's memory. gVisor then panics and `runsc run` exits 2, as a script may; the run
    # must read as killed (which the kernel's OOM count then marks out of memory). The stub is
    # killed by hand here; no OOM kill happens meanwhile, so it is not marked out of memory.
    s = Sandbox(spec())
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault(
        "o", s.run('Console.WriteLine("up");\nwhile (true) System.Threading.Thread.Sleep(50);', remove=True)))
    runner.start()
    until(lambda: runsc.started(s.spec.name) and any(rss > 20_000 for _, rss in descendants(
        int((runsc.BUNDLES_DIR / s.spec.name / "pid").read_text() or 0))), 30, "Mono's stub is up", interval=0.1)
    until(lambda: b"up\n" in s.out.data, 30, "the script printed up: it runs its loop")
    sentry = int((runsc.BUNDLES_DIR / s.spec.name / "pid").read_text())
    stub, _ = max(descendants(sentry), key=lambda p: p[1])
    os.kill(stub, signal.SIGKILL)
    runner.join(30)
    o = outcome["o"]
    assert o.stdout == "up\n" and o.exit_code == KILLED and not o.out_of_memory and not o.timed_out, o
    assert s.spec.name not in sandbox_containers() and cgroups(s.spec.name) == []


def test_the_sandboxes_listing_skips_a_bundle_removed_while_it_is_read(tmp_path, monkeypatch):
    """A sandbox's bundle goes when it ends, in another thread or process: listing (the reaper,
    the tests' leak check) may meet one half read and then gone."""
    monkeypatch.setattr(runsc, "BUNDLES_DIR", tmp_path)
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "config.json").write_text(json.dumps({"annotations": {"a": "b"}}))
    (tmp_path / "going").mkdir()
    (tmp_path / "going" / "config.json").write_text("{}")
    read_text = Path.read_text

    def removed_while_read(self, *args, **kwargs):
        if self.parent.name == "going":
            shutil.rmtree(self.parent)
            raise FileNotFoundError(str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", removed_while_read)
    assert runsc.sandboxes() == {"kept": {"a": "b"}}


def test_a_script_exiting_as_runsc_does_when_it_cannot_start_gets_its_own_outcome():
    # runsc's own start failure is 128 with "running container: ..." on stderr; a script saying the
    # same was taken for it, and its stderr went into the error the dispatcher logs
    marker = f"running container: secret-{uuid.uuid4()}"
    s = spec(end_frames=False)  # no end frames: its exit is runsc's
    o = run_sandbox(s, f'Console.Error.WriteLine("{marker}"); return 128;')
    assert (o.exit_code, o.stderr) == (128, marker + "\n")
    assert s.name not in sandbox_containers()


def test_an_error_about_a_runsc_sandbox_carries_none_of_the_script_s_output():
    s, marker = spec(), f"secret-{uuid.uuid4()}"
    sandbox = Sandbox(s)
    gone = threading.Thread(target=lambda: (time.sleep(4), shutil.rmtree(runsc.BUNDLES_DIR / s.name, ignore_errors=True),
                                            runsc.kill(s.name)))
    gone.start()  # stopped mid-run: its bundle goes first
    with pytest.raises(SandboxError) as e:
        sandbox.run(f'Console.Error.WriteLine("{marker}"); Console.Error.Flush(); System.Threading.Thread.Sleep(30000);')
    gone.join()
    assert marker not in str(e.value)
