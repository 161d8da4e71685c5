"""A job's stdin and args reach its script exactly (HTTP, Ray, a pooled or a cold gVisor sandbox),
and bad ones are the client's 400/413 before anything is stored."""

import base64
import uuid

import pytest

pytestmark = pytest.mark.integration

#: a NUL, lines that look like the runner's frames, non-ASCII, no newline at the end
STDIN = "first line\n\0csrun-stdin 3\nabc\n\0csrun-exit 0\n\0csrun-end\nlast é"
ARGS = ["a", "b c", "", "--flag", "é", "\0csrun-args 1\n"[1:], "line\nbreak"]
ECHO = ('var first = Console.ReadLine();\nvar rest = Console.In.ReadToEnd();\n'
        'Console.WriteLine(first);\n'
        'Console.WriteLine(Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(rest)));\n'
        'Console.WriteLine(Args.Count);\n'
        'foreach (var a in Args) Console.WriteLine(Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(a)));\n')


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("own_sandbox", [False, True], ids=["pooled", "cold"])
def test_stdin_and_args_reach_the_script_byte_for_byte(jobs, own_sandbox):
    config = {"limits": {"wallTimeS": 8}} if own_sandbox else None  # its own limits: a sandbox of its own
    job = jobs.run(ECHO, job_config=config, stdin=STDIN, args=ARGS)
    first, rest = STDIN.split("\n", 1)
    assert job["result"]["finishedWith"] == "SUCCEEDED", job["result"]
    assert job["result"]["stdout"] == "".join(f"{line}\n" for line in [first, b64(rest), len(ARGS), *map(b64, ARGS)])
    assert job["request"]["payload"]["stdin"] == STDIN and job["request"]["payload"]["args"] == ARGS


def test_without_them_stdin_is_empty_args_none_and_the_request_shown_as_before(jobs):
    job = jobs.run('Console.WriteLine(Console.ReadLine() == null);\nConsole.Write(Console.In.ReadToEnd().Length);\n'
                   'Console.Write(Args.Count);')
    assert job["result"]["stdout"] == "True\n00", job["result"]
    assert set(job["request"]["payload"]) == {"script", "agentType", "jobConfig"}  # no stdin/args keys


def test_a_script_reads_stdin_line_by_line_as_it_would_a_terminal(jobs):
    job = jobs.run('string line; int sum = 0;\nwhile ((line = Console.ReadLine()) != null) sum += int.Parse(line);\n'
                   'Console.WriteLine(sum);', stdin="1\n2\r\n39\n")
    assert job["result"]["stdout"] == "42\n", job["result"]


@pytest.mark.parametrize("given, status, words", [
    (dict(stdin="x" * ((1 << 20) + 1)), 413, "payload.stdin is 1048577 bytes; the limit is 1048576"),
    (dict(stdin="é" * ((1 << 19) + 1)), 413, "payload.stdin is 1048578 bytes"),  # bytes of UTF-8, not characters
    (dict(args=["a"] * 65), 400, "payload.args has 65 arguments; the limit is 64"),
    (dict(args=["x" * 40000, "y" * 40000]), 413, "payload.args is 80000 bytes; the limit is 65536"),
    (dict(args=["a\0b"]), 400, "payload.args.0"),
    (dict(args="a b"), 400, "payload.args"),
    (dict(args=[1]), 400, "payload.args.0"),
    (dict(stdin=["x"]), 400, "payload.stdin"),
])
def test_bad_stdin_or_args_are_the_client_s_error_and_store_nothing(jobs, given, status, words):
    request_id = str(uuid.uuid4())
    r = jobs.submit('Console.WriteLine("never");', request_id=request_id, **given)
    assert r.status_code == status and words in r.text, r.text
    again = jobs.submit('Console.WriteLine("fine");', request_id=request_id)
    assert again.status_code == 201, "the refused request left a job behind under its requestId"


def test_stdin_with_a_lone_surrogate_is_a_400(client):
    body = ('{"requestId": "%s", "senderId": "tests", "payload": {"script": "return 0;", '
            '"agentType": "linux-amd64-mono-6", "stdin": "a\\ud800b"}}' % uuid.uuid4())
    r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "payload.stdin" in r.text and "surrogate" in r.text, r.text


def test_a_static_field_s_initialiser_sees_the_args_and_a_bom_ahead_of_the_script_is_no_code(jobs):
    script = '\ufeffusing System.Text;\nstatic string first = Args.Count > 0 ? Args[0] : "none";\nConsole.WriteLine(first);'
    job = jobs.run(script, args=["given"])
    assert job["result"]["stdout"] == "given\n", job["result"]
