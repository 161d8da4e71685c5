"""One command, side-by-side latency and throughput figures (prints a table, writes JSON).

    .venv/bin/python bench/run.py [--runs 10] [--jobs 200] [--engine docker|runsc] [--out bench/results.json]

1. floor: the same scripts through the same runner (csrun) with the same Mono, on the host;
2. one `docker run --runtime=runsc` per script (the original service's architecture);
3. this service end to end over HTTP (POST → result available), p50/p95/max;
4. throughput: N hello-world jobs submitted at once, jobs/s until all are FINISHED, none lost;
5. memory (PSS) of the service's process tree (Ray included), idle and under that load.
Every latency is also given as a ratio to the floor measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.agent_types import MONO_6  # noqa: E402
from executors.engines.oci import CGROUP_PARENT  # noqa: E402
from testing.nuget_feed import build_packages, serve as serve_feed  # noqa: E402
from testing.services import api_service  # noqa: E402

SCRIPTS = {
    "hello": 'Console.WriteLine("Hello");',
    "cpu-1s": ("long n = 0; for (long i = 2; n < 200000; i++) { bool p = true;"
               " for (long d = 2; d * d <= i; d++) if (i % d == 0) { p = false; break; } if (p) n++; }"
               " Console.WriteLine(n);"),
    # a package and its dependency from a NuGet feed (testing/nuget_feed.py), cached after the first job
    "nuget": '#r "nuget: Acme.Greeter, 1.0.0"\nConsole.WriteLine(Acme.Greeter.Hello("bench"));',
}
#: the packages the nuget script's restore resolves, as the sandbox sees them
NUGET_DLLS = {"/nuget/acme.greeter/1.0.0": ("Acme.Greeter", "1.0.0"), "/nuget/acme.formatting/1.0.0": ("Acme.Formatting", "1.0.0")}


def unique(script: str) -> str:
    """The same script, never seen before (nothing can have been cached for it)."""
    return f"// {uuid.uuid4()}\n{script}"


def extract_packages(packages: dict, into: Path) -> dict[str, str]:
    """The nuget script's assemblies on the host, for the floor and `docker run`: sandbox path → host dir."""
    dirs = {}
    for mount, (pid, ver) in NUGET_DLLS.items():
        d = into / pid
        d.mkdir(parents=True)
        with zipfile.ZipFile(io.BytesIO(packages[(pid, ver)])) as z:
            (d / f"{pid}.dll").write_bytes(z.read(f"lib/net45/{pid}.dll"))
        dirs[mount] = str(d)
    return dirs


def pss_kib(root_pid: int) -> int:
    """Proportional set size of a process and all its descendants."""
    pids, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        pids.add(pid)
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue  # it ended meanwhile
        for task in tasks:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass  # that thread ended meanwhile
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


#: where the machine's CPU goes during the burst, by process name
GVISOR = "gVisor sandboxes (their cgroups, and runsc's CLI runs)"
#: gVisor's sentries, gofers and stubs ("exe": runsc's re-executions of itself) are counted by their
#: cgroups, exactly, and not by process
CPU_GROUPS = {GVISOR: ("runsc",),
              "Docker (dockerd, containerd, shims, CLI)": ("dockerd", "containerd", "containerd-shim", "docker"),
              "the service (Ray, Serve, actors, tasks)": ("ray::", "raylet", "gcs_server", "ray-dashboard", "python",
                                                          "process_api", "serve_app")}


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process but this one: pid → (name, seconds)."""
    hz, seen = os.sysconf("SC_CLK_TCK"), {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        seen[int(proc.name)] = (stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / hz)
    seen.pop(os.getpid(), None)
    return seen


ACCT_HZ = 100  #: the unit of process accounting's times (Linux's acct_v3: AHZ)


@contextmanager
def process_accounting():
    """Turns the kernel's process accounting on while in the block (the `acct` tools, installed on
    demand). Yields a dict that, once the block is left, holds what it recorded of the processes that
    ended meanwhile: pid → (name, CPU seconds of their whole life); empty where it cannot be had. It sees
    what a sampler misses: the many short processes (a `runsc` CLI run, a shim's start) and the
    last moments of the rest. It records less than the cgroups charge a gVisor sandbox's processes
    (about half, for sandboxes running /bin/true), so those are counted by their cgroups. It is the
    machine's: whatever accounting was on before is off afterwards."""
    if not (shutil.which("accton") and shutil.which("dump-acct")):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "acct"], capture_output=True)
    ended: dict[int, tuple[str, float]] = {}
    if not (shutil.which("accton") and shutil.which("dump-acct")):
        yield ended
        return
    with tempfile.TemporaryDirectory(prefix="dotnet-scripts-bench-") as tmp:
        acct = Path(tmp) / "acct"
        acct.touch()
        subprocess.run(["accton", str(acct)], check=True, capture_output=True)
        try:
            yield ended
        finally:
            subprocess.run(["accton", "off"], check=True, capture_output=True)
            for line in subprocess.run(["dump-acct", str(acct)], capture_output=True, text=True).stdout.splitlines():
                f = [x.strip() for x in line.split("|")]  # command, version, user, system time, …, pid, ppid, …
                ended[int(f[9])] = (f[0], (float(f[2]) + float(f[3])) / ACCT_HZ)


