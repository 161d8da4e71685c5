"""Hostile scripts in real gVisor sandboxes: each is contained, with a clear outcome, and the host
is unharmed. (SECURITY.md maps each control to these tests.)"""

import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.agent_types import MONO_6
from executors.spec import KILLED, Limits, SandboxSpec
from executors.engines.docker import docker_api
from executors.sandbox import Sandbox, run_sandbox
from testing.scripts import FORK_BOMB, MEMORY_BOMB, SH, THREAD_BOMB
from testing.waiting import until
from tests.conftest import sandbox_containers

pytestmark = pytest.mark.integration

WALL = 10
ENGINE = "runsc"


@pytest.fixture(autouse=True, params=["runsc", "docker"])
def engine(request, monkeypatch):
    """Every test, on both ways of starting a sandbox: runsc alone and through Docker."""
    monkeypatch.setattr(sys.modules[__name__], "ENGINE", request.param)
    return request.param


def run(script: str, **limits):
    spec = SandboxSpec(job_id=f"hostile-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command, engine=ENGINE,
                       limits=Limits(**{"wall_time_s": WALL, "memory_mb": 256, **limits}))
    start = time.monotonic()
    outcome = run_sandbox(spec, script)
    return outcome, time.monotonic() - start


@pytest.mark.parametrize("script", [FORK_BOMB, THREAD_BOMB], ids=["fork-bomb", "thread-bomb"])
def test_process_and_thread_bombs_are_contained(script):
    o, took = run(script)
    assert "survived" not in o.stdout
    assert o.timed_out or o.exit_code != 0
    assert took < WALL + 10
    assert not any(n for n in sandbox_containers() if "hostile" in n)


def test_a_child_process_is_allowed():
    o, _ = run(SH.format('Sh("echo child ran; id -u\\n");'))
    assert o.exit_code == 0 and o.stdout == "child ran\n10001\n"


def test_memory_bomb_is_killed_and_marked():
    o, took = run(MEMORY_BOMB)
    assert o.out_of_memory and o.exit_code != 0 and took < WALL + 5


def test_memory_bombs_side_by_side_are_all_marked():
    """Under load Docker sometimes misses runsc's OOM event; each bomb is still marked."""
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(lambda _: run(MEMORY_BOMB, memory_mb=128)[0], range(6)))
    assert all(o.out_of_memory and o.exit_code == KILLED for o in outcomes), [
        (o.exit_code, o.out_of_memory, o.stderr[-300:]) for o in outcomes]  # runsc alone: see runsc.crashed


def test_a_script_killing_its_own_runner_is_not_out_of_memory():
    o, _ = run(SH.format('Sh("kill -9 1\\n");\nWriteLine("survived");'))
    assert o.exit_code == KILLED and not o.out_of_memory and "survived" not in o.stdout


@pytest.mark.parametrize("path, limit_mb", [("fill", 8), ("/tmp/fill", 4)], ids=["work-dir", "tmp"])
def test_disk_fill_stops_at_the_size_limit(path, limit_mb):
    o, _ = run(f'var b = new byte[1 << 20]; int i = 0;\ntry {{ using (var f = File.OpenWrite("{path}")) for (i = 0; i < 10000; i++) f.Write(b, 0, b.Length); }}\n'
               f'catch (IOException e) {{ WriteLine("full at " + i + " MB"); }}', disk_mb=8, tmp_mb=4)
    assert o.exit_code == 0, o.stderr
    assert o.stdout in {f"full at {limit_mb - 1} MB\n", f"full at {limit_mb} MB\n"}, o.stdout


@pytest.mark.parametrize("stream", ["Out", "Error"])
def test_output_flood_is_capped_and_the_worker_stays_flat(stream):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    o, _ = run(f'var s = new string(\'x\', 8192);\nwhile (true) Console.{stream}.Write(s);', output_bytes=4096, wall_time_s=6)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    text, truncated = (o.stdout, o.stdout_truncated) if stream == "Out" else (o.stderr, o.stderr_truncated)
    assert truncated and len(text) == 4096 and o.timed_out
    assert grown_kb < 50_000, f"worker grew by {grown_kb} KiB while the script wrote a flood"


def test_endless_sleep_is_killed_at_the_time_limit():
    o, took = run("System.Threading.Thread.Sleep(-1);", wall_time_s=3)
    assert o.timed_out and 3 <= took < 3 + 5


