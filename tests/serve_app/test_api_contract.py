"""The REST contract of SPEC §3 against the running service (SQLite and PostgreSQL)."""

import json
import re
import select
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from serve_app.app import max_body_bytes
from serve_app.config import Settings
from testing.waiting import until
from tests.conftest import MONO, ROOT, containers_created, sandbox_containers

pytestmark = pytest.mark.integration


def body(**over):
    b = {"requestId": str(uuid.uuid4()), "senderId": "sender-1",
         "payload": {"script": 'Console.WriteLine("x");', "agentType": MONO}}
    payload = over.pop("payload", {})
    b["payload"].update(payload)
    b.update(over)
    return b


@pytest.mark.parametrize("bad, field", [
    (body(requestId=""), "requestId"),
    (body(requestId="   "), "requestId"),
    (body(requestId="x" * 37), "requestId"),
    (body(senderId=" "), "senderId"),
    (body(senderId="y" * 37), "senderId"),
    (body(payload={"script": ""}), "payload.script"),
    (body(payload={"script": " \n\t"}), "payload.script"),
    (body(payload={"agentType": 7}), "payload.agentType"),
    (body(payload={"jobConfig": "not an object"}), "payload.jobConfig"),
    ({"requestId": "r", "senderId": "s"}, "payload"),
    ([1, 2, 3], "body"),
])
def test_invalid_input_is_a_400_with_a_message(client, bad, field):
    r = client.post("/jobs", json=bad)
    assert r.status_code == 400, r.text
    msg = r.json()["message"]
    assert field in msg and "Traceback" not in msg


@pytest.mark.parametrize("raw", [b"{not json", b"", b"null", b'"a string"', b"\xff\xfe"])
def test_malformed_bodies_are_400_not_500(client, raw):
    r = client.post("/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["message"]


def test_script_over_the_size_cap_is_413(client):
    r = client.post("/jobs", json=body(payload={"script": "//" + "x" * (256 << 10)}))
    assert r.status_code == 413
    assert "limit" in r.json()["message"]


def raw_post(service, head: bytes, chunks) -> tuple[int, dict]:
    """POSTs /jobs over a bare socket: `head` (header lines), then `chunks` of the body as they come;
    the status and JSON of whatever answer comes back meanwhile or after."""
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" + head + b"\r\n")
        for chunk in chunks:
            sock.sendall(chunk)
            if select.select([sock], [], [], 0)[0]:  # answered: the rest is not sent
                break
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                re.search(rb"content-length: (\d+)", answer.lower()).group(1)):
            got = sock.recv(65536)
            assert got, answer
            answer += got
    status_line, rest = answer.split(b"\r\n", 1)
    return int(status_line.split()[1]), json.loads(rest.split(b"\r\n\r\n", 1)[1])


