"""The container configuration → the Docker Engine API's create request (pure)."""

from dataclasses import replace

import pytest

from executors.spec import KILLED, LABEL, Limits, SandboxSpec
from executors.engines.docker import ETC_DIR, container_config, runsc_without_network
from executors.engines.base import Exit
from executors.sandbox import killed_for_memory, oom_kills

SPEC = SandboxSpec(job_id="abc", image="img", command=("mono", "runner.exe"),
                   limits=Limits(wall_time_s=5, memory_mb=300, cpus=0.5, pids=50, nofile=64,
                                 disk_mb=10, tmp_mb=4, output_bytes=1000))


def host(spec: SandboxSpec, gvisor_netns: bool = False) -> dict:
    return container_config(spec, gvisor_netns)["HostConfig"]


def ulimits(spec: SandboxSpec) -> dict[str, tuple[int, int]]:
    return {u["Name"]: (u["Soft"], u["Hard"]) for u in host(spec)["Ulimits"]}


def binds(spec: SandboxSpec, gvisor_netns: bool = False) -> list[tuple[str, str, bool]]:
    return [(m["Source"], m["Target"], m["ReadOnly"]) for m in host(spec, gvisor_netns)["Mounts"] if m["Type"] == "bind"]


def test_labelled_after_the_job():
    labels = container_config(SPEC)["Labels"]
    assert labels[LABEL] == "abc" and SPEC.name == "dotnet-scripts-job-abc"
    assert int(labels[f"{LABEL}.deadline"]) > 0
    assert f"{LABEL}.node" not in labels  # not yet placed
    assert container_config(replace(SPEC, node_id="n1"))["Labels"][f"{LABEL}.node"] == "n1"


def test_hardening_options():
    config = container_config(SPEC)
    h = config["HostConfig"]
    assert h["Runtime"] == "runsc"
    assert h["NetworkMode"] == "none"
    assert config["User"] == "10001:10001"
    assert h["CapDrop"] == ["ALL"]
    assert h["SecurityOpt"] == ["no-new-privileges"]
    assert h["ReadonlyRootfs"] is True
    assert h["LogConfig"]["Type"] == "none"
    assert "Privileged" not in h and "CapAdd" not in h and "Binds" not in h


def test_limits():
    h = host(SPEC)
    assert h["Memory"] == 300 << 20
    assert h["MemorySwap"] == 300 << 20  # no swap beyond RAM
    assert h["NanoCpus"] == 500_000_000
    assert h["PidsLimit"] == 50
    assert ulimits(SPEC) == {"nofile": (64, 64), "core": (0, 0)}
    assert "size=10m" in h["Tmpfs"]["/sandbox"] and "uid=10001" in h["Tmpfs"]["/sandbox"] and "gid=10001" in h["Tmpfs"]["/sandbox"]
    assert "size=4m" in h["Tmpfs"]["/tmp"] and "nosuid" in h["Tmpfs"]["/tmp"]


def test_the_least_cpu_a_job_may_ask_for_is_still_a_quota():
    # Docker takes NanoCpus 0 for no quota at all (and refuses anything below 0.01 core)
    least = replace(SPEC, limits=replace(SPEC.limits, cpus=0.01))
    assert host(least)["NanoCpus"] == 10_000_000


def test_a_cpu_quota_above_the_node_s_cpus_is_all_of_them():
    # Docker refuses more than the node has; all of them is the same limit there
    more = replace(SPEC, limits=replace(SPEC.limits, cpus=6))
    assert container_config(more, node_cpus=2)["HostConfig"]["NanoCpus"] == 2_000_000_000
    assert container_config(more, node_cpus=8)["HostConfig"]["NanoCpus"] == 6_000_000_000


def test_the_script_is_not_an_argument_but_stdin_which_closes_after_it():
    config = container_config(SPEC)
    assert (config["Image"], config["Cmd"]) == ("img", ["mono", "runner.exe"])
    assert config["OpenStdin"] and config["AttachStdin"] and config["StdinOnce"] and not config["Tty"]


def test_runtime_is_configurable():
    spec = SandboxSpec(job_id="x", image="i", command=("c",), runtime="runc", limits=Limits(pids=70))
    assert host(spec)["Runtime"] == "runc"
    assert ulimits(spec)["nproc"] == (70, 70)  # runc: the kernel counts the sandbox's own tasks


