"""A soak (not a timed test): the whole service for N minutes at ~80% of its measured throughput
with a mix of well-behaved and hostile jobs; prints a table and writes everything to JSON.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate JOBS_PER_S] [--engine docker|runsc] [--out bench/soak.json]

1. starts PostgreSQL, Redis, the test NuGet feed and the service (`python -m serve_app`) on
   loopback, as the tests and bench/run.py do;
2. without --rate, measures the service's throughput for the job mix below with a burst of it
   (--calibrate-jobs, two rounds of the table by default) and takes --load (80%) of it: a
   hello-only rate would overload the service, as the hostile jobs hold a slot for their whole
   wall time;
3. submits the mix at that steady rate for --minutes (a bounded loop: rate × minutes jobs), reads
   every result and checks it against the kind's expected outcome ("wrong"), and waits up to
   --grace-s after the last submission: a job not FINISHED by then, REJECTED, or not accepted is
   "lost";
4. samples, at the start, every minute and at the end (with the service idle again): RSS and open
   file descriptors of every service process (the process tree of `python -m serve_app`: Ray's
   gcs_server, raylet, dashboard, the Serve proxy and replicas, the dispatcher, launcher and pool
   actors, ...), its gVisor processes, sandbox containers and runsc bundles, network namespaces,
   iptables rules, files in /tmp, in the Ray session and in the node's NuGet cache, database rows
   and connections, Redis keys and clients; and after the service stopped, what it left behind.

Run it where nothing else starts sandboxes or Ray: the tests remove sandboxes that are not theirs
(and a stopping service reaps every sandbox on the machine), which shows here as wrong or lost
jobs; the machine-wide figures (network namespaces, iptables, /tmp, Docker's daemons) count what
others do too. Each sample counts the other Ray heads and pytest runs it sees.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import SCRIPTS, quiet, unique  # noqa: E402
from cluster.agent_types import MONO_6  # noqa: E402
from executors.engines import oci, runsc  # noqa: E402
from executors.spec import LABEL  # noqa: E402
from testing.nuget_feed import build_packages, serve as serve_feed  # noqa: E402
from testing.scripts import FORK_BOMB, MEMORY_BOMB, THREAD_BOMB  # noqa: E402
from testing.services import api_service, postgres, redis_server  # noqa: E402


def limits(**lim) -> dict:
    """A jobConfig with the job's own limits (such a job starts a sandbox of its own, not a pooled one)."""
    return {"limits": lim}


FLOOD = "var s = new string('x', 8192);\nwhile (true) Console.Out.Write(s);"  #: as test_hostile's output flood
NUGET = "{nuget}"  #: stands for the test feed's NuGet.Config in a job's config


def _ok(stdout: str) -> Callable[[dict], Optional[str]]:
    return lambda r: None if (r["finishedWith"], r["exitCode"], r["stdout"]) == ("SUCCEEDED", 0, stdout) else "not SUCCEEDED with its output"


def _failed(exit_code: int, stderr: str) -> Callable[[dict], Optional[str]]:
    return lambda r: (None if (r["finishedWith"], r["exitCode"]) == ("FAILED", exit_code) and stderr in r["stderr"]
                      else f"not FAILED with exit code {exit_code} and {stderr!r} on stderr")


def _contained(r: dict) -> Optional[str]:  # as test_hostile asserts of its bombs
    return None if "survived" not in r["stdout"] and r["finishedWith"] in ("TIME_LIMIT_EXCEEDED", "FAILED") else "not contained"


