// csrun: runs one C# script (.csx semantics, like dotnet-script) on Mono.
//
// Mono has no Roslyn scripting, and its `csharp` shell exits 0 on errors and prints exceptions on
// stdout. So csrun turns the script into an ordinary program (usings and types at namespace level,
// top-level methods and static fields as static members, statements in a method whose return
// value is the exit code), with `#line` directives so that compiler messages and stack traces
// point into the script, compiles it with mcs in-process and runs it in-process.
//
// Contract: the script arrives on stdin (never on a command line); the script's own stdin is what
// the input frame (below) holds, empty without one.
// Packages: `#r "nuget: Id, Version"` lines are restored by the service before the sandbox
// starts; it mounts them read-only and lists their assemblies in CSRUN_REFERENCES (':'-separated),
// which csrun references when compiling and loads when the script needs them. A pre-started runner
// cannot be given an environment: with CSRUN_REFERENCES=- the list comes on stdin instead, ahead of
// everything else, as "\0csrun-references <length>\n" + the ':'-separated paths (no frame: none).
// Input (the service always sends both, ahead of the script and after any artifact frame): the
// script's arguments, "\0csrun-args <length>\n" + each argument ended by a NUL, then its standard
// input, "\0csrun-stdin <length>\n" + bytes. Length-prefixed: no byte of them reads as a frame.
// Exit code: the script's `return N;`, Environment.Exit(n) or Environment.ExitCode; 1 for a compile
// error or an uncaught exception. Compiler errors and warnings go to stderr.
// Compiled-script cache (CSRUN_ARTIFACTS=1): after a successful compile, and before any of the
// script's code runs, csrun writes the compiled script (assembly, debug symbols, compiler messages)
// to stdout as one frame, "\0csrun-artifact <length>\n" + bytes, which the service keeps and strips.
// Given such a frame ahead of the script on stdin, csrun runs it instead of compiling. Being written
// before the script runs, the frame cannot be forged by the script.
// Compile report (CSRUN_REPORT=1): first on stdout, before the artifact frame and anything of the
// script's, "\0csrun-compiled <length>\n" + "<ok|failed|cached> <compile ms>\n" + the compiler's
// messages (as on stderr). Written before the script runs, it cannot be forged by the script.
// Written for C# 7.2 (what Mono 6.8's mcs accepts), without local functions.
using System;
using System.Collections.Generic;
using System.IO;
using System.Reflection;
using System.Text;
using System.Threading.Tasks;

public static class CsRun
{
    public const string ScriptName = "script.csx";
    const string ClassName = "Submission__Script";
    const string EntryName = "Submission__Main";
    static string buildDirectory = "";
    const string ReferencesMagic = "\0csrun-references ";
    const string WarmUpMagic = "\0csrun-warmup\n";
    const string ArgsMagic = "\0csrun-args ";
    const string StdinMagic = "\0csrun-stdin ";
    static List<string> ScriptArgs = new List<string>(); // the script's `Args`
    // null: nobody restored packages for this run (then `#r "nuget: …"` is an error)
    static string[] PackageReferences = ParseReferences(Environment.GetEnvironmentVariable("CSRUN_REFERENCES"));

    static string[] ParseReferences(string value)
    {
        if (value == null || value == "-") return null;
        var list = new List<string>();
        foreach (var p in value.Split(':')) if (p.Length > 0) list.Add(p);
        return list.ToArray();
    }

    static readonly string[] DefaultUsings = {
        "System", "System.IO", "System.Collections.Generic", "System.Diagnostics", "System.Dynamic",
        "System.Linq", "System.Linq.Expressions", "System.Text", "System.Threading.Tasks",
    };
    static readonly string[] References = {
        "System.dll", "System.Core.dll", "Microsoft.CSharp.dll", "System.Numerics.dll",
        "System.Net.Http.dll", "System.Xml.dll", "System.Xml.Linq.dll", "System.Data.dll",
        "System.Runtime.Serialization.dll", "System.Web.Extensions.dll",
    };

