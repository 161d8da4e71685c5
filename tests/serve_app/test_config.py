"""Settings fail fast on bad values."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from executors import limits
from serve_app.config import Settings

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("override, where, message", [
    ({"memroy_mb": 1}, "linux-amd64-mono-6.memroy_mb", "Extra inputs are not permitted"),
    ({"cpus": 0.001}, "linux-amd64-mono-6.cpus", "Input should be greater than or equal to 0.01"),
    ({"wall_time_s": 0}, "linux-amd64-mono-6.wall_time_s", "Input should be greater than 0"),
    ({"pids": 1 << 20}, "linux-amd64-mono-6.pids", "Input should be less than or equal to 65536"),
    ({"memory_mb": True}, "linux-amd64-mono-6.memory_mb", "Value error, must be a number"),
    ({"cpus": False}, "linux-amd64-mono-6.cpus", "Value error, must be a number"),
    ({"network": "bridge"}, "linux-amd64-mono-6.network", "Input should be 'none' or 'egress'"),
    ({"network": None}, "linux-amd64-mono-6.network", "Input should be 'none' or 'egress'"),
])
def test_a_bad_override_is_refused_naming_it(monkeypatch, override, where, message):
    monkeypatch.setenv("AGENT_OVERRIDES", json.dumps({"linux-amd64-mono-6": override}))
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)
    assert f"agent_overrides.{where}\n  {message}" in str(refused.value)


def test_an_override_for_an_agent_type_outside_the_catalogue_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv("AGENT_OVERRIDES", '{"linux-amd64-cobol-1": {"memory_mb": 1024}}')
    with pytest.raises(ValidationError, match=r"agent_overrides\.linux-amd64-cobol-1\.\[key\]\n  Input should be"):
        Settings(_env_file=None)


def test_overrides_come_out_typed_and_keep_the_variables_shape(monkeypatch):
    monkeypatch.setenv("AGENT_OVERRIDES", '{"linux-amd64-mono-6": {"cpus": 2, "pids": "128", "network": "egress"}}')
    assert Settings(_env_file=None).agent_overrides == {"linux-amd64-mono-6": {"cpus": 2.0, "pids": 128,
                                                                               "network": "egress"}}


#: run with executors/limits.py replaced by the changed copy in sys.argv[1]: what each consumer makes of it
TABLE_PROBE = """
import json, sys
import executors
executors.__path__.insert(0, sys.argv[1])
from executors.limits import TABLE
from executors.spec import Limits
from pydantic import TypeAdapter, ValidationError
from serve_app.config import AgentOverride, Settings
from serve_app.models import LIMIT_MINIMUMS, JobLimits

def refuses(validate, value):
    try:
        validate(value)
    except ValidationError:
        return True
    return False

print(json.dumps({
    "copy": TABLE["memory_mb"].default,
    "runner": Limits().memory_mb,
    "setting": Settings(_env_file=None).memory_mb,
    "minimum": LIMIT_MINIMUMS["memory_mb"],
    "setting refuses 80": refuses(lambda v: Settings(_env_file=None, memory_mb=v), 80),
    "job refuses 80": refuses(lambda v: JobLimits(memoryMb=v), 80),
    "override refuses 80": refuses(TypeAdapter(AgentOverride).validate_python, {"memory_mb": 80}),
    "job takes 96": not refuses(lambda v: JobLimits(memoryMb=v), 96),
}))
"""


def test_one_number_in_the_limits_table_moves_the_setting_the_runner_and_every_bound(tmp_path):
    source = Path(limits.__file__).read_text()
    row = '"memory_mb": Limit(int, default=512, minimum=64,'
    assert source.count(row) == 1
    (tmp_path / "limits.py").write_text(source.replace(row, '"memory_mb": Limit(int, default=768, minimum=96,'))
    seen = json.loads(subprocess.run([sys.executable, "-c", TABLE_PROBE, str(tmp_path)], cwd=ROOT, check=True,
                                     capture_output=True, text=True).stdout)
    assert seen == {"copy": 768, "runner": 768, "setting": 768, "minimum": 96, "setting refuses 80": True,
                    "job refuses 80": True, "override refuses 80": True, "job takes 96": True}
    # and the tree's own table: 80 MiB is within its bounds
    assert Settings(_env_file=None, memory_mb=80).memory_mb == 80