#: kind → (weight, script (a function: a new one each time), jobConfig, expected outcome: None or what is wrong)
MIX: dict[str, tuple[int, Callable[[], str], Optional[dict], Callable[[dict], Optional[str]]]] = {
    "hello": (7, lambda: SCRIPTS["hello"], None, _ok("Hello\n")),
    "hello-new": (2, lambda: unique(SCRIPTS["hello"]), None, _ok("Hello\n")),  # compiled, never cached
    "nuget": (2, lambda: SCRIPTS["nuget"], {"nugetConfigXml": NUGET}, _ok("[Hello, bench]\n")),
    "exception": (2, lambda: 'throw new InvalidOperationException("soak");', None,
                  _failed(1, "InvalidOperationException")),
    "exit-code": (1, lambda: "Environment.Exit(3);", None, _failed(3, "")),
    "compile-error": (1, lambda: 'int x = "soak";', None, _failed(1, "error CS")),
    "timeout": (1, lambda: "while (true) { }", limits(wallTimeS=2),
                lambda r: None if r["finishedWith"] == "TIME_LIMIT_EXCEEDED" and r["limitExceeded"] == "WALL_TIME" else "not TIME_LIMIT_EXCEEDED"),
    # time enough to reach the limit on a busy machine (with 3 s, 1 in 11 was killed at the time limit first)
    "memory-bomb": (1, lambda: MEMORY_BOMB, limits(wallTimeS=10, memoryMb=128),
                    lambda r: None if r["finishedWith"] == "FAILED" and r["outOfMemory"] else "not FAILED out of memory"),
    "fork-bomb": (1, lambda: FORK_BOMB, limits(wallTimeS=3), _contained),
    "thread-bomb": (1, lambda: THREAD_BOMB, limits(wallTimeS=3), _contained),
    "output-flood": (1, lambda: FLOOD, limits(wallTimeS=2, outputBytes=4096),
                     lambda r: None if r["stdoutTruncated"] and len(r["stdout"]) == 4096 else "stdout not capped at 4096"),
}
ROUND = sum(w for w, *_ in MIX.values())  #: jobs in one round of the table


def plan(n: int, seed: int = 0) -> list[str]:
    """The kinds of n jobs: rounds of the table, each in its own fixed random order."""
    rng, kinds = random.Random(seed), []
    while len(kinds) < n:
        r = [k for k, (w, *_) in MIX.items() for _ in range(w)]
        rng.shuffle(r)
        kinds += r
    return kinds[:n]


@dataclass
class Job:
    kind: str
    submitted: float  #: Unix time of the POST
    job_id: str = ""
    http: int = 0  #: the POST's status (0: no answer)
    status: str = ""  #: FINISHED or REJECTED once known
    wrong: str = ""  #: how the result differs from the kind's expected outcome
    rejected_reason: str = ""
    latency_s: Optional[float] = None  #: POST → the sandbox's end (the result's finishedAt)
    result: dict = field(default_factory=dict, repr=False)


class Jobs:
    """Submits jobs and collects their results, each on threads of its own (one HTTP client each)."""

    def __init__(self, url: str, feed_config: str):
        self.url, self.feed_config = url, feed_config
        self.jobs: list[Job] = []
        self.lock = threading.Lock()
        self.local = threading.local()

    def client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.url, timeout=120)
        return self.local.client

    def submit(self, kind: str) -> None:
        _, script, config, _ = MIX[kind]
        payload = {"script": script(), "agentType": MONO_6.name}
        if config:
            payload["jobConfig"] = {k: self.feed_config if v == NUGET else v for k, v in config.items()}
        job = Job(kind, time.time())
        with self.lock:
            self.jobs.append(job)
        try:
            r = self.client().post("/jobs", json={"requestId": str(uuid.uuid4()), "senderId": "soak", "payload": payload})
            job.http = r.status_code
            if r.status_code == 201:
                job.job_id = r.json()["jobId"]
        except httpx.HTTPError:
            pass

    def pending(self) -> list[Job]:
        with self.lock:
            return [j for j in self.jobs if not j.status]

    def collect(self, done_submitting: threading.Event, deadline: Callable[[], float]) -> None:
        """Reads results oldest first (they run about in that order), each long-polled, until every
        submitted job is resolved or the deadline passes."""
        c = self.client()
        while time.time() < deadline():
            todo = self.pending()
            if not todo:
                if done_submitting.is_set():
                    return
                time.sleep(0.2)
                continue
            job = todo[0]
            if not job.job_id:
                if job.http or time.time() - job.submitted > 130:  # refused, or the POST got no answer
                    job.status = "NOT ACCEPTED"
                else:
                    time.sleep(0.05)  # its POST is under way
                continue
            try:
                result = c.get(f"/jobs/{job.job_id}/result", params={"wait": 5}).json().get("result")
                if result is not None:
                    job.result = result
                    job.wrong = MIX[job.kind][3](result) or ""
                    if result.get("finishedAt"):
                        job.latency_s = datetime.fromisoformat(result["finishedAt"].replace("Z", "+00:00")).timestamp() - job.submitted
                    job.status = "FINISHED"
                elif (st := c.get(f"/jobs/{job.job_id}/status").json())["status"] == "REJECTED":
                    job.rejected_reason = st.get("rejectedReason") or ""
                    job.status = "REJECTED"
            except (httpx.HTTPError, ValueError, KeyError):
                time.sleep(1)  # the service is busy or restarting: try again

    def counts(self) -> dict:
        with self.lock:
            jobs = list(self.jobs)
        return {"submitted": len(jobs), "finished": sum(j.status == "FINISHED" for j in jobs),
                "wrong": sum(bool(j.wrong) for j in jobs), "rejected": sum(j.status == "REJECTED" for j in jobs),
                "not_accepted": sum(j.status == "NOT ACCEPTED" for j in jobs),
                "in_flight": sum(not j.status for j in jobs)}