def test_a_request_body_larger_than_any_job_needs_is_a_413_before_it_is_all_sent(service):
    # declared: answered from the headers, none of the 100 MB sent
    status, answer = raw_post(service, b"Content-Length: 100000000\r\n", [b"{"])
    assert status == 413 and "request body is over" in answer["message"], answer
    # chunked: counted as it arrives; answered once over the limit, the end of the body never sent
    piece = b"x" * 65536
    status, answer = raw_post(service, b"Transfer-Encoding: chunked\r\n",
                              [b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(max_body_bytes(Settings()) // len(piece) + 2)])
    assert status == 413 and "request body is over" in answer["message"], answer


def test_a_script_at_its_limit_escaped_at_worst_is_still_read(client):
    script = "\u0001" * ((256 << 10) - 64) + "return 0;"  # each character sent as six bytes
    r = client.post("/jobs", content=json.dumps(body(payload={"script": script})), headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text[:300]
    client.delete(f"/jobs/{r.json()['jobId']}")


@pytest.mark.parametrize("path", ["/jobs/not-a-uuid", f"/jobs/{uuid.uuid4()}", f"/jobs/{uuid.uuid4()}/status",
                                  f"/jobs/{uuid.uuid4()}/result", f"/jobs/{uuid.uuid4()}/request", "/jobs/%27%20OR%201=1"])
def test_unknown_jobs_are_404_with_a_message(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "not found" in r.json()["message"]
    assert client.delete(path.split("/status")[0].split("/result")[0].split("/request")[0]).status_code == 404


def test_concurrent_duplicates_make_one_job_and_one_run(client, jobs):
    since = str(int(time.time()) - 1)
    b = body(payload={"script": 'Console.WriteLine("only once");'})
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda _: httpx.post(f"{client.base_url}/jobs", json=b, timeout=60), range(24)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 23 + [201], codes
    ids = {r.json()["jobId"] for r in responses}
    assert len(ids) == 1
    job_id = ids.pop()
    assert jobs.wait(job_id)["result"]["stdout"] == "only once\n"
    created = containers_created(job_id, since)
    assert len(created) == 1


def test_a_request_id_is_idempotent_per_sender_not_globally(client):
    """A requestId another sender used (guessed: the README's is `request-1`) is a new job, never the other's."""
    rid = str(uuid.uuid4())
    alice = client.post("/jobs", json=body(requestId=rid, senderId="alice"))
    bob = client.post("/jobs", json=body(requestId=rid, senderId="bob"))
    assert (alice.status_code, bob.status_code) == (201, 201), (alice.text, bob.text)
    assert alice.json()["jobId"] != bob.json()["jobId"]
    for sender, first in (("alice", alice), ("bob", bob)):
        again = client.post("/jobs", json=body(requestId=rid, senderId=sender))
        assert again.status_code == 200 and again.json() == first.json()
        request = client.get(f"/jobs/{first.json()['jobId']}/request").json()["request"]
        assert request["senderId"] == sender
        client.delete(f"/jobs/{first.json()['jobId']}")


def test_result_fields(jobs):
    job = jobs.run('Console.Write("abc");')
    r = job["result"]
    assert set(r) >= {"finishedWith", "stdout", "stderr", "exitCode", "stdoutTruncated", "stderrTruncated",
                      "outOfMemory", "startedAt", "finishedAt", "durationMs"}
    assert r["durationMs"] > 0 and r["startedAt"] < r["finishedAt"]
    assert job["rejectedReason"] is None


def test_output_over_the_cap_is_truncated_and_flagged(jobs):
    job = jobs.run('var line = new string(\'x\', 1000);\nfor (int i = 0; i < 200; i++) Console.WriteLine(line);\nConsole.Error.WriteLine("e");')
    r = job["result"]
    assert r["finishedWith"] == "SUCCEEDED"
    assert r["stdoutTruncated"] is True and len(r["stdout"].encode()) == 65536
    assert r["stderrTruncated"] is False and r["stderr"] == "e\n"


def test_status_while_running_then_finished(client, jobs):
    job_id = jobs.submit("System.Threading.Thread.Sleep(3000);").json()["jobId"]
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        seen.add(job["status"])
        if job["status"] == "FINISHED":
            break
        assert job["result"] is None  # no result before the job is FINISHED
        time.sleep(0.1)
    assert client.get(f"/jobs/{job_id}/result").json()["result"]["finishedWith"] == "SUCCEEDED"
    assert "RUNNING" in seen and "FINISHED" in seen


def test_deleting_a_running_job_stops_its_sandbox(client, jobs):
    job_id = jobs.submit("while (true) { }").json()["jobId"]
    until(lambda: client.get(f"/jobs/{job_id}/status").json()["status"] == "RUNNING", 30, "the job runs", interval=0.1)
    name = f"dotnet-scripts-job-{job_id}"
    until(lambda: name in sandbox_containers(running=True), 30, "its sandbox runs", interval=0.1)
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    until(lambda: name not in sandbox_containers(), 5, "the sandbox is gone after DELETE", interval=0.1)
    assert client.get(f"/jobs/{job_id}").status_code == 404
    time.sleep(2)  # and it is not started again (a pooled run once fell back to a cold start here)
    assert name not in sandbox_containers()


def test_deleting_a_pending_job_means_it_never_runs(client, jobs):
    blockers = [jobs.submit("System.Threading.Thread.Sleep(4000);").json()["jobId"] for _ in range(2)]
    until(lambda: all(client.get(f"/jobs/{b}/status").json()["status"] == "RUNNING" for b in blockers), 30,
          "both slots busy before the job that must wait")
    since = str(int(time.time()) - 1)
    job_id = jobs.submit('Console.WriteLine("never");').json()["jobId"]
    assert client.get(f"/jobs/{job_id}/status").json()["status"] == "PENDING"
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    for b in blockers:
        jobs.wait(b)
    time.sleep(2)  # a slot was free for that long: had it been dispatched, its sandbox is there by now
    created = containers_created(job_id, since)
    assert created == []


def test_openapi_json_yaml_and_swagger_ui(client):
    spec = client.get("/api-docs").json()
    assert set(spec["paths"]) >= {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/status", "/jobs/{job_id}/result",
                                  "/jobs/{job_id}/request", "/actuator/health"}
    post = spec["paths"]["/jobs"]["post"]["responses"]
    assert {"200", "201", "400"} <= set(post) and "422" not in post
    payloads = [c for name, c in spec["components"]["schemas"].items() if name.startswith("Payload")]
    assert payloads and all(p["properties"]["agentType"]["enum"] == [MONO] for p in payloads)
    assert "REJECTED" in spec["components"]["schemas"]["JobStatus"]["description"]
    assert yaml.safe_load(client.get("/api-docs.yaml").text) == spec
    page = client.get("/swagger-ui")
    assert page.status_code == 200 and "'/api-docs'" in page.text
    # the page's scripts and styles come from the service itself, not from a CDN
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/swagger-ui-assets/") or a.startswith("data:") for a in assets), assets
    for a in assets:
        if a.startswith("/"):
            assert client.get(a).status_code == 200, a


def test_health_reports_its_components(client, jobs):
    assert jobs.run('Console.WriteLine("pooled");')["result"]["stdout"] == "pooled\n"  # the node's pool exists
    h = client.get("/actuator/health").json()
    assert h["status"] == "UP"
    assert h["components"]["db"]["status"] == "UP"
    assert h["components"]["ray"]["details"]["agentTypes"][MONO]["slots"] == 2
    sandbox = h["components"]["sandbox"]
    assert sandbox["status"] == "UP" and sandbox["details"]["images"][MONO]["present"] is True
    assert sandbox["details"]["runtime"] == "runsc"
    pools = [p for p in h["components"]["pools"]["details"]["pools"].values() if p["agentType"] == MONO]
    assert pools and all(p["capacity"] > 0 and p["idle"] + p["starting"] <= p["capacity"] and p["warmed"] <= p["idle"]
                         and {"hits", "misses", "entries", "bytes"} <= set(p["cache"]) for p in pools), pools


def log_once_it_has(service, text: str, timeout: float = 10) -> str:
    """The service's console log, once `text` is in it (Ray ships its actors' lines there a moment later)."""
    def read() -> str:
        log = service.log.read_text(errors="replace")
        return log if text in log else ""

    return until(read, timeout, f"{text!r} in the service's log", interval=0.1)


def test_logs_never_contain_script_text_or_output(service, jobs):
    marker = f"SECRET{uuid.uuid4().hex}"
    job = jobs.run(f'// {marker}-source\nConsole.WriteLine("{marker}-" + "out");\nConsole.Error.WriteLine("{marker}-" + "err");')
    assert job["result"]["stdout"] == f"{marker}-out\n"
    log = log_once_it_has(service, f"job {job['jobId']} FINISHED")  # the job's last line
    assert "<CONTENT OMITTED>" in log
    assert marker not in log


def test_serve_s_request_lines_stay_in_serve_s_files_not_the_console(service, jobs):
    """RAY_SERVE_LOG_TO_STDERR=0 (cluster/node.py SERVE_TUNING): Ray would ship each of them
    through its log monitor and the GCS to the driver, four per job."""
    job = jobs.run('Console.WriteLine("hi");')
    serve_logs = service.ray_logs() / "serve"
    until(lambda: any(re.search(r"POST /jobs \d{3} ", f.read_text(errors="replace")) for f in serve_logs.glob("*.log")),
          10, "Serve's request lines reach its files")
    console = log_once_it_has(service, f"job {job['jobId']} FINISHED")  # the dispatcher's lines still come
    assert not re.search(r"(GET|POST) /jobs\S* \d{3} ", console)


def readme_curl_commands(heading: str = "## Try it") -> list[str]:
    """The commands of a README section's first sh block, as a reader would paste them (a
    `NAME=value` line is kept in front of each command that follows it)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    block = section[section.index("```sh") + 5:]
    block = block[:block.index("```")]
    commands: list[str] = []
    assignments = ""
    for line in block.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if re.match(r"^[A-Z_]+=", line):
            assignments += line + "\n"
        elif line.startswith("curl"):
            commands.append(assignments + line)
        else:
            commands[-1] += "\n" + line
    return commands


def test_readme_curl_examples_run_as_written(service, jobs):
    post, get = readme_curl_commands()
    host = service.url.removeprefix("http://")

    def sh(cmd: str) -> str:
        return subprocess.run(["bash", "-c", cmd.replace("localhost:8080", host)],
                              capture_output=True, text=True, check=True, timeout=30).stdout

    created = json.loads(sh(post))
    again = json.loads(sh(post))
    assert again == created  # the same requestId: the same job
    jobs.wait(created["jobId"])
    job = json.loads(sh(get.replace("JOB_ID", created["jobId"])))
    assert job["status"] == "FINISHED"
    assert job["result"]["finishedWith"] == "SUCCEEDED" and job["result"]["stdout"] == "Hello\n"


def test_readme_package_example_runs_as_written(service, nuget_feed):
    post, get = readme_curl_commands("## Packages")
    host = service.url.removeprefix("http://")

    def sh(cmd: str) -> str:
        cmd = re.sub(r"^FEED=\S+", f"FEED={nuget_feed.v3()}", cmd.replace("localhost:8080", host))
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True, timeout=60).stdout

    created = json.loads(sh(post))
    result = json.loads(sh(get.replace("JOB_ID", created["jobId"])))["result"]
    assert result["finishedWith"] == "SUCCEEDED", result
    assert result["stdout"] == '{"answer":42}\n'
    assert nuget_feed.downloads["Newtonsoft.Json/13.0.1"] >= 1


@pytest.mark.parametrize("field, value", [("requestId", "a\u0000b"), ("senderId", "\ud800x"),
                                          ("script", 'Console.WriteLine("\u0000");')])
def test_text_a_database_cannot_store_is_a_400(client, field, value):
    b = body()
    (b["payload"] if field == "script" else b)[field] = value
    r = client.post("/jobs", content=json.dumps(b), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert field in r.json()["message"]


@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\x1b", "\x85", "\u2028", "\u2029"])
@pytest.mark.parametrize("field", ["senderId", "requestId"])
def test_control_characters_in_identifiers_are_a_400(client, field, char):
    r = client.post("/jobs", content=json.dumps(body(**{field: f"a{char}b"})),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert message.startswith(f"invalid request: {field}: ") and "control characters" in message, message


def test_a_client_cannot_forge_a_log_line(service, client):
    forged = f"FORGED{uuid.uuid4().hex[:16]}"  # with the rest, within the 36 characters
    for field in ("senderId", "requestId"):
        for sep in ("\n", "\r", "\u2028"):
            r = client.post("/jobs", json=body(**{field: f"x{sep}{forged} INFO"}))
            assert r.status_code == 400, r.text
    time.sleep(1)  # a line it forged would be in the log by now
    assert forged not in service.log.read_text(errors="replace")


def test_a_job_asking_for_more_than_its_agent_type_allows_is_a_400(client):
    r = client.post("/jobs", json=body(payload={"jobConfig": {"limits": {"memoryMb": 999999}}}))
    assert r.status_code == 400
    assert "memoryMb" in r.json()["message"] and MONO in r.json()["message"]
    r = client.post("/jobs", json=body(payload={"jobConfig": {"network": "egress"}}))
    assert r.status_code == 400 and "network" in r.json()["message"]


@pytest.mark.parametrize("limits, field", [
    ({"cpus": 1e-12}, "cpus"),  # Docker took it as 0: no CPU quota at all
    ({"cpus": 0.001}, "cpus"),  # Docker refused it: the job was REJECTED, as if the service had failed
    ({"memoryMb": 1}, "memoryMb"),
    ({"nofile": 3}, "nofile"),
])
def test_a_job_asking_for_less_than_a_sandbox_can_have_is_a_400(client, limits, field):
    r = client.post("/jobs", json=body(payload={"jobConfig": {"limits": limits}}))
    assert r.status_code == 400, r.text
    assert f"jobConfig.limits.{field}: Input should be greater than or equal to" in r.json()["message"]


def test_a_job_may_ask_for_lower_limits(client, jobs):
    b = body(payload={"script": "while (true) { }", "jobConfig": {"limits": {"wallTimeS": 2, "memoryMb": 128}}})
    start = time.monotonic()
    job_id = client.post("/jobs", json=b).json()["jobId"]
    job = jobs.wait(job_id)
    assert job["result"]["finishedWith"] == "TIME_LIMIT_EXCEEDED" and job["result"]["limitExceeded"] == "WALL_TIME"
    assert time.monotonic() - start < 2 + 6
    asked = {k: v for k, v in job["request"]["payload"]["jobConfig"]["limits"].items() if v is not None}
    assert asked == {"wallTimeS": 2.0, "memoryMb": 128}


@pytest.mark.parametrize("xml, words", [
    ("<configuration><packageSources>", "well-formed"),
    ('<?xml version="1.0"?><!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]><configuration>&x;</configuration>', "DTD"),
    ("<configuration>" + "<a/>" * 20_000 + "</configuration>", "limit"),  # 80 KB: over its 64 KiB
])
def test_bad_nuget_config_is_a_400_at_submission(client, xml, words):
    r = client.post("/jobs", json=body(payload={"jobConfig": {"nugetConfigXml": xml}}))
    assert r.status_code == 400 and words in r.json()["message"] and "nugetConfigXml" in r.json()["message"]


def test_feed_credentials_are_never_shown_back(client, jobs):
    xml = ('<configuration><packageSources><add key="feed" value="https://feed.example/v3/index.json"/></packageSources>'
           '<packageSourceCredentials><feed><add key="Username" value="me"/>'
           '<add key="ClearTextPassword" value="hunter2-secret"/></feed></packageSourceCredentials></configuration>')
    r = client.post("/jobs", json=body(payload={"jobConfig": {"nugetConfigXml": xml}}))
    assert r.status_code == 201
    job_id = r.json()["jobId"]
    jobs.wait(job_id)
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/request"):
        text = client.get(path).text
        assert "hunter2-secret" not in text and "feed.example" in text