    public static int Main(string[] args)
    {
        int code = Run(args);
        if (Environment.GetEnvironmentVariable("CSRUN_END") == "1")
        {
            Environment.ExitCode = code;
            AppDomain.CurrentDomain.ProcessExit += (sender, e) => WriteEnd();
        }
        return code;
    }

    // End frames (CSRUN_END=1): "\0csrun-end\n" last on stderr and "\0csrun-exit <code>\n" last on
    // stdout, so the service has the outcome without waiting for the container's exit, which under
    // gVisor comes ~0.1 s later. Written on ProcessExit, registered once the script returned: after
    // its foreground threads and its own ProcessExit handlers, with the code the process exits with
    // (Environment.Exit on a later thread included). A script that calls Environment.Exit itself
    // gets none, and its outcome is taken from the container's exit as without frames.
    static void WriteEnd()
    {
        try
        {
            Console.Out.Flush();
            Console.Error.Flush();
            byte[] end = Encoding.ASCII.GetBytes("\0csrun-end\n");
            byte[] exit = Encoding.ASCII.GetBytes("\0csrun-exit " + Environment.ExitCode + "\n");
            var stderr = Console.OpenStandardError();
            stderr.Write(end, 0, end.Length);
            stderr.Flush();
            var stdout = Console.OpenStandardOutput();
            stdout.Write(exit, 0, exit.Length);
            stdout.Flush();
        }
        catch (Exception) { } // no frames: the container's exit tells
    }

    static void Report(string status, long ms, string messages)
    {
        if (Environment.GetEnvironmentVariable("CSRUN_REPORT") != "1") return;
        byte[] body = new UTF8Encoding(false).GetBytes(status + " " + ms + "\n" + messages);
        byte[] head = Encoding.ASCII.GetBytes("\0csrun-compiled " + body.Length + "\n");
        var stdout = Console.OpenStandardOutput();
        stdout.Write(head, 0, head.Length);
        stdout.Write(body, 0, body.Length);
        stdout.Flush();
    }

    static int Run(string[] args)
    {
        string mode = args.Length > 0 ? args[0] : "run";
        string buildDir = Environment.GetEnvironmentVariable("CSRUN_BUILD_DIR");
        if (string.IsNullOrEmpty(buildDir)) buildDir = Path.Combine(Path.GetTempPath(), "csrun-build");
        bool artifacts = Environment.GetEnvironmentVariable("CSRUN_ARTIFACTS") == "1";
        byte[] input = ReadAllStdin(buildDir);
        Console.SetIn(TextReader.Null);
        buildDirectory = Path.GetFullPath(buildDir).TrimEnd('/');

        int offset = 0;
        if (Environment.GetEnvironmentVariable("CSRUN_REFERENCES") == "-")
        {
            byte[] list = Frame(input, ReferencesMagic, ref offset);
            if (list != null) PackageReferences = ParseReferences(Encoding.UTF8.GetString(list));
        }
        Artifact cached = artifacts ? Artifact.FromFrame(input, ref offset) : null;
        byte[] argList = Frame(input, ArgsMagic, ref offset);
        if (argList != null)
        {
            string[] parts = Encoding.UTF8.GetString(argList).Split('\0');
            for (int i = 0; i < parts.Length - 1; i++) ScriptArgs.Add(parts[i]); // each ended by a NUL
        }
        AppDomain.CurrentDomain.SetData("csrun.args", ScriptArgs);
        byte[] stdinBytes = Frame(input, StdinMagic, ref offset);
        if (stdinBytes != null)
            Console.SetIn(new StreamReader(new MemoryStream(stdinBytes), new UTF8Encoding(false), false));
        if (cached != null)
        {
            Report("cached", 0, cached.Messages);
            Console.Error.Write(cached.Messages);
            return Execute(Assembly.Load(cached.Assembly, cached.Symbols), cached.IsAsync);
        }
        string source = new UTF8Encoding(false).GetString(input, offset, input.Length - offset);
        if (source.Length > 0 && source[0] == '\uFEFF') source = source.Substring(1); // a BOM after the frames

        Program program;
        try { program = Transform(source); }
        catch (ScriptError e) { Report("failed", 0, e.Message + "\n"); Console.Error.WriteLine(e.Message); return 1; }
        if (mode == "transform") { Console.Out.Write(program.Text); return 0; }

        Directory.CreateDirectory(buildDir);
        string exe = Path.Combine(buildDir, "script.dll");
        string messages;
        var watch = System.Diagnostics.Stopwatch.StartNew();
        bool ok = Compile(program.Text, Path.Combine(buildDir, "script.cs"), exe, out messages);
        Report(ok ? "ok" : "failed", watch.ElapsedMilliseconds, messages);
        Console.Error.Write(messages);
        if (!ok) return 1;
        if (mode == "compile") return 0;
        if (!artifacts) return Execute(Assembly.LoadFile(exe), program.IsAsync);
        // loaded from bytes, as a cached one is: the script cannot tell a first run from a repeat
        var made = new Artifact {
            Assembly = File.ReadAllBytes(exe), Symbols = File.ReadAllBytes(exe + ".mdb"),
            Messages = messages, IsAsync = program.IsAsync,
        };
        File.Delete(exe);
        File.Delete(exe + ".mdb");
        made.WriteFrame();
        return Execute(Assembly.Load(made.Assembly, made.Symbols), made.IsAsync);
    }

