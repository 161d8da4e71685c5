"""Hostile C# scripts run by the hostile tests (tests/executors/test_hostile.py) and by the soak
(bench/soak.py): each must end contained (killed, out of memory or timed out), never "survived"."""

#: a script's preamble giving it `Sh(cmd)`: runs `cmd` with /bin/sh in the sandbox; `{}` is the rest
SH = 'void Sh(string cmd) {{ File.WriteAllText("x.sh", cmd); var p = Process.Start(new ProcessStartInfo("/bin/sh", "x.sh") {{ UseShellExecute = false }}); p.WaitForExit(); }}\n{}'

FORK_BOMB = SH.format('Sh("f() { f | f & }; f\\n");\nSystem.Threading.Thread.Sleep(30000);\nWriteLine("survived");')
THREAD_BOMB = ("for (int i = 0; i < 100000; i++) new System.Threading.Thread(() => System.Threading.Thread.Sleep(-1))"
               " { IsBackground = true }.Start();\nWriteLine(\"survived\");")
MEMORY_BOMB = "var l = new List<byte[]>();\nwhile (true) { var b = new byte[16 << 20]; for (int i = 0; i < b.Length; i += 4096) b[i] = 1; l.Add(b); }"
