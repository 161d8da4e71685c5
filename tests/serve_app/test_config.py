"""Settings fail fast on bad values."""

import pytest
from pydantic import ValidationError

from serve_app.config import Settings


def test_defaults_are_the_embedded_ones():
    s = Settings(_env_file=None)
    assert s.port == 8080 and s.database_url.startswith("sqlite") and s.sandbox_runtime == "runsc"


def test_agent_types_from_a_comma_separated_variable(monkeypatch):
    monkeypatch.setenv("AGENT_TYPES", "linux-amd64-mono-6, linux-amd64-dotnet-7")
    assert Settings(_env_file=None).agent_types == ["linux-amd64-mono-6", "linux-amd64-dotnet-7"]


@pytest.mark.parametrize("env", [
    {"AGENT_TYPES": "linux-amd64-cobol-1"},
    {"SANDBOX_RUNTIME": "kata"},
    {"PORT": "0"},
    {"MEMORY_MB": "1"},
    {"WALL_TIME_S": "-1"},
    {"AGENT_OVERRIDES": '{"linux-amd64-cobol-1": {"memory_mb": 1}}'},
    {"AGENT_OVERRIDES": '{"linux-amd64-mono-6": {"memroy_mb": 1}}'},
    {"AGENT_OVERRIDES": '{"linux-amd64-mono-6": {"memory_mb": -5}}'},
    {"AGENT_OVERRIDES": '{"linux-amd64-mono-6": {"network": "bridge"}}'},
    # overrides keep within the bounds of the settings of the same names
    {"AGENT_OVERRIDES": '{"linux-amd64-mono-6": {"cpus": 0.001}}'},
    {"AGENT_OVERRIDES": '{"linux-amd64-mono-6": {"memory_mb": 99999999}}'},
    {"AGENT_OVERRIDES": '{"linux-amd64-mono-6": {"memory_mb": true}}'},
    {"CPUS": "0.001"},
    {"NETWORK": "host"},
    {"EGRESS_ALLOW": "not-a-network"},
    {"STALE_AFTER_S": "30", "WALL_TIME_S": "60"},
    # running jobs would be rejected: the service restores mono-6's packages (120 s) before a 100 s run
    {"STALE_AFTER_S": "200", "WALL_TIME_S": "100"},
    {"STALE_AFTER_S": "300", "AGENT_OVERRIDES": '{"linux-amd64-mono-6": {"wall_time_s": 400}}'},
    {"POOL_WARMUP": "sometimes"},
])
def test_bad_values_are_refused(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_overrides_and_allowed_networks_from_the_environment(monkeypatch):
    monkeypatch.setenv("AGENT_OVERRIDES", '{"linux-amd64-mono-6": {"memory_mb": 1024, "network": "egress"}}')
    monkeypatch.setenv("EGRESS_ALLOW", "10.5.0.0/16, 203.0.113.7")
    s = Settings(_env_file=None)
    assert s.agent_overrides["linux-amd64-mono-6"]["memory_mb"] == 1024
    assert s.egress_allow == ["10.5.0.0/16", "203.0.113.7/32"]


def test_stale_after_counts_the_restore_only_where_the_service_restores(monkeypatch):
    # dotnet-7's runner restores its packages itself, within the wall time; mono-6 is not enabled
    monkeypatch.setenv("AGENT_TYPES", "linux-amd64-dotnet-7")
    monkeypatch.setenv("AGENT_OVERRIDES", '{"linux-amd64-mono-6": {"wall_time_s": 1000}}')
    monkeypatch.setenv("WALL_TIME_S", "250")
    assert Settings(_env_file=None).stale_after_s == 300
    monkeypatch.setenv("AGENT_TYPES", "linux-amd64-dotnet-7,linux-amd64-mono-6")
    with pytest.raises(ValidationError, match="linux-amd64-mono-6's wall time \\+ nuget_restore_timeout_s is 1120 s"):
        Settings(_env_file=None)


@pytest.mark.parametrize("value, mode", [("auto", "auto"), ("always", "always"), ("true", "always"), ("False", "never")])
def test_pool_warmup_modes_and_the_older_booleans(monkeypatch, value, mode):
    monkeypatch.setenv("POOL_WARMUP", value)
    assert Settings(_env_file=None).pool_warmup == mode