    public sealed class Artifact
    {
        const string Magic = "\0csrun-artifact ";
        public byte[] Assembly, Symbols;
        public string Messages = "";
        public bool IsAsync;

        public void WriteFrame()
        {
            var body = new MemoryStream();
            var w = new BinaryWriter(body, new UTF8Encoding(false));
            w.Write(Assembly.Length); w.Write(Assembly);
            w.Write(Symbols.Length); w.Write(Symbols);
            w.Write(Messages);
            w.Write(IsAsync);
            w.Flush();
            byte[] head = Encoding.ASCII.GetBytes(Magic + body.Length + "\n");
            var stdout = Console.OpenStandardOutput();
            stdout.Write(head, 0, head.Length);
            body.WriteTo(stdout);
            stdout.Flush();
        }

        // the artifact framed at `offset` in `input` (moved past it), or null
        public static Artifact FromFrame(byte[] input, ref int offset)
        {
            int start = offset;
            byte[] body = Frame(input, Magic, ref offset);
            if (body == null) return null;
            try
            {
                var r = new BinaryReader(new MemoryStream(body), new UTF8Encoding(false));
                var a = new Artifact();
                a.Assembly = r.ReadBytes(r.ReadInt32());
                a.Symbols = r.ReadBytes(r.ReadInt32());
                a.Messages = r.ReadString();
                a.IsAsync = r.ReadBoolean();
                return a;
            }
            catch (Exception) { offset = start; return null; }
        }
    }

    // the body of a "<magic><length>\n<body>" frame at `offset` in `input` (moved past it), or null
    static byte[] Frame(byte[] input, string magicText, ref int offset)
    {
        byte[] magic = Encoding.ASCII.GetBytes(magicText);
        if (input.Length - offset < magic.Length) return null;
        for (int i = 0; i < magic.Length; i++) if (input[offset + i] != magic[i]) return null;
        int nl = Array.IndexOf(input, (byte)'\n', offset + magic.Length);
        int length;
        if (nl < 0 || !int.TryParse(Encoding.ASCII.GetString(input, offset + magic.Length, nl - offset - magic.Length), out length)
            || length < 0 || nl + 1 + length > input.Length) return null;
        var body = new byte[length];
        Array.Copy(input, nl + 1, body, 0, length);
        offset = nl + 1 + length;
        return body;
    }

