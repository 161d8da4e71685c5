"""Docker's sandboxes through the Engine API (real Docker, runtime runsc): started, attached and
detached without a process of ours, and a failed start is our error that leaves nothing behind."""

import os
import uuid
from dataclasses import replace
from pathlib import Path

import docker
import pytest
import requests

from cluster.agent_types import MONO_6
from executors.engines import docker as docker_engine
from executors.spec import Limits, SandboxError, SandboxGone, SandboxSpec
from executors.engines.docker import docker_api
from executors.sandbox import Sandbox, remove_sandbox, run_sandbox
from tests.conftest import sandbox_containers

pytestmark = pytest.mark.integration


def spec(**kw) -> SandboxSpec:
    return SandboxSpec(job_id=f"sandbox-{uuid.uuid4()}", image=kw.pop("image", MONO_6.image),
                       command=kw.pop("command", MONO_6.command), limits=kw.pop("limits", Limits(wall_time_s=30)), **kw)


def children() -> set[int]:
    """This process's child processes."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def test_a_sandbox_runs_once_made_with_no_process_of_ours_and_gets_its_script_on_stdin():
    before, s = children(), spec()
    sandbox = Sandbox(s)
    try:
        assert sandbox.alive() and docker_api().inspect_container(s.name)["State"]["Running"]  # started, not starting
        assert sandbox.wait_started(timeout=0.1)
        assert children() == before  # no `docker run` per sandbox: its stdio is an attach to the engine
        assert sandbox.proc.sock.gettimeout() is None  # an idle pooled one, a silent script: no read times out
        o = sandbox.run('Console.WriteLine("out"); Console.Error.WriteLine("err"); return 7;')
    finally:
        remove_sandbox(s.name)
    assert (o.exit_code, o.stdout, o.stderr) == (7, "out\n", "err\n")
    assert s.name not in sandbox_containers()


def test_a_detached_sandbox_runs_on_until_removed():
    s = spec()
    sandbox = Sandbox(s)
    try:
        sandbox.proc.detach()  # as a used pooled sandbox is until its teardown
        sandbox.out.join(10)
        assert sandbox.out.eof and not sandbox.alive()
        assert docker_api().inspect_container(s.name)["State"]["Running"]
    finally:
        sandbox.remove()
    assert s.name not in sandbox_containers()


@pytest.mark.parametrize("broken", [dict(image="dotnet-scripts/no-such-image"), dict(command=("/no/such/runner",)),
                                    dict(runtime="no-such-runtime")])
def test_a_sandbox_docker_cannot_start_is_our_error_and_leaves_nothing(broken):
    s = spec(**broken)
    with pytest.raises(SandboxError, match="did not start"):
        run_sandbox(s, 'Console.WriteLine("never");')
    assert s.name not in sandbox_containers()


def test_a_script_silent_for_longer_than_the_engine_client_s_timeout_keeps_its_streams(monkeypatch):
    # the attach socket is the client's connection: its timeout (30 s in the service) must not apply
    client = docker.APIClient(version="auto", timeout=5, **docker.utils.kwargs_from_env())
    monkeypatch.setattr(docker_engine, "docker_api", lambda: client)
    o = run_sandbox(spec(), 'System.Threading.Thread.Sleep(7000); Console.WriteLine("still here");')
    assert (o.exit_code, o.stdout, o.timed_out) == (0, "still here\n", False)


def test_a_pooled_sandbox_renamed_after_its_job_is_still_waited_for():
    pooled, job = spec(), spec()
    sandbox = Sandbox(pooled)
    try:
        o = sandbox.run("return 5;", name=job.name, remove=False)  # no end frames: its exit is waited for
        assert (o.exit_code, sandbox.proc.returncode) == (5, 5)  # by the container's id, not its first name
    finally:
        sandbox.remove()
    assert job.name not in sandbox_containers() and pooled.name not in sandbox_containers()


def test_a_cpu_quota_above_the_machine_s_cpus_runs_with_all_of_them():
    # Docker refuses more than the machine has ("Range of CPUs is from 0.01 to 2.00"): every job of an
    # agent type allowed more cores than a node has was REJECTED there
    s = SandboxSpec(job_id=f"sandbox-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                    limits=Limits(wall_time_s=30, cpus=(os.cpu_count() or 1) + 2))
    o = run_sandbox(s, "Console.WriteLine(Environment.ProcessorCount);")
    assert (o.exit_code, o.stdout.strip()) == (0, str(os.cpu_count())), o.stderr
    assert s.name not in sandbox_containers()


class _SlowEngine:
    """Docker whose kill is done but answers with a timeout, and whose inspect times out: what a
    busy daemon does to the client's 30 s."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def kill(self, name):
        self.real.kill(name)
        raise requests.exceptions.ReadTimeout("read timed out")

    def inspect_container(self, name):
        raise requests.exceptions.ReadTimeout("read timed out")


def test_a_docker_timeout_after_the_script_ran_is_our_error_never_a_sandbox_gone_before_it(monkeypatch):
    # a timeout is an OSError: the pool took it for a sandbox gone before its script and ran the job
    # again in a cold one
    slow = _SlowEngine(docker_api())
    monkeypatch.setattr(docker_engine, "docker_api", lambda: slow)
    pooled, job = spec(), spec(limits=Limits(wall_time_s=2))
    sandbox = Sandbox(replace(pooled, limits=job.limits))
    with pytest.raises(SandboxError) as e:
        sandbox.run("while (true) {}", name=job.name)
    assert not isinstance(e.value, SandboxGone)
    assert job.name not in sandbox_containers() and pooled.name not in sandbox_containers()


def test_a_sandbox_error_carries_none_of_the_script_s_output(monkeypatch):
    # the dispatcher logs the error's message: a script must not write into the service's logs
    monkeypatch.setattr(docker_engine, "state", lambda name: None)  # removed before it was inspected
    s, marker = spec(), f"secret-{uuid.uuid4()}"
    with pytest.raises(SandboxError) as e:
        run_sandbox(s, f'Console.Error.WriteLine("{marker}"); return 3;')
    assert marker not in str(e.value)
    assert s.name not in sandbox_containers()
