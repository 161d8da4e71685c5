"""Shared, session-scoped fixtures: the real service (Ray + Serve + Docker/runsc) over HTTP."""

import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cluster.agent_types import MONO_6
from executors.engines import oci, runsc
from executors.engines.docker import container_config, docker_api
from executors.sandbox import remove_sandbox
from executors.spec import Limits, SandboxSpec
from testing.nuget_feed import build_packages, serve
from testing.services import api_service, postgres
from testing.waiting import until

ROOT = Path(__file__).resolve().parent.parent
MONO = "linux-amd64-mono-6"
WALL_TIME_S = 8  #: short, so the timeout test is quick
MEMORY_MB = 256


POOLED = "dotnet-scripts-job-pool-"  #: pre-started sandboxes waiting for a job: not left behind


def sandbox_containers(pooled: bool = False, running: bool = False) -> list[str]:
    """Names of the sandboxes that exist now (those of jobs; with `pooled`, idle ones too; with
    `running`, Docker's running ones only), whether Docker or runsc alone started them. A pooled
    sandbox that a job took goes by the job's name."""
    out = subprocess.run(["docker", "ps", *([] if running else ["-a"]), "--filter", "label=dotnet-scripts.job",
                          "--format", "{{.Names}}"], capture_output=True, text=True, check=True).stdout
    names = set(out.split()) | set(runsc.sandboxes())
    if runsc.JOBS_DIR.is_dir():
        names |= {link.name for link in runsc.JOBS_DIR.iterdir() if (runsc.BUNDLES_DIR / os.readlink(link)).is_dir()}
    return sorted(n for n in names if pooled or not n.startswith(POOLED))


def containers_created(job_id: str, since: str) -> list[str]:
    """Sandboxes given to a job since a Unix time, created for it or taken from the pool and
    renamed after it: how often it really ran."""
    until = str(int(time.time()) + 1)

    def events(*filters: str) -> list[str]:
        return subprocess.run(["docker", "events", "--since", since, "--until", until, *filters, "--format", "{{.ID}}"],
                              capture_output=True, text=True, check=True, timeout=30).stdout.split()

    alone = [name for action, name, job in runsc.events(float(since)) if gave(action, name, job, job_id)]
    return (events("--filter", f"label=dotnet-scripts.job={job_id}", "--filter", "event=create")
            + events("--filter", f"container=dotnet-scripts-job-{job_id}", "--filter", "event=rename") + alone)


def pooled_sandboxes_taken(job_id: str, since: str) -> list[str]:
    """The pre-started sandboxes a job took since a Unix time (renamed by Docker, or taken from runsc's)."""
    name = f"dotnet-scripts-job-{job_id}"
    renamed = subprocess.run(
        ["docker", "events", "--since", since, "--until", str(int(time.time()) + 1), "--filter", "event=rename",
         "--filter", f"container={name}", "--format", "{{.Actor.Attributes.oldName}}"],
        capture_output=True, text=True, check=True, timeout=30).stdout.split()
    return [n.lstrip("/") for n in renamed] + [taken for action, job, taken in runsc.events(float(since))
                                               if action == "take" and job == name]


def gave(action: str, name: str, job: str, job_id: str) -> bool:
    """Whether a Docker or runsc event gave the job a sandbox: one created for it, or a pooled one
    renamed (Docker) or taken (runsc) under its name."""
    return (action == "create" and job == job_id) or (action in ("rename", "take") and name == f"dotnet-scripts-job-{job_id}")