def test_nothing_of_the_host_or_the_service_is_visible(monkeypatch):
    secret = f"SECRET-{uuid.uuid4()}"
    os.environ["DOTNET_SCRIPTS_TEST_SECRET"] = secret
    try:
        o, _ = run(
            'foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables()) WriteLine(e.Key + "=" + e.Value);\n'
            'foreach (var f in new[] { "/etc/hostname", "/proc/1/cmdline", "/etc/hosts", "/etc/resolv.conf" })\n'
            '    WriteLine(f + ":" + (File.Exists(f) ? File.ReadAllText(f) : "none"));\n'
            'WriteLine("root:" + string.Join(",", Directory.GetDirectories("/").OrderBy(d => d)));\n'
            'WriteLine("sock:" + File.Exists("/var/run/docker.sock"));\n'
        )
    finally:
        del os.environ["DOTNET_SCRIPTS_TEST_SECRET"]
    assert o.exit_code == 0, o.stderr
    assert secret not in o.stdout and "DATABASE_URL" not in o.stdout and "RAY_" not in o.stdout
    assert "/etc/hostname:sandbox" in o.stdout
    assert open("/etc/hostname").read().strip() not in o.stdout.replace("/etc/hostname:sandbox", "")
    assert "sock:False" in o.stdout
    host_resolver = [line for line in open("/etc/resolv.conf") if line.startswith("nameserver")]
    assert not any(line.strip() in o.stdout for line in host_resolver), o.stdout  # not the host's files
    assert "/work" not in o.stdout.split("root:")[1]


def test_no_privileges_to_gain():
    o, _ = run(
        'WriteLine(File.ReadAllLines("/proc/self/status").First(l => l.StartsWith("CapEff")));\n'
        + SH.format('Sh("id -u; mount -t tmpfs none /mnt 2>&1 || echo mount refused; '
                    'touch /usr/bin/x 2>&1 || echo root fs read-only; '
                    'cp /bin/sh ./sh && chmod u+s ./sh && ./sh -c \'id -u\'\\n");')
    )
    lines = o.stdout.splitlines()
    assert lines[0].split()[-1] == "0000000000000000"  # no effective capabilities
    assert lines[1] == "10001"
    assert "mount refused" in o.stdout and "root fs read-only" in o.stdout
    assert lines[-1] == "10001"  # a setuid copy gives nothing (nosuid, no-new-privileges, own uid)


def test_a_background_child_dies_with_the_sandbox():
    o, took = run(SH.format('Sh("(sleep 1000; echo late) > /dev/null 2>&1 &\\necho started\\n");\nWriteLine("script done");'))
    assert o.exit_code == 0 and not o.timed_out and "script done" in o.stdout
    assert took < WALL
    assert not any(n for n in sandbox_containers() if "hostile" in n)


def test_symlinks_made_in_the_sandbox_go_nowhere_on_the_host():
    o, _ = run('File.WriteAllText("/sandbox/note", "x");\n'
               'var p = Process.Start(new ProcessStartInfo("/bin/ln", "-s /etc/shadow /sandbox/link") { UseShellExecute = false }); p.WaitForExit();\n'
               'try { WriteLine(File.ReadAllText("/sandbox/link").Length); } catch (Exception e) { WriteLine(e.GetType().Name); }')
    assert o.exit_code == 0
    assert o.stdout.strip() == "UnauthorizedAccessException"  # the image's own shadow, and not readable


def test_files_of_one_job_are_invisible_to_the_next():
    first, _ = run('File.WriteAllText("/sandbox/left", "1"); File.WriteAllText("/tmp/left", "1"); WriteLine("wrote");')
    assert first.stdout == "wrote\n"
    second, _ = run('WriteLine(File.Exists("/sandbox/left") + " " + File.Exists("/tmp/left") + " " + Directory.GetFiles("/sandbox").Length);')
    assert second.stdout == "False False 0\n"


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def test_no_network_in_none_mode():
    # a service of the host's on every address (its loopback too): a sandbox on the host's network
    # (Docker starts gVisor ones with `--network host`, gVisor keeping them off it) would reach it
    with socket.create_server(("0.0.0.0", 0)) as server:
        port = server.getsockname()[1]
        targets = ["1.1.1.1:80", *(f"{a}:{port}" for a in host_addresses())]
        assert f"127.0.0.1:{port}" in targets
        o, _ = run('foreach (var t in new[] { "' + '", "'.join(targets) + '" }) {\n'
                   '    var c = new System.Net.Sockets.TcpClient(); var hp = t.Split(\':\');\n'
                   '    try { WriteLine((c.ConnectAsync(hp[0], int.Parse(hp[1])).Wait(2000) ? "connected " : "no answer ") + t); }\n'
                   '    catch (Exception) { WriteLine("refused " + t); } }\n'
                   'try { System.Net.Dns.GetHostEntry("example.com"); WriteLine("resolved"); } catch (Exception e) { WriteLine("no dns"); }\n'
                   'WriteLine("interfaces " + string.Join(",", System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces().Select(i => i.Name)));',
                   wall_time_s=30)
    assert o.exit_code == 0, o.stderr
    assert "connected" not in o.stdout and "resolved" not in o.stdout
    assert all(f"refused {t}" in o.stdout or f"no answer {t}" in o.stdout for t in targets), o.stdout
    assert f"refused 127.0.0.1:{port}" in o.stdout  # a loopback of its own, where nothing listens
    assert "no dns" in o.stdout
    assert "interfaces lo\n" in o.stdout, o.stdout