def machine_cpu_s() -> float:
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def quiet(max_wait_s: float = 60.0) -> None:
    """Waits until the machine is about idle (the service's pool refilling and warming up its runners
    after a job would otherwise slow the floor's host runs down, making every ratio look better)."""
    deadline, calm = time.monotonic() + max_wait_s, 0
    while time.monotonic() < deadline:
        before = machine_cpu_s()
        time.sleep(1)
        calm = calm + 1 if machine_cpu_s() - before < 0.3 else 0  # an idle service itself uses ~0.15 cores (Ray)
        if calm == 2:  # two seconds: a pool refills what a lone job took, and warms runners up, after a pause
            return


def sandbox_cgroups_cpu_s() -> float:
    """CPU seconds so far of everything run in sandbox cgroups (runsc alone's and Docker's): the
    sentries, gofers and the scripts' processes, the exited ones included."""
    total = 0
    for parent in (CGROUP_PARENT, "/docker"):
        try:
            total += int(Path(f"/sys/fs/cgroup/cpuacct{parent}/cpuacct.usage").read_text())
        except OSError:
            pass  # none started yet, or cgroup v2
    return total / 1e9


def summary(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50": statistics.median(s), "p95": s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))],
            "max": s[-1], "n": len(s)}


def floor_runner() -> list[str]:
    """csrun compiled for the host's Mono (installed on demand, like the rest of the project)."""
    if not (shutil.which("mono") and shutil.which("mcs")):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mono-runtime", "mono-mcs"],
                       check=True, capture_output=True)
    exe = Path(tempfile.gettempdir()) / "dotnet-scripts-bench-csrun.exe"
    subprocess.run(["mcs", "-nologo", "-optimize", f"-out:{exe}", "-r:System.Core",
                    "-r:/usr/lib/mono/4.5/mcs.exe", str(ROOT / "sandbox-image/mono-6/runner/csrun.cs")],
                   check=True)
    return ["mono", "--debug", "-O=-inline", str(exe)]