def run_jobs(jobs: Jobs, kinds: list[str], rate: float | None, grace_s: float,
             on_minute: Callable[[], None] | None = None) -> tuple[float, float]:
    """Submits `kinds` (at `rate` jobs/s, or all at once), collects them; returns (submission
    seconds, seconds until the last was resolved)."""
    done, start = threading.Event(), time.monotonic()
    end_of_submission = [float("inf")]
    collector = threading.Thread(target=jobs.collect, args=(done, lambda: end_of_submission[0] + grace_s), daemon=True)
    collector.start()
    next_minute = start + 60
    with ThreadPoolExecutor(16 if rate is None else 4) as pool:
        for i, kind in enumerate(kinds):
            if rate is not None:
                while (wait := start + i / rate - time.monotonic()) > 0:
                    if on_minute and time.monotonic() >= next_minute:
                        next_minute += 60
                        pool.submit(on_minute)  # so the schedule does not wait for the sample
                    time.sleep(min(wait, 1.0))
            pool.submit(jobs.submit, kind)
    submitted_in = time.monotonic() - start
    end_of_submission[0] = time.time()
    done.set()
    while collector.is_alive():
        collector.join(1.0)
        if on_minute and time.monotonic() >= next_minute:
            next_minute += 60
            on_minute()
    return submitted_in, time.monotonic() - start


# ---------------------------------------------------------------------------------------------
# samples


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    kids = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return kids
    for task in tasks:
        kids += [int(c) for c in _read(task / "children").split()]
    return kids


def process_name(argv: list[str]) -> str:
    """A readable name from a command line: Ray workers and dashboard modules by their title,
    programs by their file name, Python by its script or module."""
    if not argv:
        return "?"
    if argv[0].startswith(("ray::", "ray-dashboard-")):
        return argv[0].split(" (")[0]
    exe = os.path.basename(argv[0])
    if exe.startswith("python"):
        rest = argv[1:]
        while rest and rest[0] in ("-u", "-B", "-E", "-s", "-I"):
            rest = rest[1:]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return f"python -m {rest[1]}"
        if rest[:1] == ["-c"] and len(rest) > 1:
            return "python -c " + rest[1].split(";")[0].replace("from ", "").replace(" import main", "")
        if rest:
            return os.path.basename(rest[0])
    return exe


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "Threads"):
            out[key] = int(value.split()[0])
    return out


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _fd_kinds(pid: int) -> dict[str, int]:
    """A process's open descriptors by kind: socket, pipe, anon_inode (eventfd, epoll, ...), file."""
    kinds: dict[str, int] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if not target.startswith("/") else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def service_processes(root_pid: int) -> tuple[list[dict], dict]:
    """Every process of the service's tree (name, RSS, RssAnon, threads, open fds), and its gVisor
    sandboxes' processes (runsc and below: per job, so only counted) as one group."""
    procs, gvisor, todo = [], {"processes": 0, "rss_kib": 0}, [root_pid]
    while todo:
        pid = todo.pop()
        argv = _cmdline(pid)
        st = _status(pid)
        if not st:
            continue  # ended meanwhile
        if argv and os.path.basename(argv[0]).startswith("runsc"):
            stack = [pid]
            while stack:
                p = stack.pop()
                gvisor["processes"] += 1
                gvisor["rss_kib"] += _status(p).get("VmRSS", 0)
                stack += _children(p)
            continue
        procs.append({"pid": pid, "name": process_name(argv), "rss_kib": st.get("VmRSS", 0),
                      "rss_anon_kib": st.get("RssAnon", 0), "threads": st.get("Threads", 0), "fds": _fds(pid),
                      "fd_kinds": _fd_kinds(pid)})
        todo += _children(pid)
    return sorted(procs, key=lambda p: p["pid"]), gvisor