    // A pre-started sandbox waits for its script anyway: compiling a small program first JIT-compiles
    // the compiler and loads the framework's metadata, so the job's own compile starts warm.
    // Nothing of it is kept but the warm code; its files are deleted. It compiles in the job's own
    // build folder because mcs remembers the folder that `#line` file names are relative to.
    static void WarmUp(string dir)
    {
        var stderr = Console.Error;
        try
        {
            Directory.CreateDirectory(dir);
            var program = Transform(
                "using System.Text.RegularExpressions;\n" +
                "var xs = new List<int> { 1, 2, 3 }.Where(x => x > 1).Select(x => $\"{x:D2}\").ToArray();\n" +
                "var d = new Dictionary<string, int>(); foreach (var x in xs) d[x] = x.Length;\n" +
                "await Task.Delay(0);\nConsole.WriteLine(string.Join(\",\", xs) + Regex.IsMatch(\"a\", \"a\"));\n" +
                "static int Twice(int n) { return n * 2; }\nclass Point { public int X { get; set; } }\n");
            Console.SetError(TextWriter.Null);
            Compile(program.Text, Path.Combine(dir, "script.cs"), Path.Combine(dir, "script.dll"));
        }
        catch (Exception) { } // only an optimisation
        finally
        {
            Console.SetError(stderr);
            try { foreach (var f in Directory.GetFiles(dir)) File.Delete(f); } catch (Exception) { }
        }
    }

    // Everything on stdin. A pooled runner may first be told to warm up (when its node has CPU to
    // spare) by "\0csrun-warmup\n" ahead of its job's input: it does, then reads the rest.
    static byte[] ReadAllStdin(string buildDir)
    {
        byte[] warm = Encoding.ASCII.GetBytes(WarmUpMagic);
        using (var stdin = Console.OpenStandardInput())
        using (var all = new MemoryStream())
        {
            var head = new byte[warm.Length];
            int got = 0, n;
            bool warmUpAsked = true;
            while (warmUpAsked && got < head.Length && (n = stdin.Read(head, got, head.Length - got)) > 0)
            {
                for (int i = got; i < got + n; i++) warmUpAsked &= head[i] == warm[i];
                got += n;
            }
            if (warmUpAsked && got == head.Length) { WarmUp(buildDir); got = 0; }
            all.Write(head, 0, got);
            stdin.CopyTo(all);
            byte[] bytes = all.ToArray();
            int bom = bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF ? 3 : 0;
            if (bom == 0) return bytes;
            var rest = new byte[bytes.Length - bom];
            Array.Copy(bytes, bom, rest, 0, rest.Length);
            return rest;
        }
    }

    // ---- compile and run ----------------------------------------------------------------------

    static bool Compile(string text, string csPath, string exePath)
    {
        string messages;
        bool ok = Compile(text, csPath, exePath, out messages);
        Console.Error.Write(messages);
        return ok;
    }

    // compiler errors and warnings come back in `messages`, one per line
    static bool Compile(string text, string csPath, string exePath, out string messages)
    {
        File.WriteAllText(csPath, text, new UTF8Encoding(false));
        var argv = new List<string> {
            "-target:library", "-out:" + exePath, "-debug", "-nologo",
            "-nowarn:1998", // top-level code is wrapped in an async method only when it awaits
            // mcs's own default references (System, System.Xml, System.Core, Microsoft.CSharp) are
            // all in References: loading them again re-reads their metadata (~1000 syscalls, about
            // 0.1 s of a compile under gVisor) only to find them loaded already
            "-noconfig",
        };
        string framework = Path.GetDirectoryName(typeof(object).Assembly.Location);
        foreach (var r in References) if (File.Exists(Path.Combine(framework, r))) argv.Add("-r:" + r);
        if (PackageReferences != null) foreach (var r in PackageReferences) argv.Add("-r:" + r);
        argv.Add(csPath);

        // mcs.exe's Main ends with Environment.Exit, so drive its compiler directly (in-process:
        // no second Mono start-up). Driver is internal; everything else is public API.
        var compilerOutput = new StringWriter();
        var settings = new Mono.CSharp.CommandLineParser(compilerOutput).ParseArguments(argv.ToArray());
        bool ok = false;
        if (settings != null)
        {
            var printer = new Mono.CSharp.StreamReportPrinter(compilerOutput);
            var context = new Mono.CSharp.CompilerContext(settings, printer);
            var driverType = typeof(Mono.CSharp.CompilerContext).Assembly.GetType("Mono.CSharp.Driver");
            object driver = Activator.CreateInstance(driverType, BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic, null, new object[] { context }, null);
            bool compiled = (bool)driverType.GetMethod("Compile", BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic).Invoke(driver, null);
            ok = compiled && printer.ErrorsCount == 0;
        }
        var shown = new StringBuilder();
        foreach (var line in compilerOutput.ToString().Split('\n'))
        {
            string l = line.TrimEnd('\r');
            if (l.Length == 0 || l.StartsWith("Compilation succeeded") || l.StartsWith("Compilation failed")) continue;
            // mcs prints the file name we gave it for messages outside #line regions; show the script's
            shown.Append(l.Replace(Path.GetDirectoryName(csPath) + "/", "")).Append('\n');
        }
        messages = shown.ToString();
        return ok && File.Exists(exePath);
    }