def test_a_sandbox_and_its_gofer_have_a_network_namespace_of_their_own():
    spec = SandboxSpec(job_id=f"hostile-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command, engine=ENGINE)
    box = Sandbox(spec)
    try:
        assert box.wait_started()
        if ENGINE == "docker":  # Docker made none for it: gVisor did (its runtime runs with --network=none)
            inspect = docker_api().inspect_container(box.name)
            assert inspect["HostConfig"]["NetworkMode"] == "host"
            key = inspect["Id"]
        else:
            key = box.name
        found = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                if argv[0] in (b"runsc-sandbox", b"runsc-gofer") and any(key.encode() in a for a in argv):
                    found[argv[0].decode()] = os.readlink(f"/proc/{pid}/ns/net")
            except OSError:
                continue
        assert set(found) == {"runsc-sandbox", "runsc-gofer"}, found
        host = os.readlink("/proc/self/ns/net")
        assert host not in found.values() and len(set(found.values())) == 2
    finally:
        box.remove()


def test_hostile_jobs_in_parallel_do_not_starve_a_hello_world():
    hostile = [FORK_BOMB, THREAD_BOMB, MEMORY_BOMB, "while (true) { }", "System.Threading.Thread.Sleep(-1);"] * 2
    with ThreadPoolExecutor(11) as pool:
        futures = [pool.submit(run, s) for s in hostile]

        def under_way() -> bool:  # every hostile job has its sandbox (or has already ended)
            up = [n for n in sandbox_containers() if "hostile" in n]
            return len(up) + sum(f.done() for f in futures) >= len(hostile)

        until(under_way, 120, "every hostile job started", interval=0.2)
        hello = pool.submit(run, 'Console.WriteLine("Hello");', wall_time_s=30)
        outcomes = [f.result() for f in futures]
        h, took = hello.result()
    assert h.exit_code == 0 and h.stdout == "Hello\n" and not h.timed_out, (h, took)
    for (o, t), script in zip(outcomes, hostile):
        assert "survived" not in o.stdout and (o.timed_out or o.exit_code != 0), script
        assert t < WALL + 20
    assert not any(n for n in sandbox_containers() if "hostile" in n)


def test_open_files_are_limited():
    o, _ = run('var files = new List<FileStream>();\n'
               'try { for (int i = 0; i < 5000; i++) files.Add(File.Create("f" + i)); WriteLine("all open"); }\n'
               'catch (IOException) { WriteLine("stopped at " + files.Count); }', nofile=128)
    assert o.exit_code == 0, o.stderr
    assert o.stdout.startswith("stopped at ") and int(o.stdout.split()[-1]) < 128


def test_cpu_quota_bites():
    # the same four busy threads get through far less work with 0.5 core than with 2 cores
    script = ('var sw = Stopwatch.StartNew(); long total = 0;\n'
              'var ts = Enumerable.Range(0, 4).Select(_ => new System.Threading.Thread(() => {\n'
              '    long n = 0; while (sw.ElapsedMilliseconds < 3000) n++; System.Threading.Interlocked.Add(ref total, n); })).ToList();\n'
              'ts.ForEach(t => t.Start()); ts.ForEach(t => t.Join());\nWriteLine(total);')
    slow, _ = run(script, cpus=0.5)
    fast, _ = run(script, cpus=2)
    ratio = int(slow.stdout) / int(fast.stdout)
    assert ratio < 0.6, ratio  # about 0.25 expected
