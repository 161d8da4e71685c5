"""A real NuGet feed for the tests and benchmarks: packages compiled with the sandbox image's mcs
and packed with their .nuspec, served over HTTP on loopback as a v3 feed (service index + flat
container), a v2 feed (FindPackagesById + package download, which redirects like real v2 feeds do)
and a private v3 feed that wants Basic credentials. It counts every .nupkg it hands out.

`serve_raw` is a hostile feed instead: a function writes each answer's bytes itself (a trickle,
JSON of the wrong shape, a redirect elsewhere), and every request's headers are kept."""

from __future__ import annotations

import base64
import io
import json
import re
import socketserver
import subprocess
import threading
import zipfile
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

IMAGE = "dotnet-scripts/mono-6"
USER, PASSWORD = "reader", "s3cret-feed-password"

#: (id, version, {lib folder: C# source}, dependencies as (id, range))
LIBRARIES = [
    ("Acme.Formatting", "1.0.0", {"net45": 'namespace Acme { public static class Fmt { '
                                  'public static string Bracket(string s) { return "[" + s + "]"; } } }'}, []),
    ("Acme.Formatting", "1.1.0-beta", {"net45": 'namespace Acme { public static class Fmt { '
                                       'public static string Bracket(string s) { return "beta"; } } }'}, []),
    ("Acme.Formatting", "2.0.0", {"net45": 'namespace Acme { public static class Fmt { '
                                  'public static string Bracket(string s) { return "<" + s + ">"; } } }'}, []),
    ("Acme.Greeter", "1.0.0", {"net45": 'namespace Acme { public static class Greeter { '
                               'public static string Hello(string n) { return Fmt.Bracket("Hello, " + n); } } }'},
     [("Acme.Formatting", "[1.0.0, 2.0.0)")]),
    ("Acme.Multi", "1.0.0", {tfm: 'namespace Acme { public static class Multi { '
                             f'public static string Which() {{ return "{tfm}"; }} }} }}'
                             for tfm in ("net20", "net461", "netstandard2.0", "net6.0")}, []),
    ("Acme.StdOnly", "1.0.0", {"netstandard2.0": "namespace Acme { public static class StdOnly { } }"}, []),
    # a stand-in for the README's example, with the one call it makes (the real package has lib/net45 too)
    ("Newtonsoft.Json", "13.0.1", {"net45": r"""namespace Newtonsoft.Json { public static class JsonConvert {
        public static string SerializeObject(object o) {
            var sb = new System.Text.StringBuilder("{");
            foreach (var p in o.GetType().GetProperties()) {
                if (sb.Length > 1) sb.Append(",");
                var v = p.GetValue(o, null);
                sb.Append("\"").Append(p.Name).Append("\":");
                sb.Append(v is string ? "\"" + v + "\"" : System.Convert.ToString(v, System.Globalization.CultureInfo.InvariantCulture));
            }
            return sb.Append("}").ToString(); } } }"""}, []),
    ("Acme.Private", "1.0.0", {"net45": 'namespace Acme { public static class Secret { '
                               'public static string Word() { return "private-ok"; } } }'}, []),
]


def nuspec(package_id: str, version: str, deps=(), declared_id: str | None = None) -> str:
    dep_xml = "".join(f'<dependency id="{d}" version="{r}" />' for d, r in deps)
    return ('<?xml version="1.0" encoding="utf-8"?>'
            '<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd"><metadata>'
            f"<id>{declared_id or package_id}</id><version>{version}</version><authors>tests</authors>"
            f"<description>test package</description>"
            f'<dependencies><group targetFramework=".NETFramework4.5">{dep_xml}</group></dependencies>'
            "</metadata></package>")


