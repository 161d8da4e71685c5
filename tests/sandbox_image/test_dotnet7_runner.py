"""The .NET agent type's runner script (run.sh) with a stand-in `dotnet` (the SDK image cannot be
built here): it must hand dotnet-script the job's NuGet.Config next to the script, and the script."""

import os
import subprocess
from pathlib import Path

from serve_app.config import Settings
from serve_app.plan import runner_input
from serve_app.models import JobConfig

RUN_SH = Path(__file__).resolve().parents[2] / "sandbox-image/dotnet-7/run.sh"
XML = '<configuration><packageSources><add key="f" value="https://feed.example/v3/index.json" /></packageSources></configuration>'


def run(tmp_path: Path, stdin: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "dotnet"
    stub.write_text('#!/bin/sh\necho "dotnet $*"; cat >/dev/null; echo "stdin empty"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SANDBOX_DIR": str(tmp_path)}
    return subprocess.run(["sh", str(RUN_SH)], input=stdin.encode(), capture_output=True, env=env, timeout=10)


def test_config_lands_next_to_the_script(tmp_path):
    script = 'Console.WriteLine("ü");\n'
    r = run(tmp_path, runner_input(Settings(), "linux-amd64-dotnet-7", script, JobConfig(nuget_config_xml=XML)))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "NuGet.Config").read_text() == XML
    assert (tmp_path / "main.csx").read_text() == script
    assert r.stdout.decode() == f"dotnet script {tmp_path}/main.csx\nstdin empty\n"


def test_without_a_config(tmp_path):
    r = run(tmp_path, runner_input(Settings(), "linux-amd64-dotnet-7", "return 0;", None))
    assert r.returncode == 0 and not (tmp_path / "NuGet.Config").exists()
    assert (tmp_path / "main.csx").read_text() == "return 0;"


def test_bad_input_is_refused(tmp_path):
    r = run(tmp_path, "Console.WriteLine(1);")
    assert r.returncode == 2 and b"bad input" in r.stderr