def daemons() -> list[dict]:
    """Docker's daemons (the machine's, not the service's alone)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        name = _read(proc / "comm").strip()
        if name in ("dockerd", "containerd"):
            pid = int(proc.name)
            found.append({"pid": pid, "name": name, "rss_kib": _status(pid).get("VmRSS", 0), "fds": _fds(pid)})
    return found


def others(root_pid: int) -> dict:
    """What else runs on the machine that touches what is sampled: Ray heads (gcs_server) and
    pytest runs not of this service. The tests and other services remove sandboxes that are not
    theirs (a test's cleanup, a stopping service's reaper), and add files to /tmp."""
    mine, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        mine.add(pid)
        todo += _children(pid)
    found = {"ray_heads": 0, "pytest_runs": 0}
    for proc in Path("/proc").glob("[0-9]*"):
        argv = _cmdline(int(proc.name))
        if int(proc.name) in mine or not argv:
            continue
        if os.path.basename(argv[0]) == "gcs_server":
            found["ray_heads"] += 1
        elif "pytest" in argv[1:3] or os.path.basename(argv[0]) in ("pytest", "py.test"):
            found["pytest_runs"] += 1
    return found


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def tree_size(path: Path, skip: Path | None = None) -> dict:
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if skip is not None and Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        files += len(filenames)
        for f in filenames:
            try:
                size += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return {"files": files, "mib": round(size / 2**20, 2)}


def _entries(path: Path) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


class Sampler:
    def __init__(self, svc, node_id: str, session: Path, nuget_dir: Path, pg_url: str, redis_url: str, jobs: Jobs):
        from sqlalchemy import create_engine
        import redis

        self.svc, self.node_id, self.session, self.nuget_dir, self.jobs = svc, node_id, session, nuget_dir, jobs
        self.db = create_engine(pg_url, pool_size=1, max_overflow=0)
        self.db_name = pg_url.rsplit("/", 1)[1]
        self.redis = redis.Redis.from_url(redis_url)
        self.t0 = time.time()
        self.samples: list[dict] = []

    def database(self) -> dict:
        from sqlalchemy import text
        from serve_app.models import Job as Row

        with self.db.connect() as c:
            by_status = {s: n for s, n in c.execute(text(f"SELECT status, count(*) FROM {Row.__tablename__} GROUP BY status"))}
            size = c.execute(text("SELECT pg_database_size(current_database())")).scalar()
            conns = c.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": self.db_name}).scalar()
        return {"rows": sum(by_status.values()), "rows_by_status": by_status, "size_mib": round(size / 2**20, 2),
                "connections (the sampler's included)": conns}

    def redis_info(self) -> dict:
        info = self.redis.info()
        return {"keys": self.redis.dbsize(), "clients": info["connected_clients"],
                "pubsub_channels": len(self.redis.pubsub_channels()), "used_memory_mib": round(info["used_memory"] / 2**20, 2)}

    def sandboxes(self) -> dict:
        docker = [line.split("\t") for line in _run("docker", "ps", "-a", "--filter", f"label={LABEL}", "--format",
                                                     f'{{{{.Names}}}}\t{{{{.Label "{LABEL}.node"}}}}').splitlines()]
        bundles = runsc.sandboxes()
        cgroups = {d.name for d in Path("/sys/fs/cgroup").glob(f"*{oci.CGROUP_PARENT}/*") if d.is_dir()}
        return {
            "docker_containers (this node's)": sum(1 for d in docker if d[-1] == self.node_id),
            "docker_containers (all with the label)": len(docker),
            "runsc_bundles (this node's)": sum(1 for a in bundles.values() if a.get(f"{LABEL}.node") == self.node_id),
            "runsc_bundles (all)": len(bundles),
            "runsc_state_entries": _entries(runsc.STATE_DIR),
            "runsc_job_links": _entries(runsc.JOBS_DIR),
            "runsc_events_kib": round(sum(p.stat().st_size for p in runsc.RUN_DIR.glob("events*") if p.is_file()) / 1024, 1)
            if runsc.RUN_DIR.is_dir() else 0,
            "sandbox_cgroups": len(cgroups),
            "mounts (dotnet-scripts)": sum("dotnet-scripts" in line for line in _read("/proc/mounts").splitlines()),
        }

    def take(self, label: str) -> dict:
        procs, gvisor = service_processes(self.svc.pid)
        ray_tmp = self.session.parent
        s = {
            "label": label, "t_s": round(time.time() - self.t0, 1), "jobs": self.jobs.counts(),
            "processes": procs,
            "service_total": {"processes": len(procs), "rss_mib": round(sum(p["rss_kib"] for p in procs) / 1024, 1),
                              "fds": sum(p["fds"] or 0 for p in procs), "threads": sum(p["threads"] for p in procs)},
            "gvisor": {"processes": gvisor["processes"], "rss_mib": round(gvisor["rss_kib"] / 1024, 1)},
            "sandboxes": self.sandboxes(),
            "network": {"ip_netns": len(_run("ip", "netns", "list").splitlines()),
                        "docker_netns": _entries(Path("/run/docker/netns")),
                        "iptables_rules": len(_run("iptables-save").splitlines())},
            "files": {"tmp_entries": _entries(Path("/tmp")),
                      "tmp_files (without Ray's)": tree_size(Path("/tmp"), skip=ray_tmp)["files"],
                      "ray_session": tree_size(self.session),
                      "nuget_cache": tree_size(self.nuget_dir),
                      "nuget_cache_tmp_entries": _entries(self.nuget_dir / "tmp"),
                      "nuget_sandbox_folders": _entries(self.nuget_dir / "sandboxes"),
                      "service_log_kib": round(self.svc.log.stat().st_size / 1024, 1)},
            "database": self.database(),
            "redis": self.redis_info(),
            "docker_daemons": daemons(),
            "others_on_the_machine": others(self.svc.pid),
            "tmp_names": sorted(os.listdir("/tmp")),
            "mem_available_mib": int(next(line.split()[1] for line in _read("/proc/meminfo").splitlines()
                                          if line.startswith("MemAvailable"))) // 1024,
        }
        self.samples.append(s)
        j, t = s["jobs"], s["service_total"]
        print(f"[{label:>6} t={s['t_s']:7.0f}s] submitted {j['submitted']} finished {j['finished']} in flight {j['in_flight']} "
              f"wrong {j['wrong']} rejected {j['rejected']} | service RSS {t['rss_mib']} MiB fds {t['fds']} "
              f"threads {t['threads']} | gVisor {s['gvisor']['processes']} procs | rows {s['database']['rows']} "
              f"redis keys {s['redis']['keys']}", flush=True)
        return s


def leftovers(node_id: str) -> dict:
    """What the service left once stopped (its node's sandboxes; the machine's netns/iptables)."""
    docker = _run("docker", "ps", "-a", "--filter", f"label={LABEL}.node={node_id}", "--format", "{{.Names}}").split()
    bundles = [n for n, a in runsc.sandboxes().items() if a.get(f"{LABEL}.node") == node_id]
    return {"docker_containers": docker, "runsc_bundles": bundles,
            "sandbox_cgroups (runsc alone's, any node's)": sorted({d.name for d in Path("/sys/fs/cgroup").glob(f"*{oci.CGROUP_PARENT}/*")
                                                                   if d.is_dir()}),
            "ip_netns": len(_run("ip", "netns", "list").splitlines()),
            "docker_netns": _entries(Path("/run/docker/netns")),
            "iptables_rules": len(_run("iptables-save").splitlines()),
            "tmp_entries": _entries(Path("/tmp"))}


def node_id_of(root_pid: int) -> str:
    """The Ray node id of the service's local head (its raylet's --node_id)."""
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        for arg in _cmdline(pid):
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        todo += _children(pid)
    raise RuntimeError("no raylet in the service's process tree")


# ---------------------------------------------------------------------------------------------
# the report


def summarize(jobs: list[Job], log: list[str] = ()) -> dict:
    by_kind = {}
    for kind in MIX:
        js = [j for j in jobs if j.kind == kind]
        lat = sorted(j.latency_s for j in js if j.latency_s is not None)
        by_kind[kind] = {"submitted": len(js), "finished": sum(j.status == "FINISHED" for j in js),
                         "wrong": sum(bool(j.wrong) for j in js), "lost": sum(j.status != "FINISHED" for j in js),
                         "latency_p50_s": round(statistics.median(lat), 2) if lat else None,
                         "latency_max_s": round(lat[-1], 2) if lat else None}
    def lines(j: Job) -> list[str]:  # what the service logged of it
        return [line[-300:] for line in log if j.job_id and j.job_id in line][:10]

    wrong = [{"kind": j.kind, "jobId": j.job_id, "why": j.wrong,
              "result": {k: (v[-300:] if isinstance(v, str) else v) for k, v in j.result.items()}, "log": lines(j)}
             for j in jobs if j.wrong][:20]
    lost = [{"kind": j.kind, "jobId": j.job_id, "http": j.http, "status": j.status or "not FINISHED in time",
             "rejectedReason": j.rejected_reason, "log": lines(j)}
            for j in jobs if j.status != "FINISHED"][:20]
    return {"submitted": len(jobs), "finished": sum(j.status == "FINISHED" for j in jobs),
            "wrong": sum(bool(j.wrong) for j in jobs), "lost": sum(j.status != "FINISHED" for j in jobs),
            "rejected": sum(j.status == "REJECTED" for j in jobs), "not_accepted": sum(j.status == "NOT ACCEPTED" for j in jobs),
            "by_kind": by_kind, "wrong_examples": wrong, "lost_examples": lost}


def flat(s: dict) -> dict[str, float]:
    """The sample's figures (but its processes), as 'group.name' → number."""
    out = {}
    for group in ("service_total", "gvisor", "sandboxes", "network", "files", "database", "redis", "others_on_the_machine"):
        for k, v in s[group].items():
            if isinstance(v, dict):
                out.update({f"{group}.{k}.{k2}": v2 for k2, v2 in v.items() if isinstance(v2, (int, float))})
            elif isinstance(v, (int, float)):
                out[f"{group}.{k}"] = v
    for d in s["docker_daemons"]:
        out[f"docker_daemons.{d['name']}.rss_mib"] = round(d["rss_kib"] / 1024, 1)
        out[f"docker_daemons.{d['name']}.fds"] = d["fds"]
    out["mem_available_mib"] = s["mem_available_mib"]
    return out


