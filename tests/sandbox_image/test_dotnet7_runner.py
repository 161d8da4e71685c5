"""The .NET agent type's runner script (run.sh) with a stand-in `dotnet` (the SDK image cannot be
built here): it must hand dotnet-script the job's NuGet.Config next to the script, the script, its
stdin and its arguments."""

import os
import subprocess
from pathlib import Path

from serve_app.config import Settings
from serve_app.plan import runner_head
from serve_app.models import JobConfig, Payload

RUN_SH = Path(__file__).resolve().parents[2] / "sandbox-image/dotnet-7/run.sh"
XML = '<configuration><packageSources><add key="f" value="https://feed.example/v3/index.json" /></packageSources></configuration>'


def runner_stdin(script: str, config: JobConfig | None = None, **given) -> bytes:
    payload = Payload(script=script, agent_type="linux-amd64-dotnet-7", job_config=config, **given)
    return runner_head(Settings(), payload) + script.encode()


def run(tmp_path: Path, stdin: bytes) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "dotnet"
    # its arguments one a line (as dotnet-script gets them), then its stdin
    stub.write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done; echo "stdin:"; cat; exit 7\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SANDBOX_DIR": str(tmp_path)}
    return subprocess.run(["bash", str(RUN_SH)], input=stdin, capture_output=True, env=env, timeout=10)


def test_config_lands_next_to_the_script(tmp_path):
    script = 'Console.WriteLine("ü");\n'
    r = run(tmp_path, runner_stdin(script, JobConfig(nuget_config_xml=XML)))
    assert r.returncode == 7, r.stderr  # dotnet-script's own exit code
    assert (tmp_path / "NuGet.Config").read_text() == XML
    assert (tmp_path / "main.csx").read_text() == script
    assert r.stdout.decode() == f"[script]\n[{tmp_path}/main.csx]\nstdin:\n"  # no args: no `--`, stdin empty


def test_without_a_config(tmp_path):
    r = run(tmp_path, runner_stdin("return 0;"))
    assert r.returncode == 7 and not (tmp_path / "NuGet.Config").exists()
    assert (tmp_path / "main.csx").read_text() == "return 0;"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "main.csx"]  # nothing of the input left


def test_many_long_args_run_the_script_once_with_its_exit_code(tmp_path):
    args = ["x" * 60_000 for _ in range(4)] + [""]  # past xargs' buffer: it would have run it twice
    r = run(tmp_path, runner_stdin("return 0;", stdin="in", args=args))
    assert r.returncode == 7 and r.stdout.decode().count("stdin:") == 1
    assert r.stdout.decode().splitlines()[3:8] == [f"[{a}]" for a in args]


def test_bad_input_is_refused(tmp_path):
    r = run(tmp_path, b"Console.WriteLine(1);")
    assert r.returncode == 2 and b"bad input" in r.stderr


def test_stdin_and_args_reach_dotnet_script_whatever_they_hold(tmp_path):
    stdin = "0\n5\n\0tricky\n-- not an arg\n"  # lines that look like the header's, a NUL
    args = ["a", "b c", "", "line\nbreak", "--x", "é"]
    r = run(tmp_path, runner_stdin("return 0;", stdin=stdin, args=args))
    assert r.returncode == 7, r.stderr
    shown = "".join(f"[{a}]\n" for a in ["script", f"{tmp_path}/main.csx", "--", *args])
    assert r.stdout.decode() == shown + "stdin:\n" + stdin
    assert (tmp_path / "main.csx").read_text() == "return 0;"