def timed(cmd: list[str], script: str, env: dict | None = None) -> float:
    build = None
    if env is not None:  # the host runner: a build dir of its own, as each sandbox has
        build = tempfile.mkdtemp(prefix="dotnet-scripts-bench-")
        env = {**env, "CSRUN_BUILD_DIR": build}
    start = time.perf_counter()
    r = subprocess.run(cmd, input=script.encode(), capture_output=True, env=env)
    took = time.perf_counter() - start
    if build:
        shutil.rmtree(build, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {r.stderr.decode()[-500:]}")
    return took


def run_service_job(client: httpx.Client, script: str, job_config: dict | None = None) -> float:
    start = time.perf_counter()
    payload = {"script": script, "agentType": MONO_6.name, **({"jobConfig": job_config} if job_config else {})}
    job_id = client.post("/jobs", json={"requestId": str(uuid.uuid4()), "senderId": "bench",
                                        "payload": payload}).json()["jobId"]
    while True:  # long-poll: the answer comes the moment the job ends
        result = client.get(f"/jobs/{job_id}/result", params={"wait": 60}).json()["result"]
        if result is not None:
            if result["finishedWith"] != "SUCCEEDED":
                raise RuntimeError(f"bench job failed: {result}")
            return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--engine", choices=["docker", "runsc"], default="docker",
                    help="what starts the service's sandboxes (SANDBOX_ENGINE); docker is the default")
    ap.add_argument("--out", default=str(ROOT / "bench/results.json"))
    a = ap.parse_args()
    results: dict = {"runs": a.runs, "jobs": a.jobs, "slots": a.slots, "engine": a.engine, "latency_s": {},
                     "throughput": {}, "memory_mib": {}}

    host_cmd = floor_runner()
    host_env = {**os.environ, "MONO_PATH": "/usr/lib/mono/4.5"}
    docker_cmd = ["docker", "run", "--rm", "-i", "--runtime=runsc", "--network=none"]
    with tempfile.TemporaryDirectory() as tmp, serve_feed(build_packages(Path(tmp) / "src")) as feed, \
            api_service(Path(tmp), LOCAL_SLOTS=str(a.slots), DATABASE_URL=f"sqlite:///{tmp}/bench.db", SANDBOX_ENGINE=a.engine,
                        EGRESS_ALLOW="127.0.0.1/32", NUGET_CACHE_DIR=f"{tmp}/nuget") as svc:
        client = httpx.Client(base_url=svc.url, timeout=120)
        service_pid = _service_pid(svc.url)
        run_service_job(client, SCRIPTS["hello"])  # idle with its pool filled (under runsc alone, its sandboxes count)
        quiet()
        results["memory_mib"]["idle"] = round(pss_kib(service_pid) / 1024)
        dlls = extract_packages(feed.packages_by_id(), Path(tmp) / "dlls")
        refs = ":".join(f"{m}/{pid}.dll" for m, (pid, _) in NUGET_DLLS.items())
        for name, script in SCRIPTS.items():
            host, env, docker, config = host_cmd, host_env, [*docker_cmd, MONO_6.image, *MONO_6.command], None
            if name == "nuget":  # the same assemblies: on the host from their folders, in docker mounted
                env = {**host_env, "CSRUN_REFERENCES": ":".join(f"{dlls[m]}/{pid}.dll" for m, (pid, _) in NUGET_DLLS.items())}
                docker = [*docker_cmd, "-e", f"CSRUN_REFERENCES={refs}",
                          *[a for m, d in dlls.items() for a in ("-v", f"{d}:{m}:ro")], MONO_6.image, *MONO_6.command]
                config = {"nugetConfigXml": feed.config()}
            timed(host, script, env)  # warm the page cache
            run_service_job(client, script, config)  # and the package cache
            quiet()
            lat = {
                "floor": summary([timed(host, script, env) for _ in range(a.runs)]),
                "docker run": summary([timed(docker, script) for _ in range(a.runs)]),
                "service": summary([run_service_job(client, script, config) for _ in range(a.runs)]),
            }
            results["latency_s"][name] = lat
        # scripts never seen before: nothing can be cached for them
        quiet()
        results["latency_s"]["hello-new"] = {
            "floor": summary([timed(host_cmd, unique(SCRIPTS["hello"]), host_env) for _ in range(a.runs)]),
            "service": summary([run_service_job(client, unique(SCRIPTS["hello"])) for _ in range(a.runs)]),
        }
        # the same, arriving 4 s apart as a user at a prompt would: each finds a refilled pool; the
        # repeated hello too (its compiled script cached), apart from the refill's CPU
        for name, make in (("hello-new", lambda: unique(SCRIPTS["hello"])), ("hello", lambda: SCRIPTS["hello"])):
            idle = []
            for _ in range(a.runs):
                time.sleep(4)
                idle.append(run_service_job(client, make()))
            results["latency_s"][name]["service, 4 s apart"] = summary(idle)

        # throughput: the floor runs the same number of scripts, `slots` at a time, on the host, right
        # before and right after the service's burst: a machine whose speed drifts shows it in the two
        def floor_burst() -> float:
            quiet()
            start = time.perf_counter()
            with ThreadPoolExecutor(a.slots) as pool:
                list(pool.map(lambda _: timed(host_cmd, SCRIPTS["hello"], host_env), range(a.jobs)))
            return a.jobs / (time.perf_counter() - start)

        # measured twice: once without observers (jobs/s, and the CPU read at its start and end), then
        # the same burst again sampled for memory and CPU by process, which take the CPU they measure
        floor_before = floor_burst()
        results["throughput"] = burst(client, a.jobs)
        floors = [floor_before, floor_burst()]
        floor_rate = statistics.mean(floors)
        results["throughput"]["floor_jobs_per_s"] = round(floor_rate, 2)
        results["throughput"]["floor_before_after"] = [round(f, 2) for f in floors]
        results["throughput"]["ratio_to_floor"] = round(results["throughput"]["service_jobs_per_s"] / floor_rate, 3)
        observed = burst(client, a.jobs, service_pid)
        results["memory_mib"]["under_load_peak"] = observed.pop("pss_peak_mib")
        results["throughput"]["observed burst"] = observed

    Path(a.out).write_text(json.dumps(results, indent=2))
    print_table(results)