def growth(samples: list[dict]) -> dict:
    """What is higher at the end than at the start: each service process that lived through the
    soak (RSS, anonymous RSS, fds, threads, with its RSS at every sample), the other figures, and
    the names added to / gone from /tmp."""
    start, end = samples[0], samples[-1]
    first = {p["pid"]: p for p in start["processes"]}
    procs = []
    for p in end["processes"]:
        a = first.get(p["pid"])
        if a is None:
            continue
        d = {k: p[k] - a[k] for k in ("rss_kib", "rss_anon_kib", "fds", "threads") if p[k] is not None and a[k] is not None}
        if any(v > 0 for v in d.values()):
            trail = [next((q["rss_kib"] // 1024 for q in s["processes"] if q["pid"] == p["pid"]), None) for s in samples]
            fds = [next((q["fds"] for q in s["processes"] if q["pid"] == p["pid"]), None) for s in samples]
            procs.append({"pid": p["pid"], "name": p["name"], "rss_mib": round(d.get("rss_kib", 0) / 1024, 1),
                          "rss_anon_mib": round(d.get("rss_anon_kib", 0) / 1024, 1), "fds": d.get("fds"),
                          "threads": d.get("threads"), "rss_mib_at_each_sample": trail, "fds_at_each_sample": fds,
                          "fd_kinds": {"start": a.get("fd_kinds"), "end": p.get("fd_kinds")}})
    fs, fe = flat(start), flat(end)
    figures = {k: round(fe[k] - fs[k], 3) for k in fe if k in fs and fe[k] is not None and fs[k] is not None and fe[k] > fs[k]}
    return {"processes": sorted(procs, key=lambda p: -p["rss_mib"]), "figures": figures,
            "processes_started": [f"{p['pid']} {p['name']}" for p in end["processes"] if p["pid"] not in first],
            "processes_ended": [f"{p['pid']} {p['name']}" for p in start["processes"]
                                if p["pid"] not in {q["pid"] for q in end["processes"]}],
            "tmp_added": sorted(set(end["tmp_names"]) - set(start["tmp_names"])),
            "tmp_removed": sorted(set(start["tmp_names"]) - set(end["tmp_names"]))}


def print_report(r: dict) -> None:
    j = r["jobs"]
    print(f"\nsoak: {r['minutes']} min at {r['rate_jobs_per_s']} jobs/s ({r['rate_from']}), engine {r['engine']}, "
          f"{r['slots']} slots")
    print(f"jobs: submitted {j['submitted']}, finished {j['finished']}, wrong {j['wrong']}, LOST {j['lost']} "
          f"(rejected {j['rejected']}, not accepted {j['not_accepted']}); the last resolved "
          f"{r['drain_s']} s after the last submission")
    print(f"\n{'kind':<14} {'submitted':>9} {'finished':>9} {'wrong':>6} {'lost':>5} {'p50 s':>7} {'max s':>7}")
    for kind, k in j["by_kind"].items():
        print(f"{kind:<14} {k['submitted']:>9} {k['finished']:>9} {k['wrong']:>6} {k['lost']:>5} "
              f"{k['latency_p50_s'] if k['latency_p50_s'] is not None else '-':>7} {k['latency_max_s'] if k['latency_max_s'] is not None else '-':>7}")
    start, end = r["samples"][0], r["samples"][-1]
    print(f"\nservice processes, start ({start['label']}, t={start['t_s']} s) → end ({end['label']}, t={end['t_s']} s)")
    print(f"{'pid':>7} {'process':<44} {'RSS MiB':>16} {'anon MiB':>16} {'fds':>11} {'threads':>9}")
    first = {p["pid"]: p for p in start["processes"]}
    last = {p["pid"]: p for p in end["processes"]}

    def cell(a, b, scale=1.0, w=16):
        fa = "-" if a is None else f"{a / scale:.0f}" if scale != 1 else f"{a}"
        fb = "-" if b is None else f"{b / scale:.0f}" if scale != 1 else f"{b}"
        return f"{fa + ' → ' + fb:>{w}}"

    for pid in sorted(first.keys() | last.keys(), key=lambda p: ((last.get(p) or first.get(p))["name"], p)):
        a, b = first.get(pid, {}), last.get(pid, {})
        name = (b or a)["name"] if a.get("name") == b.get("name") or not a or not b else f"{a['name']} → {b['name']}"
        print(f"{pid:>7} {name[:44]:<44} {cell(a.get('rss_kib'), b.get('rss_kib'), 1024)} "
              f"{cell(a.get('rss_anon_kib'), b.get('rss_anon_kib'), 1024)} {cell(a.get('fds'), b.get('fds'), w=11)} "
              f"{cell(a.get('threads'), b.get('threads'), w=9)}")
    print(f"\n{'figure':<58} {'start':>10} {'end':>10} {'change':>10} {'max':>10}")
    fs, fe = flat(start), flat(end)
    for key in list(dict.fromkeys([*fs, *fe])):
        a, b = fs.get(key), fe.get(key)
        peak = max((flat(s).get(key) or 0) for s in r["samples"])
        change = "" if a is None or b is None else f"{b - a:+.6g}"
        print(f"{key:<58} {'-' if a is None else f'{a:.6g}':>10} {'-' if b is None else f'{b:.6g}':>10} {change:>10} {peak:>10.6g}")
    g = r["growth"]
    print("\ngrew, start → end: " + (", ".join(f"{p['name']} ({p['pid']}) RSS {p['rss_mib']:+} MiB fds {p['fds']:+} "
                                               f"threads {p['threads']:+}" for p in g["processes"]) or "no process"))
    print("figures that grew: " + ", ".join(f"{k} {v:+g}" for k, v in g["figures"].items()))
    print(f"processes started meanwhile: {g['processes_started']}; ended: {g['processes_ended']}")
    print(f"/tmp: added {g['tmp_added']}, gone {g['tmp_removed']}")
    print(f"\nafter the service stopped: {json.dumps(r['after_stop'])}")
    if j["wrong_examples"]:
        print("wrong, first ones: " + json.dumps(j["wrong_examples"][:3])[:2000])
    if j["lost_examples"]:
        print("lost, first ones: " + json.dumps(j["lost_examples"][:5]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=None, help="jobs/s; default: --load of the mix's measured throughput")
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--calibrate-jobs", type=int, default=2 * ROUND, help="the burst that measures the throughput")
    ap.add_argument("--grace-s", type=float, default=600, help="how long jobs may take to finish after the last submission")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--engine", choices=["docker", "runsc"], default="docker",
                    help="what starts the service's sandboxes (SANDBOX_ENGINE); docker is the default")
    ap.add_argument("--fetched-retention-s", type=float, default=600,
                    help="FETCHED_RETENTION_S: the soak reads every result, so the jobs table levels off at about rate × this")
    ap.add_argument("--out", default=str(ROOT / "bench/soak.json"))
    a = ap.parse_args()
    if not shutil.which("redis-server"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"], check=True, capture_output=True)

    r: dict = {"minutes": a.minutes, "engine": a.engine, "slots": a.slots, "load": a.load,
               "fetched_retention_s": a.fetched_retention_s, "mix": {k: w for k, (w, *_) in MIX.items()},
               "job_configs": {k: c for k, (_, _, c, _) in MIX.items() if c}, "started": datetime.now().isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="dotnet-scripts-soak-") as tmp, \
            serve_feed(build_packages(Path(tmp) / "src")) as feed, postgres() as pg, redis_server() as (redis_url, _):
        pg_url = pg.create_db("soak")
        nuget_dir = Path(tmp) / "nuget"
        with api_service(Path(tmp), LOCAL_SLOTS=str(a.slots), DATABASE_URL=pg_url, REDIS_URL=redis_url,
                         SANDBOX_ENGINE=a.engine, NUGET_CACHE_DIR=str(nuget_dir), FETCHED_RETENTION_S=str(a.fetched_retention_s),
                         # the test feed listens on loopback: allowed as an operator would allow an internal feed
                         EGRESS_ALLOW="127.0.0.1/32") as svc:
            node_id = node_id_of(svc.pid)
            jobs = Jobs(svc.url, feed.config())
            print(f"service up at {svc.url} (pid {svc.pid}, Ray node {node_id[:12]}); measuring ...", flush=True)
            # every kind once (its pool started, the package cached), then the calibration burst
            run_jobs(jobs, list(MIX), None, 300)
            quiet()
            before = len(jobs.jobs)
            _, took = run_jobs(jobs, plan(a.calibrate_jobs, seed=1), None, 600)
            burst = summarize(jobs.jobs[before:], svc.log.read_text(errors="replace").splitlines())
            measured = round(a.calibrate_jobs / took, 3)
            r["calibration"] = {"jobs": a.calibrate_jobs, "jobs_per_s": measured, "lost": burst["lost"], "wrong": burst["wrong"],
                                "wrong_examples": burst["wrong_examples"], "lost_examples": burst["lost_examples"]}
            r["rate_jobs_per_s"] = a.rate or round(a.load * measured, 3)
            r["rate_from"] = "--rate" if a.rate else f"{a.load:.0%} of the mix's {measured} jobs/s burst"
            print(f"calibration: {a.calibrate_jobs} jobs at once, {measured} jobs/s (wrong {burst['wrong']}, lost "
                  f"{burst['lost']}); soaking at {r['rate_jobs_per_s']} jobs/s for {a.minutes} min", flush=True)
            quiet()

            warmup = len(jobs.jobs)
            sampler = Sampler(svc, node_id, svc.ray_logs().parent, nuget_dir, pg_url, redis_url, jobs)
            jobs.jobs = []  # the soak's own jobs from here on
            sampler.take("start")
            minute = [0]

            def every_minute():
                minute[0] += 1
                sampler.take(f"m{minute[0]}")

            n = max(1, round(r["rate_jobs_per_s"] * a.minutes * 60))
            submitted_in, resolved_in = run_jobs(jobs, plan(n, seed=2), r["rate_jobs_per_s"], a.grace_s, every_minute)
            r["submitted_in_s"], r["drain_s"] = round(submitted_in, 1), round(resolved_in - submitted_in, 1)
            quiet()
            sampler.take("end")
            log = svc.log.read_text(errors="replace").splitlines()
            r["jobs"] = summarize(jobs.jobs, log)
            r["warmup_jobs"] = warmup
            r["samples"] = sampler.samples
            r["growth"] = growth(sampler.samples)
            r["ray_session"] = str(sampler.session)
            r["service_log"] = {"lines": len(log), "errors": [line[-300:] for line in log
                                                              if " ERROR " in line or " WARNING " in line or "Traceback" in line][:20]}
            sampler.db.dispose()
        time.sleep(2)
        r["after_stop"] = leftovers(node_id)
    Path(a.out).write_text(json.dumps(r, indent=1))
    print_report(r)
    print(f"\nwritten to {a.out}")


if __name__ == "__main__":
    main()
