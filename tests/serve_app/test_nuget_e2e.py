"""`#r "nuget: …"` end to end: the job's NuGet.Config names the test feed (testing/nuget_feed.py),
the node restores the packages, the gVisor sandbox gets them read-only and the script uses them."""

import time

import pytest

from tests.conftest import containers_created, sandbox_containers

pytestmark = pytest.mark.integration

GREETER = '#r "nuget: Acme.Greeter, 1.0.0"\nusing Acme;\nConsole.WriteLine(Greeter.Hello("NuGet"));\n'


def test_a_package_and_its_dependency_work_in_the_script(jobs, nuget_feed):
    job = jobs.run(GREETER, job_config={"nugetConfigXml": nuget_feed.config()})
    assert job["result"]["finishedWith"] == "SUCCEEDED", job["result"]
    assert job["result"]["stdout"] == "[Hello, NuGet]\n"  # Greeter 1.0.0 → Formatting 1.0.0 (its range [1.0,2.0))


def test_a_floating_version_from_a_v2_feed(jobs, nuget_feed):
    script = '#r "nuget: Acme.Formatting, 2.*"\nConsole.WriteLine(Acme.Fmt.Bracket("v2"));'
    job = jobs.run(script, job_config={"nugetConfigXml": nuget_feed.config(nuget_feed.v2())})
    assert job["result"]["finishedWith"] == "SUCCEEDED", job["result"]
    assert job["result"]["stdout"] == "<v2>\n"


def test_a_repeated_job_uses_the_nodes_cache(jobs, nuget_feed):
    config = {"nugetConfigXml": nuget_feed.config()}
    jobs.run(GREETER, job_config=config)
    before = nuget_feed.downloads.copy()
    job = jobs.run(GREETER, job_config=config)
    assert job["result"]["stdout"] == "[Hello, NuGet]\n"
    assert nuget_feed.downloads == before  # the feed handed out no .nupkg the second time


def test_packages_are_read_only_in_the_sandbox(jobs, nuget_feed):
    script = ('#r "nuget: Acme.Formatting, 1.0.0"\n'
              'try { File.WriteAllText("/nuget/acme.formatting/1.0.0/Acme.Formatting.dll", "x"); Console.WriteLine("written"); }\n'
              'catch (Exception e) { Console.WriteLine(e.GetType().Name); }\n'
              'Console.WriteLine(string.Join(",", Directory.GetDirectories("/nuget")));')
    job = jobs.run(script, job_config={"nugetConfigXml": nuget_feed.config()})
    out = job["result"]["stdout"]
    assert "written" not in out and "Exception" in out, job["result"]
    assert out.strip().endswith("/nuget/acme.formatting")  # only this job's packages are there


def test_restore_failures_fail_the_job_with_the_reason(jobs, nuget_feed):
    config = {"nugetConfigXml": nuget_feed.config()}
    since = str(int(time.time()))
    for script, message in [
        ('#r "nuget: Acme.Nope, 1.0.0"', "package Acme.Nope was not found on 'test' (http://127.0.0.1:"),
        ('#r "nuget: Acme.Formatting, 7.0.0"', "package Acme.Formatting has no version matching 7.0.0"),
        ('#r "nuget: Evil.Slip, 1.0.0"', "entry outside its folder"),
        ('#r "nuget: Evil.Bomb, 1.0.0"', "expands to 64 MiB; the limit is 16 MiB"),
    ]:
        job = jobs.run(script + '\nConsole.WriteLine("ran");', job_config=config)
        r = job["result"]
        assert (job["status"], r["finishedWith"], r["exitCode"], r["stdout"]) == ("FINISHED", "FAILED", 1, ""), r
        assert message in r["stderr"], r["stderr"]
        assert containers_created(job["jobId"], since) == []  # no sandbox was started for it
    assert sandbox_containers() == []


def test_without_package_sources(jobs):
    job = jobs.run(GREETER)
    assert job["result"]["finishedWith"] == "FAILED"
    assert "no package sources" in job["result"]["stderr"] and "nugetConfigXml" in job["result"]["stderr"]


def test_a_private_feeds_password_reaches_the_feed_but_never_the_client(jobs, client, nuget_feed):
    xml = nuget_feed.config(nuget_feed.v3(private=True), credentials=True)
    job = jobs.run('#r "nuget: Acme.Private, 1.0.0"\nConsole.WriteLine(Acme.Secret.Word());',
                   job_config={"nugetConfigXml": xml})
    assert job["result"]["stdout"] == "private-ok\n", job["result"]
    assert "s3cret-feed-password" not in client.get(f"/jobs/{job['jobId']}").text