def test_no_nproc_rlimit_under_gvisor():
    # under runsc RLIMIT_NPROC applies to the sentry on the host and counts unrelated host processes
    assert "nproc" not in ulimits(SPEC)


def test_egress_mode_joins_its_own_filtered_bridge_with_gvisor_on_the_containers_netns():
    spec = SandboxSpec(job_id="x", image="i", command=("c",), network="egress")
    h = container_config(spec, egress_network="dotnet-scripts-egress-abc")["HostConfig"]
    assert h["NetworkMode"] == "dotnet-scripts-egress-abc"
    assert h["Runtime"] == "runsc-host-net"
    dev = SandboxSpec(job_id="x", image="i", command=("c",), network="egress", runtime="runc")
    assert container_config(dev, egress_network="n")["HostConfig"]["Runtime"] == "runc"
    with pytest.raises(ValueError):  # never on a shared network by mistake
        container_config(spec)


def test_docker_makes_no_netns_for_a_gvisor_sandbox_that_makes_its_own():
    h = host(SPEC, gvisor_netns=True)
    assert h["NetworkMode"] == "host"  # Docker's namespace: gVisor's --network=none ignores it
    assert h["Runtime"] == "runsc"
    assert container_config(SPEC, True)["Hostname"] == "sandbox"
    assert binds(SPEC, True) == [(f"{ETC_DIR}/hosts", "/etc/hosts", True), (f"{ETC_DIR}/resolv.conf", "/etc/resolv.conf", True)]
    # runc would share the host's network, egress needs Docker's bridge, and without the check: Docker's
    for spec in (replace(SPEC, runtime="runc"), replace(SPEC, runtime="runsc-host-net")):
        assert host(spec, gvisor_netns=True)["NetworkMode"] == "none"
    egress = container_config(replace(SPEC, network="egress"), gvisor_netns=True, egress_network="its-own")
    assert egress["HostConfig"]["NetworkMode"] == "its-own"
    assert host(SPEC)["NetworkMode"] == "none"
    assert binds(SPEC) == []


def test_only_a_runsc_runtime_without_network_counts_as_making_its_own_netns():
    assert runsc_without_network({"runc": {}, "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}})
    assert runsc_without_network({"runsc": {"runtimeArgs": ["--debug", "--network=none"]}})
    for args in ([], ["--network=host"], ["--network", "none"], ["--network=none", "--network=host"], ["--network=none", "-network=host"], None):
        assert not runsc_without_network({"runsc": {"path": "runsc", "runtimeArgs": args}}), args
    assert not runsc_without_network({"runc": {"path": "runc"}})


def test_packages_are_mounted_read_only_and_listed_for_the_runner():
    spec = SandboxSpec(job_id="x", image="i", command=("c",),
                       mounts=(("/cache/a/1.0.0/x/lib/net45", "/nuget/a/1.0.0"),),
                       references=("/nuget/a/1.0.0/A.dll",))
    assert binds(spec) == [("/cache/a/1.0.0/x/lib/net45", "/nuget/a/1.0.0", True)]
    assert "CSRUN_REFERENCES=/nuget/a/1.0.0/A.dll" in container_config(spec)["Env"]
    assert binds(SPEC) == []  # nothing of the host without packages


def test_docker_s_oom_mark_is_trusted():
    assert killed_for_memory(Exit(KILLED, oom_killed=True), False, None, None)


def test_a_sigkill_while_the_kernel_oom_killed_counts_when_docker_missed_the_event():
    assert killed_for_memory(Exit(KILLED), False, 10, 11)


def test_a_sigkill_without_an_oom_kill_is_not_memory():
    assert not killed_for_memory(Exit(KILLED), False, 10, 10)
    assert not killed_for_memory(Exit(KILLED), False, None, None)


def test_our_timeout_kill_and_other_exits_are_not_memory():
    assert not killed_for_memory(Exit(KILLED), True, 10, 11)
    assert not killed_for_memory(Exit(1), False, 10, 11)


def test_the_host_keeps_an_oom_kill_count():
    assert isinstance(oom_kills(), int)
