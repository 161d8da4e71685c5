"""The container configuration → `docker run` arguments (pure)."""

from dataclasses import replace

from executors.sandbox import (ETC_DIR, KILLED, LABEL, Limits, SandboxSpec, docker_run_args, killed_for_memory,
                               oom_kills, runsc_without_network)

SPEC = SandboxSpec(job_id="abc", image="img", command=("mono", "runner.exe"),
                   limits=Limits(wall_time_s=5, memory_mb=300, cpus=0.5, pids=50, nofile=64,
                                 disk_mb=10, tmp_mb=4, output_bytes=1000))


def option(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def test_named_and_labelled_after_the_job():
    args = docker_run_args(SPEC)
    assert option(args, "--name") == ["dotnet-scripts-job-abc"]
    labels = option(args, "--label")
    assert f"{LABEL}=abc" in labels
    assert any(l.startswith(f"{LABEL}.deadline=") for l in labels)
    assert not any(l.startswith(f"{LABEL}.node=") for l in labels)  # not yet placed
    assert f"{LABEL}.node=n1" in option(docker_run_args(replace(SPEC, node_id="n1")), "--label")


def test_hardening_options():
    args = docker_run_args(SPEC)
    assert option(args, "--runtime") == ["runsc"]
    assert option(args, "--network") == ["none"]
    assert option(args, "--user") == ["10001:10001"]
    assert option(args, "--cap-drop") == ["ALL"]
    assert option(args, "--security-opt") == ["no-new-privileges"]
    assert "--read-only" in args
    assert option(args, "--log-driver") == ["none"]


def test_limits():
    args = docker_run_args(SPEC)
    assert option(args, "--memory") == ["300m"]
    assert option(args, "--memory-swap") == ["300m"]  # no swap beyond RAM
    assert option(args, "--cpus") == ["0.5"]
    assert option(args, "--pids-limit") == ["50"]
    assert set(option(args, "--ulimit")) >= {"nofile=64:64", "core=0:0"}
    tmpfs = option(args, "--tmpfs")
    assert any(t.startswith("/sandbox:") and "size=10m" in t and "uid=10001" in t and "gid=10001" in t for t in tmpfs)
    assert any(t.startswith("/tmp:") and "size=4m" in t and "nosuid" in t for t in tmpfs)


def test_image_and_command_come_last_and_the_script_is_not_an_argument():
    args = docker_run_args(SPEC)
    assert args[-3:] == ["img", "mono", "runner.exe"]
    assert args[0] == "run" and "--interactive" in args  # the script goes to stdin


def test_runtime_is_configurable():
    spec = SandboxSpec(job_id="x", image="i", command=("c",), runtime="runc", limits=Limits(pids=70))
    args = docker_run_args(spec)
    assert option(args, "--runtime") == ["runc"]
    assert "nproc=70:70" in option(args, "--ulimit")  # runc: the kernel counts the sandbox's own tasks


def test_no_nproc_rlimit_under_gvisor():
    # under runsc RLIMIT_NPROC applies to the sentry on the host and counts unrelated host processes
    assert not any(u.startswith("nproc=") for u in option(docker_run_args(SPEC), "--ulimit"))


def test_egress_mode_joins_the_filtered_bridge_with_gvisor_on_the_containers_netns():
    spec = SandboxSpec(job_id="x", image="i", command=("c",), network="egress")
    args = docker_run_args(spec)
    assert option(args, "--network") == ["dotnet-scripts-egress"]
    assert option(args, "--runtime") == ["runsc-host-net"]
    dev = SandboxSpec(job_id="x", image="i", command=("c",), network="egress", runtime="runc")
    assert option(docker_run_args(dev), "--runtime") == ["runc"]


def test_docker_makes_no_netns_for_a_gvisor_sandbox_that_makes_its_own():
    args = docker_run_args(SPEC, gvisor_netns=True)
    assert option(args, "--network") == ["host"]  # Docker's namespace: gVisor's --network=none ignores it
    assert option(args, "--runtime") == ["runsc"]
    assert option(args, "--hostname") == ["sandbox"]
    assert option(args, "--mount") == [f"type=bind,source={ETC_DIR}/hosts,target=/etc/hosts,readonly",
                                       f"type=bind,source={ETC_DIR}/resolv.conf,target=/etc/resolv.conf,readonly"]
    # runc would share the host's network, egress needs Docker's bridge, and without the check: Docker's
    for spec in (replace(SPEC, runtime="runc"), replace(SPEC, runtime="runsc-host-net")):
        assert option(docker_run_args(spec, gvisor_netns=True), "--network") == ["none"]
    assert option(docker_run_args(replace(SPEC, network="egress"), gvisor_netns=True), "--network") == ["dotnet-scripts-egress"]
    assert option(docker_run_args(SPEC), "--network") == ["none"]
    assert option(docker_run_args(SPEC), "--mount") == []


def test_only_a_runsc_runtime_without_network_counts_as_making_its_own_netns():
    assert runsc_without_network({"runc": {}, "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}})
    assert runsc_without_network({"runsc": {"runtimeArgs": ["--debug", "--network=none"]}})
    for args in ([], ["--network=host"], ["--network", "none"], ["--network=none", "--network=host"], ["--network=none", "-network=host"], None):
        assert not runsc_without_network({"runsc": {"path": "runsc", "runtimeArgs": args}}), args
    assert not runsc_without_network({"runc": {"path": "runc"}})


def test_packages_are_mounted_read_only_and_listed_for_the_runner():
    spec = SandboxSpec(job_id="x", image="i", command=("c",),
                       mounts=(("/cache/a/1.0.0/x/lib/net45", "/nuget/a/1.0.0"),),
                       env=(("CSRUN_REFERENCES", "/nuget/a/1.0.0/A.dll"),))
    args = docker_run_args(spec)
    assert option(args, "--mount") == ["type=bind,source=/cache/a/1.0.0/x/lib/net45,target=/nuget/a/1.0.0,readonly"]
    assert "CSRUN_REFERENCES=/nuget/a/1.0.0/A.dll" in option(args, "--env")
    assert args[-2:] == ["i", "c"]
    assert option(docker_run_args(SPEC), "--mount") == []  # nothing of the host without packages


def test_docker_s_oom_mark_is_trusted():
    assert killed_for_memory({"OOMKilled": True, "ExitCode": KILLED}, False, None, None)


def test_a_sigkill_while_the_kernel_oom_killed_counts_when_docker_missed_the_event():
    assert killed_for_memory({"OOMKilled": False, "ExitCode": KILLED}, False, 10, 11)


def test_a_sigkill_without_an_oom_kill_is_not_memory():
    assert not killed_for_memory({"OOMKilled": False, "ExitCode": KILLED}, False, 10, 10)
    assert not killed_for_memory({"OOMKilled": False, "ExitCode": KILLED}, False, None, None)


def test_our_timeout_kill_and_other_exits_are_not_memory():
    assert not killed_for_memory({"OOMKilled": False, "ExitCode": KILLED}, True, 10, 11)
    assert not killed_for_memory({"OOMKilled": False, "ExitCode": 1}, False, 10, 11)


def test_the_host_keeps_an_oom_kill_count():
    assert isinstance(oom_kills(), int)
