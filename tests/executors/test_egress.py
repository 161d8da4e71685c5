"""Egress mode under gVisor: a test host made "public" in a network namespace is reachable; the
host's own addresses, private and metadata addresses (served by the same test host, so nothing
would leave the machine even if a rule were missing) are rejected at once; `none` reaches nothing."""

import socket
import subprocess
import sys
import threading
import uuid

import pytest

from cluster.agent_types import MONO_6
from executors import network
from executors.spec import Limits, SandboxSpec
from executors.sandbox import run_sandbox
from testing.waiting import until

pytestmark = pytest.mark.integration

NS = "ds-test-pub"
PUBLIC = "198.51.100.2"  #: TEST-NET-2, held by our namespace
PRIVATE = "10.99.0.2"  #: private range, also held by our namespace
METADATA = "169.254.169.254"  #: cloud metadata, also held by our namespace
PORT = 8080


def sh(*cmd: str, check: bool = True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def host_address() -> str:
    out = sh("ip", "-4", "-o", "addr", "show", "scope", "global").stdout
    for line in out.splitlines():
        dev, addr = line.split()[1], line.split()[3].split("/")[0]
        if not dev.startswith(("docker", "br-", "ds-", "veth")):
            return addr
    raise AssertionError("no global address on this host")


@pytest.fixture(scope="module")
def public_host():
    sh("ip", "netns", "add", NS)
    server = None
    try:
        sh("ip", "link", "add", "ds-pub0", "type", "veth", "peer", "name", "ds-pub1")
        sh("ip", "link", "set", "ds-pub1", "netns", NS)
        sh("ip", "addr", "add", "198.51.100.1/24", "dev", "ds-pub0")
        sh("ip", "link", "set", "ds-pub0", "up")
        for addr in (f"{PUBLIC}/24", f"{PRIVATE}/32", f"{METADATA}/32"):
            sh("ip", "netns", "exec", NS, "ip", "addr", "add", addr, "dev", "ds-pub1")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "ds-pub1", "up")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", NS, "ip", "route", "add", "default", "via", "198.51.100.1")
        for addr in (PRIVATE, METADATA):
            sh("ip", "route", "add", f"{addr}/32", "dev", "ds-pub0")
        server = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-m", "http.server", str(PORT),
                                   "--bind", "0.0.0.0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: sh("ip", "netns", "exec", NS, "bash", "-c", f"echo > /dev/tcp/127.0.0.1/{PORT}",
                         check=False).returncode == 0, 30, "the public test host listens", interval=0.1)
        yield
    finally:
        if server:
            server.terminate()
            server.wait(10)
        for addr in (PRIVATE, METADATA):
            sh("ip", "route", "del", f"{addr}/32", "dev", "ds-pub0", check=False)
        sh("ip", "link", "del", "ds-pub0", check=False)
        sh("ip", "netns", "del", NS, check=False)
        network.remove_egress()


@pytest.fixture
def host_listener():
    """A 'cluster service' on all of the host's addresses; records who connected."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen()
    srv.settimeout(0.2)
    seen: list = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
                seen.append(addr)
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], seen
    stop.set()
    t.join(2)
    srv.close()


PROBE = """
void Probe(string host, int port) {
    var sw = Stopwatch.StartNew();
    var c = new System.Net.Sockets.TcpClient();
    string r;
    try { r = c.ConnectAsync(host, port).Wait(4000) ? "OPEN" : "TIMEOUT"; }
    catch (Exception) { r = "REFUSED"; }
    WriteLine(host + ":" + port + " " + r + " " + sw.ElapsedMilliseconds);
}
"""


def probe(targets: list[tuple[str, int]], mode: str) -> dict[str, tuple[str, int]]:
    script = PROBE + "".join(f'Probe("{h}", {p});\n' for h, p in targets)
    spec = SandboxSpec(job_id=f"egress-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                       network=mode, limits=Limits(wall_time_s=40))
    o = run_sandbox(spec, script)
    assert o.exit_code == 0, o.stderr
    result = {}
    for line in o.stdout.splitlines():
        target, state, ms = line.split()
        result[target] = (state, int(ms))
    return result


def test_egress_reaches_public_and_nothing_of_the_host_or_private_ranges(public_host, host_listener):
    port, seen = host_listener
    host = host_address()
    gateway = network.SUBNET.rsplit(".", 1)[0] + ".1"
    r = probe([(PUBLIC, PORT), (PRIVATE, PORT), (METADATA, PORT), (host, port), (gateway, port),
               ("127.0.0.1", port)], "egress")
    assert r[f"{PUBLIC}:{PORT}"][0] == "OPEN"
    for target in (f"{PRIVATE}:{PORT}", f"{METADATA}:{PORT}", f"{host}:{port}", f"{gateway}:{port}", f"127.0.0.1:{port}"):
        state, ms = r[target]
        assert state == "REFUSED" and ms < 1500, (target, state, ms)  # rejected at once, not a hang
    assert seen == []  # the host's service never saw a connection


def test_egress_http_request_to_a_public_address(public_host):
    script = (f'var body = new System.Net.Http.HttpClient().GetStringAsync("http://{PUBLIC}:{PORT}/").Result;\n'
              'WriteLine(body.Contains("Directory listing") ? "got listing" : "unexpected");')
    spec = SandboxSpec(job_id=f"egress-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                       network="egress", limits=Limits(wall_time_s=40))
    o = run_sandbox(spec, script)
    assert (o.exit_code, o.stdout) == (0, "got listing\n"), o.stderr


def test_operator_allowed_networks_pass(public_host):
    spec = SandboxSpec(job_id=f"egress-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                       network="egress", egress_allow=(f"{PRIVATE}/32",), limits=Limits(wall_time_s=40))
    o = run_sandbox(spec, PROBE + f'Probe("{PRIVATE}", {PORT});\nProbe("{METADATA}", {PORT});')
    assert o.stdout.split("\n")[0].split()[1] == "OPEN"
    assert o.stdout.split("\n")[1].split()[1] == "REFUSED"
    network.ensure_egress()  # back to no exceptions


def test_none_mode_reaches_nothing(public_host):
    r = probe([(PUBLIC, PORT)], "none")
    assert r[f"{PUBLIC}:{PORT}"][0] != "OPEN"


def test_rules_are_installed_idempotently_and_removed_completely(public_host):
    network.ensure_egress()
    network.ensure_egress()
    hooks = sh("iptables", "-S", "DOCKER-USER").stdout.count(network.CHAIN_FORWARD)
    assert hooks == 1
    assert sh("iptables", "-S", "INPUT").stdout.count(network.CHAIN_INPUT) == 1
    network.remove_egress()
    assert network.CHAIN_FORWARD not in sh("iptables", "-S").stdout
    assert network.CHAIN_INPUT not in sh("iptables", "-S").stdout
    assert sh("docker", "network", "inspect", network.NETWORK, check=False).returncode != 0
