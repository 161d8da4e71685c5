"""What one sandbox costs, apart from the service: machine CPU (core-seconds) and wall time per
run, for a trivial process and for Mono running a precompiled hello world, on the host, through
Docker with runc and with runsc, and through runsc alone (an OCI bundle of the same image, no
Docker); Mono started as the pool starts it, once gVisor's clock is calibrated; and a pooled job
with its teardown, the runner killed once it sent its end frames or let end itself. It shows where
a job's CPU goes and what a change of runtime, engine, start or stop could buy.

    .venv/bin/python bench/sandbox_cost.py [--runs 10]

Needs what `scripts/setup.sh` installs (Docker, runsc, the sandbox image). Leaves nothing behind:
its bundle, state directory and containers are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import floor_runner, machine_cpu_s  # noqa: E402
from cluster.agent_types import MONO_6  # noqa: E402
from executors.pool import template  # noqa: E402
from executors.spec import PoolSpec  # noqa: E402
from executors.engines.oci import image_rootfs, oci_config  # noqa: E402
from executors import sandbox  # noqa: E402
from executors.spec import DELAY_BY_SHELL, SandboxSpec  # noqa: E402
from executors import protocol  # noqa: E402
from executors.protocol import artifact_frame  # noqa: E402
from executors.sandbox import Sandbox  # noqa: E402

HELLO_CS = 'class Hello { static void Main() { System.Console.WriteLine("hi"); } }\n'
MONO = ["mono", "--debug", "-O=-inline"]  # as the runner is started


def measure(cmd: list[str], runs: int, stdin: bytes = b"") -> tuple[float, float]:
    """Machine core-seconds and wall seconds per run of `cmd`, runs in a row."""
    subprocess.run(cmd, input=stdin, capture_output=True, check=True)  # warm caches
    cpu, start = machine_cpu_s(), time.perf_counter()
    for _ in range(runs):
        subprocess.run(cmd, input=stdin, capture_output=True, check=True)
    return (machine_cpu_s() - cpu) / runs, (time.perf_counter() - start) / runs


def bundle(path: Path, command: list[str], binds: dict[str, str], env: tuple[tuple[str, str], ...] = ()) -> Path:
    """An OCI bundle running `command`, as the service writes one for runsc alone."""
    rootfs, image_env = image_rootfs(MONO_6.image)
    spec = SandboxSpec(job_id=f"cost-{path.name}", image=MONO_6.image, command=tuple(command),
                       mounts=tuple(binds.items()), env=env, engine="runsc")
    path.mkdir()
    (path / "config.json").write_text(json.dumps(oci_config(spec, rootfs, image_env, {})))
    return path


def job_and_teardown(engine: str, grace: float, artifact: bytes, script: str, runs: int) -> float:
    """Machine core-seconds per job of pooled runners (started as the pool does, then idle) running a
    cached script and being removed, with `grace` for a runner that sent its end frames to end itself."""
    spec = SandboxSpec(job_id="cost", image=MONO_6.image, command=MONO_6.command, engine=engine,
                       env=MONO_6.env, end_frames=MONO_6.end_frames, artifacts=True,
                       delayed_start=MONO_6.delayed_start)
    spec = template(spec, PoolSpec(MONO_6.name, cache_mb=64))
    boxes = [Sandbox(replace(spec, job_id=f"cost-pool-{uuid.uuid4()}")) for _ in range(runs)]
    for box in boxes:
        box.wait_started()
    time.sleep(3)  # all runners up and waiting
    kept, sandbox.EXIT_GRACE_S = sandbox.EXIT_GRACE_S, grace
    try:
        cpu = machine_cpu_s()
        for box in boxes:
            box.run(script, remove=True, artifact=artifact)
        return (machine_cpu_s() - cpu) / runs
    finally:
        sandbox.EXIT_GRACE_S = kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    floor_runner()  # Mono on the host, installed on demand
    with tempfile.TemporaryDirectory(prefix="dotnet-scripts-cost-") as t:
        tmp = Path(t)
        (tmp / "hello").mkdir()
        (tmp / "hello.cs").write_text(HELLO_CS)
        subprocess.run(["mcs", "-nologo", f"-out:{tmp}/hello/hello.exe", str(tmp / "hello.cs")], check=True)
        hello = ["/hello/hello.exe"]
        # as the pool starts its runner: once gVisor's clock is calibrated (its wait is in the wall time)
        def pool_start(delayed_start=MONO_6.delayed_start) -> list[str]:
            spec = SandboxSpec(job_id="cost", image=MONO_6.image, command=(), delayed_start=delayed_start)
            return list(template(spec, PoolSpec(MONO_6.name)).command)
        by_shell = pool_start(DELAY_BY_SHELL)  # how pools started them before runner/after.c
        pooled = [*pool_start(), *MONO, *hello]
        docker = ["docker", "run", "--rm", "-i", "--network=none", "--read-only", "--user", "10001:10001",
                  "-v", f"{tmp}/hello:/hello:ro"]
        # as the service starts a gVisor sandbox without network: Docker makes no namespace, gVisor does
        docker_no_netns = [a if a != "--network=none" else "--network=host" for a in docker]
        state = tmp / "runsc-state"
        runsc = ["runsc", "--network=none", "--root", str(state), "run", "--bundle"]
        try:
            # the runner itself on a repeated hello world: its compiled script (as the pool keeps it) on stdin
            script = 'Console.WriteLine("Hello");'
            first = Sandbox(SandboxSpec(job_id=f"cost-first-{uuid.uuid4()}", image=MONO_6.image,
                                        command=MONO_6.command, env=MONO_6.env, end_frames=MONO_6.end_frames,
                                        artifacts=True, engine="runsc"))
            first.run(script, keep_artifact=True)
            runner_env = protocol.runner_env(first.spec)  # as the pool's runners get it
            cached = artifact_frame(first.artifact) + script.encode()
            for label, cmd, *stdin in [
                ("host: /bin/true", ["/bin/true"]),
                ("host: mono hello.exe", [*MONO, f"{tmp}/hello/hello.exe"]),
                ("docker + runc: /bin/true", [*docker, "--runtime=runc", MONO_6.image, "/bin/true"]),
                ("docker + runsc: /bin/true", [*docker, "--runtime=runsc", MONO_6.image, "/bin/true"]),
                ("docker + runsc, no Docker netns: /bin/true", [*docker_no_netns, "--runtime=runsc", MONO_6.image, "/bin/true"]),
                ("runsc alone: /bin/true", [*runsc, str(bundle(tmp / "b-true", ["/bin/true"], {}))]),
                ("docker + runc: mono hello.exe", [*docker, "--runtime=runc", MONO_6.image, *MONO, *hello]),
                ("docker + runsc: mono hello.exe", [*docker, "--runtime=runsc", MONO_6.image, *MONO, *hello]),
                ("runsc alone: mono hello.exe",
                 [*runsc, str(bundle(tmp / "b-hello", [*MONO, *hello], {f"{tmp}/hello": "/hello"}))]),
                ("docker + runsc: mono hello.exe, pooled", [*docker, "--runtime=runsc", MONO_6.image, *pooled]),
                ("docker + runsc, no Docker netns: mono hello.exe, pooled",
                 [*docker_no_netns, "--runtime=runsc", MONO_6.image, *pooled]),
                ("runsc alone: mono hello.exe, pooled",
                 [*runsc, str(bundle(tmp / "b-pooled", pooled, {f"{tmp}/hello": "/hello"}))]),
                ("runsc alone: csrun, a repeated hello",
                 [*runsc, str(bundle(tmp / "b-csrun", list(MONO_6.command), {}, runner_env))], cached),
                ("runsc alone: csrun, a repeated hello, pooled",
                 [*runsc, str(bundle(tmp / "b-csrun-pooled", [*pool_start(), *MONO_6.command], {}, runner_env))], cached),
                ("runsc alone: csrun, a repeated hello, pooled by shell",
                 [*runsc, str(bundle(tmp / "b-csrun-shell", [*by_shell, *MONO_6.command], {}, runner_env))], cached),
            ]:
                if cmd[0] == "runsc":  # a container id of its own for each run
                    cmd = ["sh", "-c", 'exec "$@" "c$$"', "sh", *cmd]
                cpu, wall = measure(cmd, a.runs, *stdin)
                print(f"{label:56} {cpu:6.3f} core-s/run {wall:6.3f} s/run", flush=True)
            for engine in ("runsc", "docker"):
                for grace, how in ((0.0, "killed at once"), (sandbox.EXIT_GRACE_S, "ending itself")):
                    cpu = job_and_teardown(engine, grace, first.artifact, script, a.runs)
                    print(f"{f'{engine}: a pooled job + teardown, {how}':56} {cpu:6.3f} core-s/run", flush=True)
        finally:
            if state.exists():
                listed = subprocess.run(["runsc", "--root", str(state), "list", "-quiet"], capture_output=True, text=True)
                for cid in listed.stdout.split():
                    subprocess.run(["runsc", "--root", str(state), "delete", "-force", cid], capture_output=True)


if __name__ == "__main__":
    main()
