"""A job and the settings → what it runs as (pure)."""

import uuid

import pytest

from serve_app.config import Settings
from serve_app.models import JobConfig, Payload
from executors.protocol import input_frames
from serve_app.plan import agent_profile, job_profile, nuget_spec, plan, pool_spec, runner_head, sandbox_spec, validate

CONFIG = '<configuration><packageSources><add key="ops" value="https://feed.example/v3/index.json"/></packageSources></configuration>'


def test_sandbox_spec_takes_the_agent_type_and_the_limits():
    s = Settings(wall_time_s=7, memory_mb=300, sandbox_runtime="runc", _env_file=None)
    spec = sandbox_spec(s, "00000000-0000-0000-0000-000000000001", "linux-amd64-mono-6")
    assert spec.image == "dotnet-scripts/mono-6"
    assert spec.runtime == "runc"
    assert spec.limits.wall_time_s == 7 and spec.limits.memory_mb == 300
    assert spec.name == "dotnet-scripts-job-00000000-0000-0000-0000-000000000001"
    # the image's own way of starting its runner late (the pool's), the shell's where it has none
    assert spec.delayed_start == ("/opt/csrun/after",)
    assert sandbox_spec(s, "00000000-0000-0000-0000-000000000001", "linux-amd64-dotnet-7").delayed_start[0] == "sh"


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def test_agent_overrides_set_an_agent_types_limits_and_network():
    s = settings(memory_mb=512, agent_overrides={"linux-amd64-mono-6": {"memory_mb": 1024, "network": "egress"}})
    limits, network = agent_profile(s, "linux-amd64-mono-6")
    assert limits.memory_mb == 1024 and network == "egress"
    limits, network = agent_profile(s, "linux-amd64-dotnet-7")
    assert limits.memory_mb == 512 and network == "none"


def test_a_job_may_lower_its_limits_but_not_raise_them():
    s = settings(memory_mb=512, wall_time_s=60)
    lower = JobConfig.model_validate({"limits": {"memoryMb": 128, "wallTimeS": 2}})
    limits, _ = job_profile(s, "linux-amd64-mono-6", lower)
    assert (limits.memory_mb, limits.wall_time_s, limits.cpus) == (128, 2, s.cpus)
    with pytest.raises(ValueError, match="jobConfig.limits.memoryMb is 2048; the most linux-amd64-mono-6 allows is 512"):
        job_profile(s, "linux-amd64-mono-6", JobConfig.model_validate({"limits": {"memoryMb": 2048}}))


def test_a_job_may_drop_the_network_but_not_add_one():
    egress = settings(network="egress")
    assert job_profile(egress, "linux-amd64-mono-6", JobConfig(network="none"))[1] == "none"
    assert job_profile(egress, "linux-amd64-mono-6", None)[1] == "egress"
    with pytest.raises(ValueError, match="no network"):
        job_profile(settings(), "linux-amd64-mono-6", JobConfig(network="egress"))


def head(settings: Settings, agent_type: str, config: JobConfig | None = None, **given) -> bytes:
    return runner_head(settings, Payload(script="S", agent_type=agent_type, job_config=config, **given))


def test_the_runner_head_puts_the_nuget_config_ahead_only_for_runners_that_read_it():
    config = JobConfig(nuget_config_xml="<configuration>é</configuration>")
    assert head(Settings(), "linux-amd64-mono-6", config) == input_frames((), b"")
    assert head(Settings(), "linux-amd64-dotnet-7", config) == "33\n<configuration>é</configuration>0\n0\n".encode()
    assert head(Settings(), "linux-amd64-dotnet-7") == b"0\n0\n0\n"


def test_the_runner_head_frames_stdin_and_args_whatever_they_hold():
    stdin, args = "\0csrun-args 3\nab\0\n", ["x", "", "\0csrun-stdin 1\n"[1:]]
    assert head(Settings(), "linux-amd64-mono-6", stdin=stdin, args=args) == (
        b"\0csrun-args " + b"%d\n" % len(b"x\0\0csrun-stdin 1\n\0") + b"x\0\0csrun-stdin 1\n\0"
        + b"\0csrun-stdin " + b"%d\n" % len(stdin.encode()) + stdin.encode())
    assert head(Settings(), "linux-amd64-dotnet-7", stdin="é", args=["a b"]) == "0\n2\né4\na b\0".encode()