    static int Execute(Assembly assembly, bool isAsync)
    {
        if (PackageReferences != null)
            AppDomain.CurrentDomain.AssemblyResolve += ResolvePackageAssembly;
        var type = assembly.GetType(ClassName);
        var entry = type.GetMethod(EntryName, BindingFlags.Public | BindingFlags.Static);
        int code;
        try
        {
            object result = entry.Invoke(null, null);
            code = isAsync ? ((Task<int>)result).GetAwaiter().GetResult() : (int)result;
        }
        catch (TargetInvocationException e) { return Crash(e.InnerException ?? e); }
        catch (Exception e) { return Crash(e); }
        Console.Out.Flush();
        Console.Error.Flush();
        return code;
    }

    // the script's assembly is loaded from its build folder: its packages are found by simple name
    static Assembly ResolvePackageAssembly(object sender, ResolveEventArgs args)
    {
        string name = new AssemblyName(args.Name).Name;
        foreach (var path in PackageReferences)
            if (string.Equals(Path.GetFileNameWithoutExtension(path), name, StringComparison.OrdinalIgnoreCase))
                return Assembly.LoadFrom(path);
        return null;
    }

    static int Crash(Exception e)
    {
        Console.Out.Flush();
        // the frames below the script's entry are csrun's reflection call: not the user's business
        var trace = new StringBuilder();
        foreach (var line in e.ToString().Split('\n'))
        {
            if (line.Contains("System.Reflection.RuntimeMethodInfo") || line.Contains("System.Reflection.MethodBase.Invoke")) continue;
            trace.Append(line.Replace(buildDirectory + "/", "")).Append('\n');
        }
        Console.Error.Write("Unhandled exception. " + trace);
        Console.Error.Flush();
        return 1;
    }

    // ---- the transformation -------------------------------------------------------------------

    public sealed class ScriptError : Exception { public ScriptError(string m) : base(m) { } }

    public sealed class Program { public string Text; public bool IsAsync; }

    enum Kind { Using, Type, Member, Statement }

    sealed class Token
    {
        public string Text; public int Start; public int End; public int Depth; public bool IsWord;
        public override string ToString() { return Text; }
    }

    sealed class Chunk
    {
        public Kind Kind; public int Start; public int End; public List<Token> Tokens = new List<Token>();
        public bool NeedsStatic;
    }

    static readonly HashSet<string> Modifiers = new HashSet<string> {
        "public", "private", "protected", "internal", "static", "readonly", "const", "abstract",
        "sealed", "virtual", "override", "extern", "unsafe", "partial", "volatile", "async",
    };
    static readonly HashSet<string> StatementWords = new HashSet<string> {
        "return", "await", "throw", "new", "if", "else", "while", "for", "foreach", "do", "switch",
        "using", "lock", "yield", "var", "case", "goto", "try", "fixed", "checked", "unchecked",
        "break", "continue", "default", "typeof", "sizeof", "nameof", "this", "base", "delegate",
    };
    static readonly HashSet<string> TypeWords = new HashSet<string> { "class", "struct", "interface", "enum", "namespace" };