def pack(package_id: str, version: str, files: dict[str, bytes], deps=(), declared_id: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{package_id}.nuspec", nuspec(package_id, version, deps, declared_id))
        z.writestr("[Content_Types].xml", "<Types/>")
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def build_packages(workdir: Path) -> dict[tuple[str, str], bytes]:
    """Compiles every library with mcs (one container run) and packs it; (id, version) → .nupkg."""
    script = []
    for pid, ver, sources, deps in LIBRARIES:
        for tfm, source in sources.items():
            d = workdir / pid / ver / tfm
            d.mkdir(parents=True, exist_ok=True)
            (d / "lib.cs").write_text(source)
            refs = " ".join(f"-r:/src/{dep}/1.0.0/net45/{dep}.dll" for dep, _ in deps)
            script.append(f"mcs -nologo -target:library -out:/src/{pid}/{ver}/{tfm}/{pid}.dll {refs} /src/{pid}/{ver}/{tfm}/lib.cs")
    r = subprocess.run(["docker", "run", "--rm", "--runtime", "runc", "--user", "0", "--network", "none",
                        "-v", f"{workdir}:/src", "--entrypoint", "sh", IMAGE, "-c", " && ".join(script)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the test packages did not compile:\n{r.stdout}{r.stderr}"
    packages = {}
    for pid, ver, sources, deps in LIBRARIES:
        files = {f"lib/{tfm}/{pid}.dll": (workdir / pid / ver / tfm / f"{pid}.dll").read_bytes() for tfm in sources}
        packages[(pid, ver)] = pack(pid, ver, files, deps)
    dll = packages[("Acme.Formatting", "1.0.0")]
    with zipfile.ZipFile(io.BytesIO(dll)) as z:
        real_dll = z.read("lib/net45/Acme.Formatting.dll")
    # hostile ones: an entry that climbs out of its folder, and 64 MiB of zeros in a few KiB
    packages[("Evil.Slip", "1.0.0")] = pack("Evil.Slip", "1.0.0", {
        "lib/net45/Evil.Slip.dll": real_dll, "../../../../tmp/dotnet-scripts-zip-slip.txt": b"escaped"})
    packages[("Evil.Bomb", "1.0.0")] = pack("Evil.Bomb", "1.0.0", {
        "lib/net45/Evil.Bomb.dll": real_dll, "lib/net45/zeros.bin": bytes(64 << 20)})
    packages[("Evil.Liar", "1.0.0")] = pack("Evil.Liar", "1.0.0", {"lib/net45/x.dll": real_dll},
                                           declared_id="Acme.Formatting")
    return packages


class Feed:
    def __init__(self, packages: dict[tuple[str, str], bytes]):
        self.packages = {(pid.lower(), ver.lower()): (pid, ver, data) for (pid, ver), data in packages.items()}
        self.downloads: Counter[str] = Counter()  #: "id/version" → .nupkg bytes served
        self.requests: list[str] = []
        self.url = ""

    def packages_by_id(self) -> dict[tuple[str, str], bytes]:
        return {(pid, ver): data for pid, ver, data in self.packages.values()}

    def versions(self, package_id: str) -> list[str]:
        return [ver for (pid, _), (_, ver, _) in self.packages.items() if pid == package_id.lower()]

    def nupkg(self, package_id: str, version: str) -> bytes | None:
        hit = self.packages.get((package_id.lower(), version.lower()))
        if hit:
            self.downloads[f"{hit[0]}/{hit[1]}"] += 1
            return hit[2]
        return None

    def v3(self, private: bool = False) -> str:
        return f"{self.url}/{'private/' if private else ''}v3/index.json"

    def v2(self) -> str:
        return f"{self.url}/v2/"

    def config(self, url: str | None = None, key: str = "test", credentials: bool = False) -> str:
        creds = (f"<packageSourceCredentials><{key}><add key=\"Username\" value=\"{USER}\" />"
                 f"<add key=\"ClearTextPassword\" value=\"{PASSWORD}\" /></{key}></packageSourceCredentials>"
                 if credentials else "")
        return (f'<?xml version="1.0" encoding="utf-8"?><configuration><packageSources><clear />'
                f'<add key="{key}" value="{url or self.v3()}" /></packageSources>{creds}</configuration>')


def _handler(feed: Feed):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, status: int, body: bytes = b"", kind: str = "application/json", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = unquote(self.path)
            feed.requests.append(path)
            if path.startswith("/private/"):
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self.send(401, headers=[("WWW-Authenticate", 'Basic realm="feed"')])
                path = path[len("/private"):]
            prefix = feed.url + ("/private" if self.path.startswith("/private/") else "")
            if path == "/v3/index.json":
                body = {"version": "3.0.0", "resources": [
                    {"@id": f"{prefix}/v3/flat/", "@type": "PackageBaseAddress/3.0.0"}]}
                return self.send(200, json.dumps(body).encode())
            if m := re.fullmatch(r"/v3/flat/([^/]+)/index\.json", path):
                versions = feed.versions(m.group(1))
                if not versions:
                    return self.send(404)
                return self.send(200, json.dumps({"versions": [v.lower() for v in versions]}).encode())
            if m := re.fullmatch(r"/v3/flat/([^/]+)/([^/]+)/[^/]+\.nupkg", path):
                data = feed.nupkg(m.group(1), m.group(2))
                return self.send(200, data, "application/octet-stream") if data else self.send(404)
            if m := re.fullmatch(r"/v2/FindPackagesById\(\)\?id='([^']+)'", path):
                entries = "".join(f"<entry><m:properties><d:Id>{m.group(1)}</d:Id><d:Version>{v}</d:Version>"
                                  "</m:properties></entry>" for v in feed.versions(m.group(1)))
                body = ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom" '
                        'xmlns:d="http://schemas.microsoft.com/ado/2007/08/dataservices" '
                        'xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata">'
                        f"{entries}</feed>")
                return self.send(200, body.encode(), "application/atom+xml")
            if m := re.fullmatch(r"/v2/package/([^/]+)/([^/]+)", path):
                pid, ver = m.groups()
                return self.send(302, headers=[("Location", f"/v3/flat/{pid.lower()}/{ver.lower()}/{pid.lower()}.{ver.lower()}.nupkg")])
            self.send(404)

    return Handler


@contextmanager
def serve(packages: dict[tuple[str, str], bytes]):
    feed = Feed(packages)
    with _serving(ThreadingHTTPServer(("127.0.0.1", 0), _handler(feed)), feed, "127.0.0.1"):
        yield feed


@contextmanager
def _serving(server, feed, host: str):
    """Serves in a thread until the block ends; the feed learns its URL."""
    feed.url = f"http://{host}:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def response(status: int, body: bytes = b"", headers=(), kind: str = "application/json") -> bytes:
    """An HTTP/1.1 answer as bytes (it closes the connection)."""
    head = [f"HTTP/1.1 {status} X", f"Content-Type: {kind}", f"Content-Length: {len(body)}", "Connection: close",
            *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def v3_index(base: str) -> bytes:
    return json.dumps({"version": "3.0.0", "resources": [
        {"@id": f"{base}/flat/", "@type": "PackageBaseAddress/3.0.0"}]}).encode()


class RawFeed:
    def __init__(self):
        self.url = ""
        self.requests: list[tuple[str, dict[str, str]]] = []  #: (path, headers) of every request


@contextmanager
def serve_raw(respond, host: str = "127.0.0.1"):
    """A feed on loopback whose answers `respond(feed, path, wfile)` writes, byte by byte if it likes."""
    feed = RawFeed()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            try:
                path = self.rfile.readline(65536).decode("latin-1").split(" ")[1]
                headers = {}
                while (line := self.rfile.readline(65536).decode("latin-1").strip()):
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                feed.requests.append((unquote(path), headers))
                respond(feed, unquote(path), self.wfile)
            except (OSError, IndexError):
                pass  # the client gave up (a restore past its deadline): nothing to answer

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        block_on_close = False

    with _serving(Server((host, 0), Handler), feed, host):
        yield feed
