"""Scripts in, output out: through HTTP, a real Ray, Docker and the gVisor runtime."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.agent_types import MONO_6
from testing.waiting import until
from tests.conftest import MONO, POOLED, WALL_TIME_S, containers_created, pooled_sandboxes_taken, sandbox_containers

pytestmark = pytest.mark.integration


def test_hello_world(jobs):
    job = jobs.run('Console.WriteLine("Hello");')
    assert job["status"] == "FINISHED"
    assert job["result"]["finishedWith"] == "SUCCEEDED"
    assert job["result"]["stdout"] == "Hello\n"
    assert job["result"]["stderr"] == ""
    assert job["result"]["exitCode"] == 0
    assert job["request"]["payload"]["agentType"] == MONO


def test_runs_under_gvisor(jobs):
    script = (
        'WriteLine(File.ReadAllText("/proc/version"));\n'
        'var p = Process.Start(new ProcessStartInfo("dmesg") { UseShellExecute = false });\n'
        'p.WaitForExit();\n'
    )
    job = jobs.run(script)
    out = job["result"]["stdout"]
    host_kernel = open("/proc/version").read().strip()
    assert job["result"]["finishedWith"] == "SUCCEEDED", job["result"]
    assert "Starting gVisor" in out
    assert host_kernel not in out


def test_stdout_and_stderr_are_kept_apart(jobs):
    job = jobs.run('Console.WriteLine("to out");\nConsole.Error.WriteLine("to err");\nWriteLine("out again");')
    assert job["result"]["finishedWith"] == "SUCCEEDED"
    assert job["result"]["stdout"] == "to out\nout again\n"
    assert job["result"]["stderr"] == "to err\n"


def test_compile_error_fails_with_the_cs_error_on_stderr(jobs):
    job = jobs.run('Console.WriteLine("never");\nint x = "text";\n')
    r = job["result"]
    assert r["finishedWith"] == "FAILED"
    assert r["exitCode"] == 1
    assert "script.csx(2," in r["stderr"] and "error CS0029" in r["stderr"]
    assert r["stdout"] == ""


def test_uncaught_exception_fails_with_its_stack_trace(jobs):
    job = jobs.run('void Boom() { throw new InvalidOperationException("boom"); }\nWriteLine("before");\nBoom();\n')
    r = job["result"]
    assert r["finishedWith"] == "FAILED"
    assert r["exitCode"] == 1
    assert r["stdout"] == "before\n"
    assert "System.InvalidOperationException: boom" in r["stderr"]
    assert "script.csx:1" in r["stderr"]


def test_environment_exit_code_is_kept(jobs):
    job = jobs.run('Console.WriteLine("bye");\nEnvironment.Exit(3);\nConsole.WriteLine("not reached");')
    r = job["result"]
    assert r["finishedWith"] == "FAILED"
    assert r["exitCode"] == 3
    assert r["stdout"] == "bye\n"


def test_endless_loop_is_killed_at_the_time_limit(jobs, client):
    start = time.monotonic()
    r = jobs.submit("while (true) { }")
    job = jobs.wait(r.json()["jobId"], timeout=WALL_TIME_S + 30)
    elapsed = time.monotonic() - start
    assert job["result"]["finishedWith"] == "TIME_LIMIT_EXCEEDED"
    assert job["result"]["exitCode"] is None
    assert elapsed < WALL_TIME_S + 6, elapsed


def test_a_1gb_allocation_fails_out_of_memory(jobs):
    script = (
        "var blocks = new List<byte[]>();\n"
        "for (int i = 0; i < 100; i++) {\n"
        "    var b = new byte[10 << 20];\n"
        "    for (int j = 0; j < b.Length; j += 4096) b[j] = 1;\n"
        "    blocks.Add(b);\n"
        "}\n"
        'Console.WriteLine("allocated " + blocks.Count * 10 + " MB");\n'
    )
    job = jobs.run(script)
    r = job["result"]
    assert r["finishedWith"] == "FAILED"
    assert r["outOfMemory"] is True
    assert "allocated" not in r["stdout"]


def test_repeated_request_id_returns_the_same_job_and_runs_once(jobs, client):
    since = str(int(time.time()) - 1)
    rid = f"once-{time.time_ns()}"[:36]
    first = jobs.submit('Console.WriteLine("once");', request_id=rid)
    assert first.status_code == 201
    job_id = first.json()["jobId"]
    with ThreadPoolExecutor(5) as pool:
        again = list(pool.map(lambda _: jobs.submit('Console.WriteLine("twice?");', request_id=rid), range(5)))
    assert [a.status_code for a in again] == [200] * 5
    assert {a.json()["jobId"] for a in again} == {job_id}
    job = jobs.wait(job_id)
    assert job["result"]["stdout"] == "once\n"
    events = containers_created(job_id, since)
    assert len(events) == 1, events


def test_unknown_agent_type_is_a_400_naming_the_known_ones(jobs):
    r = jobs.submit('Console.WriteLine("x");', agent_type="windows-arm64-dotnet-99")
    assert r.status_code == 400
    assert "windows-arm64-dotnet-99" in r.json()["message"]
    assert MONO in r.json()["message"]


def test_endpoints_of_a_job(jobs, client):
    job_id = jobs.submit('Console.WriteLine("parts");').json()["jobId"]
    jobs.wait(job_id)
    assert client.get(f"/jobs/{job_id}/status").json() == {"jobId": job_id, "status": "FINISHED", "rejectedReason": None}
    assert client.get(f"/jobs/{job_id}/request").json()["request"]["payload"]["script"] == 'Console.WriteLine("parts");'
    assert client.get(f"/jobs/{job_id}/result").json()["result"]["stdout"] == "parts\n"
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.delete(f"/jobs/{job_id}").status_code == 404


def test_no_containers_are_left_behind(jobs):
    job = jobs.run('Console.WriteLine("last");')
    assert job["status"] == "FINISHED"
    until(lambda: sandbox_containers() == [], 10, lambda: f"no sandbox is left: {sandbox_containers()}", interval=0.5)


def test_jobs_take_pre_started_sandboxes_from_the_pool(jobs):
    since = str(int(time.time()) - 1)
    jobs.run('Console.WriteLine("warm-up");')  # the pool fills while this runs
    until(lambda: any(n.startswith(POOLED) for n in sandbox_containers(pooled=True)), 60,
          "a pre-started sandbox waits in the pool", interval=0.2)
    job = jobs.run('Console.WriteLine("pooled");')
    taken = pooled_sandboxes_taken(job["jobId"], since)
    assert len(taken) == 1 and taken[0].startswith("dotnet-scripts-job-pool-")
    assert job["result"]["stdout"] == "pooled\n"


def test_a_pooled_runner_is_process_1_as_in_a_cold_sandbox(jobs):
    # a pooled gVisor runner starts late (executors/pool.py GVISOR_CLOCK_S) through a helper that
    # execs it: no shell is left above the script, and kill -9 1 still ends the runner
    since = str(int(time.time()) - 1)
    job = jobs.run('Console.WriteLine(File.ReadAllText("/proc/1/cmdline").Replace("\\0", " ").Trim());\n'
                   'Console.WriteLine(Directory.GetDirectories("/proc").Count(d => char.IsDigit(Path.GetFileName(d)[0])));')
    assert pooled_sandboxes_taken(job["jobId"], since)[0].startswith("dotnet-scripts-job-pool-")
    cmdline, processes = job["result"]["stdout"].splitlines()
    assert cmdline == " ".join(MONO_6.command) and processes == "1"


def test_pooled_sandboxes_share_nothing_between_jobs(jobs):
    first = jobs.run('File.WriteAllText("/sandbox/left", "1"); File.WriteAllText("/tmp/left", "1");\n'
                     'Console.WriteLine(Directory.GetFiles("/sandbox").Length);')
    assert first["result"]["stdout"] == "1\n"
    for _ in range(3):  # whichever pooled sandbox comes next
        job = jobs.run('Console.WriteLine(File.Exists("/sandbox/left") + " " + File.Exists("/tmp/left") + " "'
                       ' + Directory.GetFiles("/sandbox").Length);')
        assert job["result"]["stdout"] == "False False 0\n"