    public static Program Transform(string source)
    {
        source = source.Replace("\r\n", "\n");
        source = StripDirectives(source);
        var tokens = Tokenize(source);
        var chunks = Split(tokens);
        if (chunks.Count > 0)
        {
            // an unterminated last statement would be reported inside the generated code
            var last = chunks[chunks.Count - 1].Tokens;
            var end = last[last.Count - 1];
            if (end.Text != ";" && end.Text != "}")
                throw new ScriptError(string.Format("{0}({1},{2}): error CS1002: ; expected",
                    ScriptName, LineOf(source, end.End), end.End - LineStart(source, end.End) + 1));
        }
        var usings = new StringBuilder();
        var types = new StringBuilder();
        var members = new StringBuilder();
        var body = new StringBuilder();
        bool isAsync = false;
        foreach (var c in chunks)
        {
            Classify(c);
            string text = source.Substring(c.Start, c.End - c.Start);
            int line = LineOf(source, c.Start);
            string indent = new string(' ', c.Start - LineStart(source, c.Start));
            if (c.Kind == Kind.Statement && c.Tokens.Exists(t => t.Text == "await")) isAsync = true;
            var target = c.Kind == Kind.Using ? usings : c.Kind == Kind.Type ? types : c.Kind == Kind.Member ? members : body;
            if (c.NeedsStatic) target.Append("static\n");
            target.Append("#line ").Append(line).Append(" \"").Append(ScriptName).Append("\"\n");
            target.Append(indent).Append(text).Append('\n');
            target.Append("#line default\n");
        }

        var sb = new StringBuilder();
        foreach (var u in DefaultUsings) sb.Append("using ").Append(u).Append(";\n");
        sb.Append("using static System.Console;\n");
        sb.Append(usings).Append(types);
        sb.Append("public static class ").Append(ClassName).Append(" {\n");
        // dotnet-script's global `Args`: what follows `--` on its command line
        // (read from the domain, not set afterwards: static initialisers that read it see the args)
        sb.Append("public static System.Collections.Generic.IList<string> Args = (System.Collections.Generic.IList<string>)"
                  + "System.AppDomain.CurrentDomain.GetData(\"csrun.args\") ?? new System.Collections.Generic.List<string>();\n");
        sb.Append(members);
        sb.Append("public static ").Append(isAsync ? "async Task<int> " : "int ").Append(EntryName).Append("() {\n");
        sb.Append(body);
        sb.Append("#pragma warning disable 162\nreturn System.Environment.ExitCode;\n#pragma warning restore 162\n}\n}\n");
        return new Program { Text = sb.ToString(), IsAsync = isAsync };
    }

    static int LineOf(string s, int pos)
    {
        int line = 1;
        for (int i = 0; i < pos; i++) if (s[i] == '\n') line++;
        return line;
    }

    static int LineStart(string s, int pos)
    {
        int i = pos;
        while (i > 0 && s[i - 1] != '\n') i--;
        return i;
    }

