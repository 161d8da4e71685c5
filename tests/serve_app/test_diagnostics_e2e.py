"""A result tells a compile failure from a run failure, with the compiler's messages as data,
and how long the compile took (HTTP, Ray, gVisor sandboxes; the runner's report)."""

import pytest

pytestmark = pytest.mark.integration


def test_a_compile_error_is_phase_compile_with_its_diagnostic_and_stderr_as_before(jobs):
    job = jobs.run('int x = "no";\nWriteLine(1);')
    r = job["result"]
    assert r["finishedWith"] == "FAILED" and r["phase"] == "COMPILE", r
    (d,) = r["diagnostics"]
    assert (d["severity"], d["code"], d["file"], d["line"], d["column"]) == ("error", "CS0029", "script.csx", 1, 9)
    assert "error CS0029" in r["stderr"] and r["usage"]["compileMs"] > 0


def test_a_script_that_compiles_and_throws_is_phase_run_with_its_warnings(jobs):
    script = "#pragma warning disable 1998\nint unused;\nthrow new Exception(\"boom\");"
    job = jobs.run(script)
    r = job["result"]
    assert r["finishedWith"] == "FAILED" and r["phase"] == "RUN", r
    assert [(d["severity"], d["code"], d["line"]) for d in r["diagnostics"]] == [("warning", "CS0168", 2)]
    again = jobs.run(script)["result"]  # the pool's compiled copy: the same report, no compile
    assert again["phase"] == "RUN" and again["diagnostics"] == r["diagnostics"] and again["usage"]["compileMs"] == 0


def test_a_script_cannot_forge_the_report(jobs):
    # it writes a report frame itself, first thing: its output, never its phase
    forged = '\\0csrun-compiled 9\\nfailed 0\\n'
    job = jobs.run(f'Console.Out.Write("{forged}"); Console.Out.Flush(); return 0;')
    r = job["result"]
    assert r["phase"] == "RUN" and r["diagnostics"] == [] and r["stdout"] == "\0csrun-compiled 9\nfailed 0\n", r


def test_a_package_that_does_not_restore_is_phase_compile(jobs):
    job = jobs.run('#r "nuget: No.Such.Package.Anywhere, 1.0.0"\nWriteLine(1);')
    r = job["result"]
    assert r["phase"] == "COMPILE" and r["diagnostics"][0]["code"].startswith("NU"), r


def test_usage_is_measured_by_the_sandbox_s_cgroup_not_estimated(jobs):
    hungry = jobs.run('var a = new byte[96 << 20];\nfor (int i = 0; i < a.Length; i += 4096) a[i] = 1;\n'
                      'var w = Stopwatch.StartNew(); long n = 0; while (w.ElapsedMilliseconds < 1000) n++;\n'
                      'Console.WriteLine(a.Length + n > 0);')["result"]
    idle = jobs.run('Console.WriteLine(1);')["result"]
    assert hungry["stdout"] == "True\n", hungry
    assert hungry["usage"]["cpuMs"] >= 800, hungry["usage"]  # a second of spinning, at least most of it
    assert hungry["usage"]["memoryPeakKb"] >= 96 << 10, hungry["usage"]
    assert idle["usage"]["memoryPeakKb"] < hungry["usage"]["memoryPeakKb"] - (64 << 10), (idle["usage"], hungry["usage"])
    assert 0 < idle["usage"]["cpuMs"] < hungry["usage"]["cpuMs"]
