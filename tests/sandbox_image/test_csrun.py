"""The Mono image's runner gives scripts dotnet-script's semantics (real container, runsc)."""

import subprocess
import time
import uuid

import pytest

from cluster.agent_types import MONO_6
from executors.spec import EXIT_GRACE_S, KILLED, Limits, SandboxSpec
from executors.protocol import WARMUP_MARKER
from executors.sandbox import Sandbox, run_sandbox
from tests.conftest import sandbox_containers

pytestmark = pytest.mark.integration


def run(script: str, references_on_stdin: bool = False, **limits):
    spec = SandboxSpec(job_id=f"csrun-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                       limits=Limits(wall_time_s=30, **limits), references_on_stdin=references_on_stdin)
    return run_sandbox(spec, script)


@pytest.mark.parametrize("script", [
    'int x = "no";\nWriteLine(1);',  # a compile error, with the script's line
    "#pragma warning disable 168\nint unused;\nvar a = 1; if (a == 1) { int b; }\nWriteLine(a);",  # warnings
    'using System.Text.RegularExpressions;\nvar xs = new[] { 2, 1 }.OrderBy(x => x);\nawait Task.Delay(1);\n'
    'WriteLine(string.Join(",", xs) + Regex.IsMatch("a", "a"));\nthrow new InvalidOperationException("boom");',
    "class Point { public int X; }\nstatic int Twice(int n) { return n * 2; }\nreturn Twice(new Point { X = 21 }.X);",
])
def test_a_warmed_up_runner_behaves_exactly_like_a_cold_one(script):
    # an idle pooled runner may be told on stdin to compile a small program first: no trace may remain
    cold, told = run(script), run(WARMUP_MARKER.decode() + script)
    assert (told.exit_code, told.stdout, told.stderr) == (cold.exit_code, cold.stdout, cold.stderr)


def run_keeping(script: str, artifact: bytes | None = None):
    """Runs with artifacts, as pooled sandboxes do: (outcome, what the runner compiled)."""
    spec = SandboxSpec(job_id=f"csrun-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                       limits=Limits(wall_time_s=30), artifacts=True)
    sandbox = Sandbox(spec)
    outcome = sandbox.run(script, artifact=artifact, keep_artifact=True)
    return outcome, sandbox.artifact


@pytest.mark.parametrize("script", [
    "#pragma warning disable 168\nint unused;\nvar a = 1; if (a == 1) { int b; }\nWriteLine(a);",  # warnings
    'using System.Text.RegularExpressions;\nvar xs = new[] { 2, 1 }.OrderBy(x => x);\nawait Task.Delay(1);\n'
    'WriteLine(string.Join(",", xs) + Regex.IsMatch("a", "a"));\nthrow new InvalidOperationException("boom");',
    "class Point { public int X; }\nstatic int Twice(int n) { return n * 2; }\nreturn Twice(new Point { X = 21 }.X);",
    'WriteLine(System.Reflection.Assembly.GetExecutingAssembly().Location == "");',
])
def test_a_compiled_script_run_again_behaves_exactly_like_its_first_run(script):
    first, artifact = run_keeping(script)
    assert artifact is not None and b"csrun-artifact" not in first.stdout.encode()  # taken out of the output
    again, kept = run_keeping(script, artifact)
    assert kept is None  # nothing compiled the second time
    assert (again.exit_code, again.stdout, again.stderr) == (first.exit_code, first.stdout, first.stderr)


def test_a_repeat_runs_the_compiled_script_and_does_not_compile_the_text():
    _, artifact = run_keeping('WriteLine("compiled once");')
    again, _ = run_keeping("this is not C# at all", artifact)  # the text is not looked at
    assert (again.exit_code, again.stdout) == (0, "compiled once\n")


def test_a_compile_error_yields_no_artifact_and_a_script_cannot_forge_one():
    failed, artifact = run_keeping('int x = "no";')
    assert failed.exit_code == 1 and artifact is None
    # the frame is only looked for before the script runs: printed by a script it is just output
    forged = 'Console.Out.Write("\\0csrun-artifact 4\\nEVIL"); Console.Out.Flush(); WriteLine("after");'
    first, artifact = run_keeping(forged)
    assert artifact is not None and b"EVIL" not in artifact
    assert first.stdout == "\0csrun-artifact 4\nEVILafter\n"
    again, kept = run_keeping(forged, artifact)
    assert kept is None and again.stdout == first.stdout


def test_top_level_methods_fields_types_extension_methods_and_usings():
    o = run(
        "using System.Text.RegularExpressions;\n"
        "int Twice(int x) => x * 2;\n"
        "public static int Sq(int x) { return x * x; }\n"
        "static int counter = 10;\n"
        "class Point { public int X { get; set; } }\n"
        "static class Ext { public static int Triple(this int x) => x * 3; }\n"
        "T Id<T>(T v) { return v; }\n"
        "var p = new Point { X = 3 };\n"
        'Console.WriteLine($"{Twice(p.X)} {Sq(4)} {5.Triple()} {Id("id")} {counter} {Regex.IsMatch("ab", "b")}");\n'
    )
    assert (o.exit_code, o.stderr, o.stdout) == (0, "", "6 16 15 id 10 True\n")


def test_default_imports_are_dotnet_scripts():
    o = run(
        'WriteLine(string.Join(",", new[] { 3, 1, 2 }.OrderBy(x => x)));\n'  # System.Linq, static Console
        'var sb = new StringBuilder("sb"); WriteLine(sb);\n'  # System.Text
        "var d = new Dictionary<string, int> { [\"k\"] = 1 }; WriteLine(d[\"k\"]);\n"  # Collections.Generic
        "Expression<Func<int, int>> e = x => x + 1; WriteLine(e.Compile()(1));\n"  # Linq.Expressions
        "dynamic dyn = new ExpandoObject(); dyn.A = 7; Console.WriteLine(dyn.A);\n"  # Dynamic
        "WriteLine(Path.Combine(\"a\", \"b\"));\n"  # IO
        "WriteLine(Stopwatch.IsHighResolution || true);\n"  # Diagnostics
        "WriteLine(Task.FromResult(5).Result);\n"  # Threading.Tasks
    )
    assert o.stderr == ""
    assert o.stdout.split() == ["1,2,3", "sb", "1", "2", "7", "a/b", "True", "5"]


def test_the_framework_assemblies_are_referenced_without_mcs_s_defaults():
    # csrun compiles with -noconfig: what mcs would add itself (System, System.Xml, System.Core,
    # Microsoft.CSharp) comes from csrun's own list, with the rest of the framework it offers
    o = run(
        "WriteLine(new Uri(\"http://a/b\").Host);\n"  # System
        "var doc = new System.Xml.XmlDocument(); doc.LoadXml(\"<r a='1'/>\"); WriteLine(doc.DocumentElement.GetAttribute(\"a\"));\n"
        "WriteLine(new System.Xml.Linq.XElement(\"x\", 2));\n"  # System.Xml.Linq
        "WriteLine(new[] { 1, 2 }.Sum());\n"  # System.Core
        "dynamic d = \"str\"; Console.WriteLine(d.Length);\n"  # Microsoft.CSharp
        "WriteLine(System.Numerics.BigInteger.Pow(2, 70));\n"  # System.Numerics
        "WriteLine(typeof(System.Net.Http.HttpClient).Name);\n"  # System.Net.Http
    )
    assert (o.exit_code, o.stderr) == (0, "")
    assert o.stdout.split() == ["a", "1", "<x>2</x>", "3", "3", "1180591620717411303424", "HttpClient"]


def test_top_level_return_is_the_exit_code():
    o = run('WriteLine("a");\nif (DateTime.Now.Year > 2000) return 42;\nWriteLine("b");')
    assert (o.exit_code, o.stdout) == (42, "a\n")


def test_environment_exit_code_is_respected():
    o = run("Environment.ExitCode = 5;\nWriteLine(\"done\");")
    assert (o.exit_code, o.stdout) == (5, "done\n")


def test_warnings_go_to_stderr_and_do_not_fail():
    o = run("int unused;\nWriteLine(\"ok\");")
    assert o.exit_code == 0 and o.stdout == "ok\n"
    assert "script.csx(1,5): warning CS0168" in o.stderr


def test_compile_error_line_numbers_point_into_the_script():
    o = run("// a comment\nvar s = \"} { ;\";\nWriteLine(s)\n")
    assert o.exit_code == 1 and o.stdout == ""
    assert "script.csx(3,13): error CS1002" in o.stderr


def test_top_level_await():
    o = run("await Task.Delay(10);\nvar x = await Task.Run(() => 21 * 2);\nWriteLine(x);")
    assert (o.exit_code, o.stderr, o.stdout) == (0, "", "42\n")


def test_exception_in_async_script():
    o = run("await Task.Delay(1);\nthrow new ArgumentException(\"bad\");")
    assert o.exit_code == 1 and "System.ArgumentException: bad" in o.stderr


def test_stdin_is_empty():
    o = run('WriteLine("[" + Console.In.ReadToEnd() + "]"); WriteLine(Console.Read());')
    assert o.stdout == "[]\n-1\n"


def test_statements_with_blocks_and_tricky_literals():
    o = run(
        'var verbatim = @"a ""quoted"" {brace";\n'
        'var interp = $"{(1 > 0 ? "yes" : "no")} {{literal}}";\n'
        "char c = '}';\n"
        "if (c == '}') { WriteLine(verbatim); } else { WriteLine(\"no\"); }\n"
        "try { throw new Exception(\"x\"); } catch (Exception ex) { WriteLine(ex.Message); } finally { WriteLine(interp); }\n"
        "int i = 0; do { i++; } while (i < 3); WriteLine(i);\n"
        "switch (i) { case 3: WriteLine(\"three\"); break; default: break; }\n"
        "Action<int> act = n => { WriteLine(n); };\nact(9);\n"
    )
    assert o.stderr == ""
    assert o.stdout == 'a "quoted" {brace\nx\nyes {literal}\n3\nthree\n9\n'


@pytest.mark.parametrize("directive, message", [
    ('#r "nuget: Newtonsoft.Json, 13.0.1"', "CSX0002: packages are restored by the service; none were restored"),
    ('#r "System.Web.dll"', "CSX0001: '#r' is not supported on this agent type; use #r \"nuget: Id, Version\""),
    ('#load "other.csx"', "CSX0001: '#load' is not supported"),
])
def test_directives_without_a_restore_fail_clearly(directive, message):
    o = run(directive + '\nWriteLine("x");')
    assert o.exit_code == 1 and message in o.stderr and o.stdout == ""


def test_unicode_output():
    o = run('WriteLine("héllo wörld ✓");')
    assert o.stdout == "héllo wörld ✓\n"


def test_errors_inside_the_script_keep_their_line():
    o = run('WriteLine("a");\n\nint x = "text";\n')
    assert o.exit_code == 1 and "script.csx(3,9): error CS0029" in o.stderr


def test_a_pre_started_runner_takes_package_references_only_from_the_frame_ahead_of_the_script():
    # the list arrives on stdin (the pool's sandboxes); without it no package was restored
    o = run('#r "nuget: Acme.Greeter, 1.0.0"\nWriteLine("ran");', references_on_stdin=True)
    assert o.exit_code == 1 and "CSX0002" in o.stderr and o.stdout == ""
    # given a frame, the listed assemblies are referenced (here a framework one, by its path)
    path = "/usr/lib/mono/4.5/System.Security.dll"  # not among the default references
    framed = (f'\0csrun-references {len(path)}\n{path}#r "nuget: X, 1.0.0"\n'
              'WriteLine(typeof(System.Security.Cryptography.DataProtectionScope).Name);')
    o = run(framed, references_on_stdin=True)
    assert (o.exit_code, o.stdout) == (0, "DataProtectionScope\n"), o
    # a runner started with its list in the environment does not read frames: it is script text
    o = run(framed)
    assert o.exit_code == 1 and o.stdout == ""


@pytest.mark.parametrize("script, told", [
    ('WriteLine("a"); Console.Error.WriteLine("w"); return 42;', True),
    ("Environment.ExitCode = 5;\nWriteLine(\"done\");", True),
    ('WriteLine("before");\nthrow new InvalidOperationException("boom");', True),
    ('int x = "no";', True),  # a compile error
    # a foreground thread outlives the script's statements: its output and exit code still count
    ('new System.Threading.Thread(() => { System.Threading.Thread.Sleep(300); WriteLine("late");'
     ' Environment.Exit(7); }).Start();\nWriteLine("main");', True),
    ('AppDomain.CurrentDomain.ProcessExit += (s, e) => WriteLine("its own exit handler");\nWriteLine("main");', True),
    # Environment.Exit from the script itself: no end frames, the container's exit tells
    ('WriteLine("bye"); Environment.Exit(3);', False),
])
def test_end_frames_tell_the_outcome_before_the_container_exits_and_change_nothing(script, told):
    def outcome(end_frames: bool):
        spec = SandboxSpec(job_id=f"csrun-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                           limits=Limits(wall_time_s=30), end_frames=end_frames)
        sandbox = Sandbox(spec)
        o = sandbox.run(script)
        return (o.exit_code, o.stdout, o.stderr, o.stdout_truncated, o.stderr_truncated), sandbox.ended_by_frames

    plain, plain_told = outcome(False)
    framed, framed_told = outcome(True)
    assert framed == plain and not plain_told and framed_told == told


def test_a_script_printing_end_frames_only_ends_its_own_run_early_and_its_sandbox_still_goes():
    spec = SandboxSpec(job_id=f"csrun-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                       limits=Limits(wall_time_s=30), end_frames=True)
    forged = ('Console.Out.Write("\\0csrun-exit 9\\n"); Console.Error.Write("\\0csrun-end\\n");\n'
              "System.Threading.Thread.Sleep(20000);")
    o = run_sandbox(spec, forged)
    assert (o.exit_code, o.stdout, o.stderr) == (9, "", "")
    assert spec.name not in sandbox_containers()


@pytest.mark.parametrize("engine", ["runsc", "docker"])
def test_a_sandbox_ending_soon_after_its_end_frames_ends_itself_and_one_that_runs_on_is_killed(engine):
    """Its own exit is cheaper than a kill; a script forging the frames is killed after a grace."""
    def killed(sleep_ms: int) -> tuple[bool, float]:
        spec = SandboxSpec(job_id=f"csrun-{uuid.uuid4()}", image=MONO_6.image, command=MONO_6.command,
                           limits=Limits(wall_time_s=30), end_frames=True, engine=engine)
        script = ('Console.Out.Write("\\0csrun-exit 0\\n"); Console.Error.Write("\\0csrun-end\\n");\n'
                  f"System.Threading.Thread.Sleep({sleep_ms});")
        since, sandbox = str(time.time() - 1), Sandbox(spec)
        start = time.monotonic()
        o = sandbox.run(script)
        took = time.monotonic() - start
        assert o.exit_code == 0 and sandbox.ended_by_frames and spec.name not in sandbox_containers(), o
        if engine == "runsc":
            return sandbox.proc.returncode == KILLED, took
        kills = subprocess.run(["docker", "events", "--since", since, "--until", str(int(time.time()) + 1),
                                "--filter", f"container={spec.name}", "--filter", "event=kill", "--format", "{{.ID}}"],
                               capture_output=True, text=True, check=True, timeout=30).stdout.split()
        return bool(kills), took

    assert killed(sleep_ms=100)[0] is False
    was_killed, took = killed(sleep_ms=20000)
    assert was_killed and EXIT_GRACE_S <= took < EXIT_GRACE_S + 10


def test_the_delayed_start_helper_waits_then_becomes_the_command_and_refuses_bad_usage():
    # how pooled runners start once gVisor's clock is calibrated (runner/after.c): the runner is
    # then process 1 itself, as in a cold sandbox
    def run_command(*command: str):
        spec = SandboxSpec(job_id=f"csrun-{uuid.uuid4()}", image=MONO_6.image, command=command,
                           limits=Limits(wall_time_s=30))
        return run_sandbox(spec, "")

    o = run_command(*MONO_6.delayed_start, "0.6", "sh", "-c", 'echo $$; tr "\\0" " " < /proc/1/cmdline')
    assert (o.exit_code, o.stdout) == (0, "1\nsh -c echo $$; tr \"\\0\" \" \" < /proc/1/cmdline "), o
    assert (o.finished_at - o.started_at).total_seconds() >= 0.6
    for bad in (("x", "true"), ("-1", "true"), ("1",)):
        o = run_command(*MONO_6.delayed_start, *bad)
        assert o.exit_code == 2 and "usage: after SECONDS PROGRAM" in o.stderr, (bad, o)
    o = run_command(*MONO_6.delayed_start, "0", "no-such-program")
    assert o.exit_code == 127 and "no-such-program" in o.stderr