def burst(client: httpx.Client, jobs: int, observe_pid: int | None = None) -> dict:
    """`jobs` hello-world jobs at once, waited for as a client would: each job's result long-polled
    in submission order (they run oldest first), not hundreds of status requests a second competing
    for the same 2 cores. With `observe_pid`, the service's memory (PSS of that process's tree) and
    the CPU of each process are sampled meanwhile, and the processes that end are accounted for."""
    quiet()
    peak, done = 0, threading.Event()
    first = cpu_by_process() if observe_pid else {}
    used: dict[int, tuple[str, float]] = {}  #: pid → (name, CPU seconds during the burst)

    def sample() -> None:  # a process's last 0.25 s is not seen but by the accounting
        nonlocal peak
        n = 0
        while not done.wait(0.25):
            for pid, (name, cpu) in cpu_by_process().items():
                used[pid] = (name, cpu - first.get(pid, (name, 0.0))[1])
            n += 1
            if n % 8 == 1:  # every 2 s: PSS walks every mapping of every process in the tree,
                # ~0.4 core-s a time with sixteen pooled sandboxes in it (runsc alone)
                peak = max(peak, pss_kib(observe_pid))

    sampler = threading.Thread(target=sample, daemon=True) if observe_pid else None
    with process_accounting() if observe_pid else nullcontext({}) as ended:
        machine_before, cgroups_before, start = machine_cpu_s(), sandbox_cgroups_cpu_s(), time.perf_counter()
        own_before = time.process_time()
        if sampler:
            sampler.start()
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda i: client.post("/jobs", json={
                "requestId": str(uuid.uuid4()), "senderId": "bench",
                "payload": {"script": SCRIPTS["hello"], "agentType": MONO_6.name}}).json()["jobId"], range(jobs)))
        statuses: dict[str, str] = {}
        deadline = time.monotonic() + 30 + 10 * jobs
        for job_id in ids:
            while job_id not in statuses and time.monotonic() < deadline:
                if client.get(f"/jobs/{job_id}/result", params={"wait": 60}).json()["result"] is not None:
                    statuses[job_id] = "FINISHED"  # a result exists only once the job is FINISHED
                elif (st := client.get(f"/jobs/{job_id}/status").json()["status"]) in ("FINISHED", "REJECTED"):
                    statuses[job_id] = st
        took = time.perf_counter() - start
        machine, cgroups = machine_cpu_s() - machine_before, sandbox_cgroups_cpu_s() - cgroups_before
        own = time.process_time() - own_before
        done.set()
        if sampler:
            sampler.join()
    cpu = {"machine": round(machine / jobs, 3),
           "inside sandbox cgroups (exact, exited ones included)": round(cgroups / jobs, 3)}
    if sampler:
        for pid, (name, cpu_s) in ended.items():  # its whole life, less what it had used before the burst
            used[pid] = (name, cpu_s - first.get(pid, (name, 0.0))[1])
        groups = {g: cgroups if g == GVISOR else 0.0 for g in CPU_GROUPS}
        for name, cpu_s in used.values():
            group = next((g for g, names in CPU_GROUPS.items() if name.startswith(names)), None)
            if group:
                groups[group] += cpu_s
        groups["the bench (its HTTP client and these samplers)"] = own
        cpu.update({g: round(c / jobs, 3) for g, c in groups.items()})
        rest = "the rest (kernel threads, other processes)" if ended else "the rest (short-lived processes, kernel threads)"
        cpu[rest] = round((machine - sum(groups.values())) / jobs, 3)
    return {"service_jobs_per_s": round(jobs / took, 2),
            "finished": sum(1 for st in statuses.values() if st == "FINISHED"), "lost": jobs - len(statuses),
            "cpu_core_s_per_job": cpu, **({"pss_peak_mib": round(peak / 1024)} if observe_pid else {})}


def _service_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"serve_app" in cmd and f"PORT={port}".encode() in env:
            return int(proc.name)
    raise RuntimeError("service process not found")


def print_table(r: dict) -> None:
    print(f"\nlatency (s), {r['runs']} runs each; ratio = p50 / floor p50")
    print(f"{'script':<10} {'path':<19} {'p50':>7} {'p95':>7} {'max':>7} {'ratio':>7}")
    for name, paths in r["latency_s"].items():
        floor = paths["floor"]["p50"]
        for path, s in paths.items():
            print(f"{name:<10} {path:<19} {s['p50']:7.3f} {s['p95']:7.3f} {s['max']:7.3f} {s['p50'] / floor:7.2f}")
    t = r["throughput"]
    print(f"\nthroughput, {r['jobs']} hello-world jobs at once, {r['slots']} slots: "
          f"service {t['service_jobs_per_s']} jobs/s, floor {t['floor_jobs_per_s']} jobs/s (before "
          f"{t['floor_before_after'][0]}, after {t['floor_before_after'][1]}; ratio {t['ratio_to_floor']}), "
          f"finished {t['finished']}, lost {t['lost']}")
    print("CPU per job during it (core-seconds): " + ", ".join(f"{k} {v}" for k, v in t["cpu_core_s_per_job"].items()))
    o = t["observed burst"]
    print(f"the same burst again, observed (memory, CPU by process): {o['service_jobs_per_s']} jobs/s, finished "
          f"{o['finished']}, lost {o['lost']}; CPU per job: " + ", ".join(f"{k} {v}" for k, v in o["cpu_core_s_per_job"].items()))
    m = r["memory_mib"]
    print(f"memory (PSS of the service's process tree): idle {m['idle']} MiB, under load {m['under_load_peak']} MiB")


if __name__ == "__main__":
    main()