    // `#r` and `#load` are script directives, not C#: blank them out (keeping line numbers).
    static string StripDirectives(string source)
    {
        var lines = source.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string t = lines[i].TrimStart();
            if (t.StartsWith("#!")) { lines[i] = ""; continue; } // a shebang line
            bool reference = t.StartsWith("#r ") || t.StartsWith("#r\"");
            if (reference && t.Substring(2).TrimStart().StartsWith("\"nuget:", StringComparison.OrdinalIgnoreCase))
            {
                if (PackageReferences == null)
                    throw new ScriptError(string.Format(
                        "{0}({1},1): error CSX0002: packages are restored by the service; none were restored for this run",
                        ScriptName, i + 1));
                lines[i] = "";
                continue;
            }
            if (reference || t.StartsWith("#load ") || t.StartsWith("#load\""))
                throw new ScriptError(string.Format(
                    "{0}({1},1): error CSX0001: '{2}' is not supported on this agent type; use #r \"nuget: Id, Version\"",
                    ScriptName, i + 1, reference ? "#r" : "#load"));
        }
        return string.Join("\n", lines);
    }

    static List<Token> Tokenize(string s)
    {
        var tokens = new List<Token>();
        int depth = 0;
        int i = 0;
        while (i < s.Length)
        {
            char c = s[i];
            if (char.IsWhiteSpace(c)) { i++; continue; }
            if (c == '/' && i + 1 < s.Length && s[i + 1] == '/') { while (i < s.Length && s[i] != '\n') i++; continue; }
            if (c == '/' && i + 1 < s.Length && s[i + 1] == '*')
            {
                int end = s.IndexOf("*/", i + 2, StringComparison.Ordinal);
                i = end < 0 ? s.Length : end + 2;
                continue;
            }
            if (c == '#' && IsLineStart(s, i)) { while (i < s.Length && s[i] != '\n') i++; continue; }
            int start = i;
            if (c == '"' || c == '\'' || ((c == '@' || c == '$') && i + 1 < s.Length && (s[i + 1] == '"' || s[i + 1] == '@' || s[i + 1] == '$')))
            {
                i = SkipLiteral(s, i);
                tokens.Add(new Token { Text = "\"", Start = start, End = i, Depth = depth });
                continue;
            }
            if (char.IsLetterOrDigit(c) || c == '_' || c == '@')
            {
                i++;
                while (i < s.Length && (char.IsLetterOrDigit(s[i]) || s[i] == '_')) i++;
                tokens.Add(new Token { Text = s.Substring(start, i - start), Start = start, End = i, Depth = depth, IsWord = true });
                continue;
            }
            if (c == '=' && i + 1 < s.Length && s[i + 1] == '>') i += 2; else i++;
            string text = s.Substring(start, i - start);
            if (text == "}" || text == ")" || text == "]") depth = Math.Max(0, depth - 1);
            tokens.Add(new Token { Text = text, Start = start, End = i, Depth = depth });
            if (text == "{" || text == "(" || text == "[") depth++;
        }
        return tokens;
    }

    static bool IsLineStart(string s, int i)
    {
        for (int j = i - 1; j >= 0 && s[j] != '\n'; j--) if (!char.IsWhiteSpace(s[j])) return false;
        return true;
    }

    // Skips a string or char literal starting at i (including @"", $"", $@"" forms); returns the end.
    static int SkipLiteral(string s, int i)
    {
        bool verbatim = false, interpolated = false;
        while (s[i] == '@' || s[i] == '$') { if (s[i] == '@') verbatim = true; else interpolated = true; i++; }
        char quote = s[i++];
        while (i < s.Length)
        {
            char c = s[i];
            if (c == '\\' && !verbatim) { i += 2; continue; }
            if (c == quote)
            {
                if (verbatim && i + 1 < s.Length && s[i + 1] == quote) { i += 2; continue; }
                return i + 1;
            }
            if (c == '\n' && !verbatim) return i; // unterminated: let the compiler report it
            if (interpolated && c == '{')
            {
                if (i + 1 < s.Length && s[i + 1] == '{') { i += 2; continue; }
                i = SkipHole(s, i + 1);
                continue;
            }
            i++;
        }
        return i;
    }

    // Skips the expression of an interpolation hole up to and including its closing brace.
    static int SkipHole(string s, int i)
    {
        int depth = 0;
        while (i < s.Length)
        {
            char c = s[i];
            if (c == '"' || c == '\'' || ((c == '@' || c == '$') && i + 1 < s.Length && (s[i + 1] == '"' || s[i + 1] == '@' || s[i + 1] == '$')))
            { i = SkipLiteral(s, i); continue; }
            if (c == '{' || c == '(' || c == '[') depth++;
            else if (c == '}' && depth == 0) return i + 1;
            else if (c == '}' || c == ')' || c == ']') depth--;
            i++;
        }
        return i;
    }

    static readonly HashSet<string> Continuations = new HashSet<string> {
        "else", "catch", "finally", ";", ")", ",", ".", "?", ":", "=", "+", "-", "*", "/", "&", "|", "=>", "[", "(",
    };

    // Splits the token stream into top-level chunks: a chunk ends at `;` at depth 0, or at a `}`
    // back to depth 0 that no continuation (else, catch, `;`, an operator...) follows.
    static List<Chunk> Split(List<Token> tokens)
    {
        var chunks = new List<Chunk>();
        Chunk current = null;
        for (int k = 0; k < tokens.Count; k++)
        {
            var t = tokens[k];
            if (current == null) current = new Chunk { Start = t.Start };
            current.Tokens.Add(t);
            bool end = false;
            if (t.Depth == 0 && t.Text == ";") end = true;
            else if (t.Depth == 0 && t.Text == "}")
            {
                var next = k + 1 < tokens.Count ? tokens[k + 1] : null;
                bool isDo = current.Tokens[0].Text == "do";
                end = next == null || !(Continuations.Contains(next.Text) || (isDo && next.Text == "while"));
            }
            if (end || k == tokens.Count - 1)
            {
                current.End = t.End;
                chunks.Add(current);
                current = null;
            }
        }
        return chunks;
    }

    static void Classify(Chunk c)
    {
        var top = c.Tokens.FindAll(t => t.Depth == 0);
        int i = 0;
        while (i + 1 < top.Count && top[i].Text == "[" && top[i + 1].Text == "]") i += 2; // attributes
        bool hasStatic = false, hasModifier = false;
        while (i < top.Count && Modifiers.Contains(top[i].Text))
        {
            hasModifier = true;
            if (top[i].Text == "static" || top[i].Text == "const") hasStatic = true;
            i++;
        }
        if (i >= top.Count) { c.Kind = Kind.Statement; return; }
        string first = top[i].Text;
        if (first == "using" && i + 1 < top.Count && top[i + 1].Text != "(") { c.Kind = Kind.Using; return; }
        if (TypeWords.Contains(first) || (first == "delegate" && i + 2 < top.Count && top[i + 2].IsWord)) { c.Kind = Kind.Type; return; }
        if (!hasModifier && StatementWords.Contains(first)) { c.Kind = Kind.Statement; return; }
        if (IsMethod(top, i) || IsProperty(c, top, i) || (hasModifier && top[i].IsWord))
        {
            // a member with its own modifiers (`static int n;`, `public int P {get;}`) or a method
            c.Kind = Kind.Member;
            c.NeedsStatic = !hasStatic;
            if (c.NeedsStatic && top[0].Text == "[") throw new ScriptError(string.Format(
                "{0}: error CSX0002: declare top-level members with attributes as static", ScriptName));
            return;
        }
        c.Kind = Kind.Statement;
    }

    // TYPE NAME[<T>] ( ... ) followed by `{`, `=>` or `where`
    static bool IsMethod(List<Token> top, int i)
    {
        int paren = top.FindIndex(i, t => t.Text == "(");
        if (paren < i + 2) return false;
        int name = paren - 1;
        if (top[name].Text == ">") // generic method: skip back over <...>
        {
            int level = 0;
            for (; name > i; name--)
            {
                if (top[name].Text == ">") level++;
                else if (top[name].Text == "<" && --level == 0) break;
            }
            name--;
        }
        if (name <= i || !top[name].IsWord || StatementWords.Contains(top[name].Text)) return false;
        var before = top[name - 1];
        if (!(before.IsWord || before.Text == ">" || before.Text == "]" || before.Text == "?")) return false;
        if (before.IsWord && StatementWords.Contains(before.Text)) return false;
        for (int j = i; j < name; j++)
            if (top[j].Text == "=" || top[j].Text == "(" || top[j].Text == "\"") return false;
        int close = paren + 1; // `)` of the parameter list is the next depth-0 token after `(`
        if (close >= top.Count || top[close].Text != ")") return false;
        if (close + 1 >= top.Count) return false;
        string after = top[close + 1].Text;
        return after == "{" || after == "=>" || after == "where";
    }

    // TYPE NAME { get/set ... }
    static bool IsProperty(Chunk c, List<Token> top, int i)
    {
        int brace = top.FindIndex(i, t => t.Text == "{");
        if (brace < i + 2 || !top[brace - 1].IsWord) return false;
        for (int j = i; j < brace; j++) if (!(top[j].IsWord || top[j].Text == "<" || top[j].Text == ">" || top[j].Text == "." || top[j].Text == "?" || top[j].Text == ",")) return false;
        int k = c.Tokens.IndexOf(top[brace]) + 1;
        if (k >= c.Tokens.Count) return false;
        while (k < c.Tokens.Count && (Modifiers.Contains(c.Tokens[k].Text) || c.Tokens[k].Text == "[")) k++;
        string inner = k < c.Tokens.Count ? c.Tokens[k].Text : "";
        return inner == "get" || inner == "set";
    }
}
