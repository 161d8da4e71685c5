"""Egress mode under gVisor: a test host made "public" in a network namespace is reachable; the
host's own addresses, private and metadata addresses (served by the same test host, so nothing
would leave the machine even if a rule were missing) are rejected at once; `none` reaches nothing."""

import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from cluster.agent_types import MONO_6
from executors import network
from executors.engines.docker import docker_api
from executors.sandbox import Sandbox, run_sandbox
from executors.spec import Limits, SandboxSpec
from tests.conftest import sandbox_containers
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
        network.remove_egress(docker_api())


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
    gateway = str(network.SUBNETS[1])  # some sandbox's gateway: the host's address on that bridge
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
    network.ensure_rules()  # back to no exceptions


def test_none_mode_reaches_nothing(public_host):
    r = probe([(PUBLIC, PORT)], "none")
    assert r[f"{PUBLIC}:{PORT}"][0] != "OPEN"


def egress_networks() -> set[str]:
    return set(network.networks(docker_api()))


def test_rules_are_installed_idempotently_and_removed_completely(public_host):
    network.ensure_rules()
    before = sh("iptables", "-S").stdout
    network.ensure_rules()
    assert sh("iptables", "-S").stdout == before  # the same rules: nothing done
    assert sh("iptables", "-S", "FORWARD").stdout.count(network.CHAIN_FORWARD) == 1
    assert sh("iptables", "-S", "INPUT").stdout.count(network.CHAIN_INPUT) == 1
    assert network.restore_input((), before) is None
    network.remove_egress(docker_api())
    assert network.CHAIN_FORWARD not in sh("iptables", "-S").stdout
    assert network.CHAIN_INPUT not in sh("iptables", "-S").stdout
    assert egress_networks() == set()


def test_each_egress_sandbox_has_a_network_of_its_own_removed_with_it(public_host):
    before = egress_networks()
    spec = SandboxSpec(job_id=f"egress-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                       network="egress", limits=Limits(wall_time_s=40))
    sandbox = Sandbox(spec)
    try:
        mine = egress_networks() - before
        assert len(mine) == 1
        attached = docker_api().inspect_network(mine.pop())["Containers"]
        assert [c["Name"] for c in attached.values()] == [spec.name]
    finally:
        sandbox.remove()
    assert egress_networks() == before and spec.name not in sandbox_containers()


FLOOD = """
bool Open(string host, int port) {
    var c = new System.Net.Sockets.TcpClient();
    try { return c.ConnectAsync(host, port).Wait(300); } catch (Exception) { return false; } finally { c.Close(); }
}
var until = DateTime.UtcNow.AddSeconds(SECONDS);
int tries = 0, hostOpen = 0, privateOpen = 0;
while (DateTime.UtcNow < until) {
    tries++;
    if (Open("HOST", HOST_PORT)) hostOpen++;
    if (Open("PRIVATE", PRIVATE_PORT)) privateOpen++;
}
WriteLine(tries + " " + hostOpen + " " + privateOpen);
"""


def test_the_firewall_has_no_gap_while_other_egress_sandboxes_start(public_host, host_listener):
    # the rules were flushed and re-added one iptables call at a time for every egress sandbox, and
    # Docker re-hooks DOCKER-USER for every network it makes: a script connecting in a loop reached
    # the host's services and private addresses meanwhile
    port, seen = host_listener
    script = (FLOOD.replace("SECONDS", "25").replace("HOST_PORT", str(port)).replace("HOST", host_address())
              .replace("PRIVATE_PORT", str(PORT)).replace("PRIVATE", PRIVATE))
    flood = SandboxSpec(job_id=f"egress-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                        network="egress", limits=Limits(wall_time_s=60))
    result = {}
    prober = threading.Thread(target=lambda: result.update(o=run_sandbox(flood, script)))
    prober.start()
    time.sleep(4)  # compiled and looping (on purpose: the others start while it runs)
    others = [SandboxSpec(job_id=f"egress-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                          network="egress", limits=Limits(wall_time_s=30),
                          egress_allow=("203.0.113.0/24",) if i % 2 else ())  # a changed rule set every other time
              for i in range(20)]

    def start_and_remove(spec: SandboxSpec) -> None:
        Sandbox(spec).remove()

    starters = [threading.Thread(target=lambda batch=others[i::4]: [start_and_remove(s) for s in batch]) for i in range(4)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(120)
    prober.join(90)
    network.ensure_rules()  # back to no exceptions
    o = result["o"]
    assert o.exit_code == 0, o.stderr
    tries, host_open, private_open = map(int, o.stdout.split())
    assert tries > 100 and (host_open, private_open) == (0, 0), o.stdout
    assert seen == []


#: asks the sandbox's own name server (Docker's, 127.0.0.11) directly, with a short timeout: names
#: it does not know go to the host's resolvers, which a test machine may never answer
LOOKUP = """
string Ask(string name, int type) {
    var q = new List<byte> { 0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0 };
    foreach (var label in name.Split('.')) { q.Add((byte)label.Length); q.AddRange(Encoding.ASCII.GetBytes(label)); }
    q.AddRange(new byte[] { 0, 0, (byte)type, 0, 1 });
    using (var udp = new System.Net.Sockets.UdpClient()) {
        udp.Send(q.ToArray(), q.Count, new System.Net.IPEndPoint(System.Net.IPAddress.Parse("127.0.0.11"), 53));
        try {
            var got = udp.ReceiveAsync();
            if (!got.Wait(2000)) return "answers=0 no-answer";
            var a = got.Result.Buffer;
            var text = new string(a.Skip(q.Count).Select(b => b >= 32 && b < 127 ? (char)b : '.').ToArray());
            return "answers=" + (a[6] * 256 + a[7]) + " " + text;
        } catch (Exception e) { return "answers=0 " + e.GetType().Name; }
    }
}
void Reverse(string ip) { WriteLine("PTR " + ip + " " + Ask(string.Join(".", ip.Split('.').Reverse()) + ".in-addr.arpa", 12)); }
void Forward(string name) { WriteLine("A " + name + " " + Ask(name, 1)); }
"""


def test_an_egress_sandbox_learns_nothing_of_the_other_jobs(public_host):
    # on one shared Docker network, its name service answered reverse look-ups with the other
    # containers' names, and so their job ids
    others = [Sandbox(SandboxSpec(job_id=f"{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                                  network="egress", limits=Limits(wall_time_s=120))) for _ in range(3)]
    try:
        ips = [next(iter(docker_api().inspect_container(o.name)["NetworkSettings"]["Networks"].values()))["IPAddress"]
               for o in others]
        script = LOOKUP + "".join(f'Reverse("{ip}");\n' for ip in ips) + "".join(f'Forward("{o.name}");\n' for o in others)
        spec = SandboxSpec(job_id=f"egress-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                           network="egress", limits=Limits(wall_time_s=60))
        o = run_sandbox(spec, script)
    finally:
        for other in others:
            other.remove()
    assert o.exit_code == 0, o.stderr
    lines = o.stdout.splitlines()
    assert len(lines) == 6 and all(line.split()[2] == "answers=0" for line in lines), o.stdout
    for other in others:
        assert other.spec.job_id not in o.stdout.replace(f"A {other.name} ", ""), o.stdout