def test_nuget_spec_takes_the_jobs_feeds_or_the_operators():
    operator = '<configuration><packageSources><add key="ops" value="https://feed.example/v3/index.json"/></packageSources></configuration>'
    settings = Settings(nuget_config_xml=operator, egress_allow="10.1.0.0/16", nuget_cache_mb=100)
    spec = nuget_spec(settings, "linux-amd64-mono-6", None)
    assert [s.key for s in spec.sources] == ["ops"] and spec.allow == ("10.1.0.0/16",) and spec.cache_mb == 100
    own = JobConfig(nuget_config_xml=operator.replace('"ops"', '"mine"'))
    assert [s.key for s in nuget_spec(settings, "linux-amd64-mono-6", own).sources] == ["mine"]
    assert nuget_spec(Settings(), "linux-amd64-mono-6", None).sources == ()
    assert nuget_spec(settings, "linux-amd64-dotnet-7", own) is None  # dotnet-script restores itself


def test_nuget_spec_carries_the_job_s_restore_budget_and_cgroup_from_the_settings():
    settings = Settings(nuget_budget_download_mb=7, nuget_budget_extract_mb=9, nuget_budget_files=11,
                        nuget_budget_packages=3, nuget_restore_cpus=0.5, nuget_restore_memory_mb=128)
    spec = nuget_spec(settings, "linux-amd64-mono-6", None)
    budget = spec.budget()
    assert (spec.budget_download_mb, spec.budget_extract_mb, spec.budget_files, spec.budget_packages) == (7, 9, 11, 3)
    assert budget is not None and (spec.restore_cpus, spec.restore_memory_mb) == (0.5, 128)


def test_a_runner_that_restores_itself_gets_the_deployment_s_feeds_for_a_job_without_its_own():
    # the dotnet-7 runner's input ignored NUGET_CONFIG_XML: such jobs had no feeds at all
    settings = Settings(nuget_config_xml=CONFIG)
    assert head(settings, "linux-amd64-dotnet-7") == f"{len(CONFIG)}\n{CONFIG}0\n0\n".encode()
    own = JobConfig(nuget_config_xml="<configuration/>")
    assert head(settings, "linux-amd64-dotnet-7", own) == b"16\n<configuration/>0\n0\n"


def test_jobs_with_their_own_limits_or_network_take_no_pooled_sandbox():
    settings = Settings(compile_cache_mb=8)
    pooled = pool_spec(settings, "linux-amd64-mono-6", None)
    assert pooled is not None and pooled.cache_mb == 8 and pooled.packages_dir.endswith("/sandboxes")
    assert pool_spec(settings, "linux-amd64-mono-6", JobConfig(network="none")) is None
    assert pool_spec(settings, "linux-amd64-mono-6", JobConfig(limits={"memoryMb": 128})) is None
    assert pool_spec(settings, "linux-amd64-mono-6", JobConfig(nuget_config_xml=CONFIG)) is not None


def test_a_plan_is_the_same_at_submission_and_at_dispatch():
    settings, job = Settings(), uuid.uuid4()
    config = JobConfig(limits={"wallTimeS": 5})
    validate(settings, "linux-amd64-mono-6", config)
    p = plan(settings, job, Payload(script="S", agent_type="linux-amd64-mono-6", job_config=config, stdin="in"))
    assert p.spec == sandbox_spec(settings, job, "linux-amd64-mono-6", config) and p.spec.limits.wall_time_s == 5
    assert (p.script, p.head) == ("S", input_frames((), b"in"))
    assert (p.pool, p.nuget) == (None, nuget_spec(settings, "linux-amd64-mono-6", config))
    with pytest.raises(ValueError, match="wallTimeS"):
        validate(settings, "linux-amd64-mono-6", JobConfig(limits={"wallTimeS": 10_000}))
    with pytest.raises(ValueError):
        validate(settings, "linux-amd64-mono-6", JobConfig(nuget_config_xml="<not xml"))