class ContainerStarts:
    """Watches Docker from its creation to `stop()` and counts the sandboxes given to each job
    (created for it, or taken from the pool and renamed after it). Unlike `containers_created`,
    it misses none however many there are (the daemon's own backlog holds 256 events)."""

    def __init__(self):
        self.since = time.time()
        # from `since` on: what happens before the daemon has subscribed it is replayed, nothing is missed
        self.proc = subprocess.Popen(
            ["docker", "events", "--since", f"{self.since:.6f}", "--filter", "type=container", "--filter", "event=create",
             "--filter", "event=rename",
             "--format", "{{.Action}}\t{{index .Actor.Attributes \"name\"}}\t{{index .Actor.Attributes \"dotnet-scripts.job\"}}"],
            stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []

    def stop(self) -> None:
        time.sleep(1)  # the daemon's last events reach the pipe (nothing tells when they have)
        self.proc.terminate()
        self.lines = self.proc.communicate(timeout=30)[0].splitlines()
        self.lines += ["\t".join(e) for e in runsc.events(self.since)]

    def of(self, job_id: str) -> int:
        n = 0
        for line in self.lines:
            if gave(*(line.split("\t") + ["", ""])[:3], job_id):
                n += 1
        return n


@pytest.fixture(scope="session")
def pg_server():
    with postgres() as server:
        yield server


@pytest.fixture(scope="session")
def new_database(request, tmp_path_factory):
    """Makes empty databases of the kind this test run is parametrized with."""
    kind = request.param

    def make(name: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/{name}.db"
        return request.getfixturevalue("pg_server").create_db(name)

    make.kind = kind
    return make


@pytest.fixture(scope="session")
def database_url(new_database) -> str:
    """Every API test runs on both databases: SQLite (the embedded default) and PostgreSQL."""
    return new_database("jobs")


def pytest_generate_tests(metafunc):
    if "new_database" in metafunc.fixturenames:
        # PostgreSQL is a server the tests start: integration; SQLite runs with the unit tests
        metafunc.parametrize("new_database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
                             indirect=True, scope="session")


@pytest.fixture(scope="session")
def service(database_url, tmp_path_factory):
    """The whole service, started as the README starts it, on a free port."""
    env = dict(DATABASE_URL=database_url, LOCAL_SLOTS="2", WALL_TIME_S=str(WALL_TIME_S),
               MEMORY_MB=str(MEMORY_MB), OUTPUT_BYTES="65536",
               # the test NuGet feed listens on loopback: allowed here as an operator would allow an internal feed
               EGRESS_ALLOW="127.0.0.1/32", NUGET_CACHE_DIR=str(tmp_path_factory.mktemp("nuget-cache")),
               NUGET_MAX_EXTRACT_MB="16",
               # the API's tests run on runsc alone; the cluster's (tests/cluster) on the default, Docker
               SANDBOX_ENGINE="runsc")
    other = SandboxSpec(job_id=f"other-node-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                        node_id="another-node", limits=Limits(wall_time_s=7200))
    before = set(sandbox_containers(pooled=True))
    try:
        with api_service(tmp_path_factory.mktemp("service"), **env) as svc:
            yield svc
            # another node's sandbox on this machine (its deadline far off): the service's stop leaves it
            docker_api().create_container_from_config(container_config(other), other.name)
        left = set(sandbox_containers(pooled=True)) - before - {other.name}
        for name in left:
            remove_sandbox(name)
        assert not left, f"{len(left)} sandboxes were left behind: {sorted(left)}"
        assert other.name in sandbox_containers(), "the service's stop removed another node's sandbox"
    finally:
        remove_sandbox(other.name)


@pytest.fixture(scope="session")
def nuget_packages(tmp_path_factory) -> dict[tuple[str, str], bytes]:
    """The test packages, compiled with the sandbox image's mcs and packed (id, version → .nupkg)."""
    return build_packages(tmp_path_factory.mktemp("nupkg-src"))


@pytest.fixture(scope="session")
def nuget_feed(nuget_packages):
    """A real NuGet feed (v3, v2, private v3) on loopback holding the test packages."""
    with serve(nuget_packages) as feed:
        yield feed


@pytest.fixture(scope="session")
def client(service):
    with httpx.Client(base_url=service.url, timeout=30) as c:
        yield c


class Jobs:
    """Submits scripts and waits for their jobs, as a client would."""

    def __init__(self, client: httpx.Client):
        self.client = client
        self.n = 0

    def submit(self, script: str, agent_type: str = MONO, request_id: str | None = None,
               job_config: dict | None = None, **given) -> httpx.Response:
        """`given`: more of the payload (stdin, args)."""
        self.n += 1
        rid = request_id or f"req-{os.getpid()}-{time.time_ns()}-{self.n}"[:36]
        payload = {"script": script, "agentType": agent_type, **({"jobConfig": job_config} if job_config else {}), **given}
        return self.client.post("/jobs", json={"requestId": rid, "senderId": "tests", "payload": payload})

    def wait(self, job_id: str, timeout: float = 60) -> dict:
        seen = {}

        def ended() -> dict | None:
            seen["job"] = job = self.client.get(f"/jobs/{job_id}").json()
            return job if job["status"] in ("FINISHED", "REJECTED") else None

        return until(ended, timeout, lambda: f"job {job_id} finished: {seen.get('job')}", interval=0.2)

    def run(self, script: str, timeout: float = 60, job_config: dict | None = None, **given) -> dict:
        r = self.submit(script, job_config=job_config, **given)
        assert r.status_code == 201, r.text
        return self.wait(r.json()["jobId"], timeout)


@pytest.fixture(scope="session")
def jobs(client) -> Jobs:
    return Jobs(client)


def leftovers() -> list[str]:
    """What a test run must not leave behind on the machine."""
    found = [f"container {n}" for n in sandbox_containers(pooled=True)]
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    found += [f"iptables chain {c}" for c in ("DS-EGRESS", "DS-EGRESS-HOST") if f"-N {c}" in rules]
    nets = subprocess.run(["docker", "network", "ls", "--filter", "label=dotnet-scripts.egress", "--format", "{{.Name}}"],
                          capture_output=True, text=True).stdout.split()
    found += [f"docker network {n}" for n in nets]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith("ds-")]
    if runsc.STATE_DIR.is_dir():
        alone = subprocess.run(runsc.runsc("list", "-quiet"), capture_output=True, text=True).stdout.split()
        found += [f"runsc sandbox {c}" for c in alone]
    found += [f"cgroup {d}" for d in Path("/sys/fs/cgroup").glob(f"*{oci.CGROUP_PARENT}/*") if d.is_dir()]
    mounts = open("/proc/mounts").read()
    found += [f"mount {line.split()[1]}" for line in mounts.splitlines() if "dotnet-scripts" in line]
    return found


def pytest_sessionfinish(session, exitstatus):
    if session.config.option.collectonly or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if not any(item.get_closest_marker("integration") for item in session.items):
        return  # unit tests alone (-m "not integration") start nothing that could be left
    left = leftovers()
    if left:
        print("\nLEFT BEHIND by the test run: " + ", ".join(left))
        session.exitstatus = 1
