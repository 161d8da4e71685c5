"""Restores against hostile feeds and packages on loopback (testing/nuget_feed.py): each ends as the
script's RestoreError with an `error NU…` line, in time, within the job's budget and its cgroup,
and a feed's credentials go nowhere else. The packages are packed here (no compiler needed)."""

import base64
import hashlib
import io
import json
import os
import time
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from executors.nuget import cgroup as nuget_cgroup
from executors.nuget.cache import META
from executors.nuget.config import Source, parse
from executors.nuget.feeds import same_origin
from executors.nuget.packages import Target
from executors.nuget.restore import restore
from executors.nuget.spec import NuGetSpec, RestoreError, references
from testing.nuget_feed import PASSWORD, USER, nuspec, pack, response, serve, serve_raw, v3_index

# hostile feeds served on loopback, restores in cgroups of their own, deadlines waited out
pytestmark = pytest.mark.integration

LOOPBACK = ("127.0.0.0/8",)
DLL = b"MZ" + bytes(200)
NUPKG = pack("Acme.X", "1.0.0", {"lib/net45/Acme.X.dll": DLL})


def spec_for(url: str, tmp_path, **kw) -> NuGetSpec:
    kw = {"max_extract_mb": 16, "timeout_s": 20, **kw}
    return NuGetSpec(sources=(Source("hostile", url),), target=Target(net=(4, 8)), cache_dir=str(tmp_path / "cache"),
                     allow=LOOPBACK, **kw)


def run(script: str, spec: NuGetSpec):
    with restore(references(script), spec) as restored:
        return restored, restored.references(), [Path(src).is_dir() for src, _ in restored.mounts()]


def leftovers(spec: NuGetSpec) -> list[str]:
    tmp = Path(spec.cache_dir) / "tmp"
    return os.listdir(tmp) if tmp.exists() else []


# ---- 5: the deadline is real --------------------------------------------------------------------

def trickle(head: bytes, body: bytes, seconds: float = 8.0):
    """Answers `head` then `body` one byte every 0.3 s, for `seconds` at most (so that a restore
    that does not keep its deadline fails this test in seconds, not minutes)."""
    def respond(feed, path, out):
        out.write(head)
        out.flush()
        end = time.monotonic() + seconds
        for byte in body:
            if time.monotonic() > end:
                return
            out.write(bytes([byte]))
            out.flush()
            time.sleep(0.3)  # the trickle itself
    return respond


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_trickling_feed_ends_at_the_restores_deadline(tmp_path, where):
    body = b'{"version": "3.0.0", "resources": []}' + b" " * 200
    answer = response(200, body)
    head, rest = (answer[:answer.index(b"\r\n\r\n") + 4], body) if where == "body" else (b"", answer)
    with serve_raw(trickle(head, rest)) as feed:
        spec = spec_for(f"{feed.url}/v3/index.json", tmp_path, timeout_s=2)
        started = time.monotonic()
        with pytest.raises(RestoreError, match=r"error NU1301: the restore timed out after 2 s \(NUGET_RESTORE_TIMEOUT_S\) "
                                               r"while reading the versions of Acme.Slow from feed 'hostile'"):
            run('#r "nuget: Acme.Slow, 1.0.0"', spec)
        assert time.monotonic() - started < 3.5  # the feed trickles on for 8 s
    assert leftovers(spec) == []


# ---- 6: a hostile feed is the script's failure ----------------------------------------------------

def answers(routes: dict):
    def respond(feed, path, out):
        body = routes.get(path)
        if callable(body):
            body = body(feed)
        out.write(body if isinstance(body, bytes) and body.startswith(b"HTTP/") else
                  response(200, body) if body is not None else response(404))
    return respond


@pytest.mark.parametrize("index, versions, message", [
    ('{"resources": ["PackageBaseAddress/3.0.0", 1]}', None, "not a NuGet v3 service index"),
    ('{"resources": {"@id": "x"}}', None, "not a NuGet v3 service index"),
    ('[1, 2]', None, "not a NuGet v3 service index"),
    ("[" * 200_000 + "]" * 200_000, None, "its service index is not readable JSON"),
    ('{"resources": [{"@id": "http://127.0.0.1:99999/flat/", "@type": "PackageBaseAddress/3.0.0"}]}', None,
     r"http://127.0.0.1:99999/flat/acme.x/index.json: not a valid URL"),
    ('{"resources": [{"@id": "http://[::1/flat/", "@type": "PackageBaseAddress/3.0.0"}]}', None,
     "PackageBaseAddress is not a valid URL"),
    (None, '{"versions": "1.0.0"}', "unreadable version list of Acme.X"),
    (None, '{"versions": [[[[[[' + "[" * 100_000, "the version list of Acme.X is not readable JSON"),
    (None, response(302, headers=[("Location", "http://127.0.0.1:70000/x")]), "not a valid URL"),
])
def test_a_hostile_feed_ends_the_restore_with_a_reason(tmp_path, index, versions, message):
    routes = {"/v3/index.json": (lambda feed: index.encode()) if index else (lambda feed: v3_index(f"{feed.url}/v3")),
              "/v3/flat/acme.x/index.json": versions.encode() if isinstance(versions, str) else versions}
    with serve_raw(answers(routes)) as feed:
        spec = spec_for(f"{feed.url}/v3/index.json", tmp_path)
        with pytest.raises(RestoreError, match=r"error NU1301: .*'hostile' .*" + message):
            run('#r "nuget: Acme.X, 1.0.0"', spec)


def test_a_content_length_that_is_no_number_is_read_as_unknown(tmp_path):
    # "\xb2" is "²": str.isdigit() says yes, int() says no
    nupkg = b"HTTP/1.1 200 X\r\nContent-Length: \xb2\r\nConnection: close\r\n\r\n" + NUPKG
    routes = {"/v3/index.json": lambda feed: v3_index(f"{feed.url}/v3"),
              "/v3/flat/acme.x/index.json": b'{"versions": ["1.0.0"]}', "/v3/flat/acme.x/1.0.0/acme.x.1.0.0.nupkg": nupkg}
    with serve_raw(answers(routes)) as feed:
        restored, _, mounted = run('#r "nuget: Acme.X, 1.0.0"', spec_for(f"{feed.url}/v3/index.json", tmp_path))
    assert [p.id for p in restored.packages] == ["Acme.X"] and mounted == [True]


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v3/index.json", "http://127.0.0.1:port/v3/index.json",
                                 "http://[127.0.0.1/v3/index.json"])
def test_a_source_with_a_bad_port_or_host_is_refused(tmp_path, url):
    with pytest.raises(RestoreError, match=r"error NU1301: package source 'hostile' cannot be used: .*not a valid URL"):
        run('#r "nuget: Acme.X, 1.0.0"', spec_for(url, tmp_path))


def package_feed(packages: dict):
    return serve({(pid, ver): data for (pid, ver), data in packages.items()})


def packed(files: dict[str, bytes], package_id: str = "Acme.Odd") -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the duplicate names we want
        return pack(package_id, "1.0.0", files)


@pytest.mark.parametrize("files", [
    {"lib/net45/A.dll": DLL, "lib/net45/a.dll": DLL},  # the same file on a case-insensitive file system
    {"lib/net45/A.dll": DLL, "lib\\net45\\A.dll": DLL},  # the same file here
    {"lib/net45/A.dll": DLL, "lib/NET45/B.dll": DLL},  # the same folder, twice
    {"lib/net45": DLL, "lib/net45/A.dll": DLL},  # a file that is a folder too
    {"lib/net45/A.dll": DLL, "lib/./net45//A.dll": DLL},
])
def test_archive_entries_that_conflict_as_paths_are_refused(tmp_path, files):
    with package_feed({("Acme.Odd", "1.0.0"): packed(files)}) as feed:
        spec = spec_for(feed.v3(), tmp_path)
        with pytest.raises(RestoreError, match=r"error NU1403: package Acme.Odd 1.0.0 from feed 'hostile' .* "
                                               r"is unusable: it has entries that conflict as paths"):
            run('#r "nuget: Acme.Odd, 1.0.0"', spec)
    assert leftovers(spec) == [] and not (Path(spec.cache_dir) / "entries" / "acme.odd").exists()


def test_an_upper_case_lib_folder_is_nugets_lib_folder(tmp_path):
    with package_feed({("Acme.Old", "1.0.0"): packed({"LIB/net45/Acme.Old.dll": DLL, "Lib/net45/de/x.dll": DLL},
                                                     "Acme.Old")}) as feed:
        restored, env, mounted = run('#r "nuget: Acme.Old, 1.0.0"', spec_for(feed.v3(), tmp_path))
    assert restored.packages[0].framework == "net45" and mounted == [True]
    assert env == ("/nuget/acme.old/1.0.0/Acme.Old.dll",)


def test_an_encrypted_entry_is_the_packages_fault(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("Acme.Odd.nuspec", nuspec("Acme.Odd", "1.0.0"))
        z.writestr("lib/net45/A.dll", DLL)
    data = bytearray(buf.getvalue())
    data[data.rindex(b"lib/net45/A.dll") - 46 + 8] |= 1  # "encrypted" in its central directory record
    with package_feed({("Acme.Odd", "1.0.0"): bytes(data)}) as feed:
        with pytest.raises(RestoreError, match=r"error NU1403: package Acme.Odd 1.0.0 .* cannot be extracted"):
            run('#r "nuget: Acme.Odd, 1.0.0"', spec_for(feed.v3(), tmp_path))


# ---- 4: the job's budget, its cgroup, eviction --------------------------------------------------------

def chain(n: int, size: int, random: bool = True, files: int = 1) -> dict:
    """Acme.P0 → Acme.P1 → … each with `files` files of `size` bytes (incompressible or zeros)."""
    packages = {}
    for i in range(n):
        deps = [(f"Acme.P{i + 1}", "1.0.0")] if i + 1 < n else []
        content = {f"lib/net45/F{k}.dll": os.urandom(size) if random else bytes(size) for k in range(files)}
        packages[(f"Acme.P{i}", "1.0.0")] = pack(f"Acme.P{i}", "1.0.0", content, deps)
    return packages


@pytest.mark.parametrize("packages, budget, message", [
    (chain(3, 600 << 10), {"budget_download_mb": 1}, r"Acme.P1 1.0.0 .*more than the job's restore budget of 1 MiB downloaded"),
    (chain(3, 600 << 10, random=False), {"budget_extract_mb": 1},
     r"Acme.P1 1.0.0 .*more than the job's restore budget of 1 MiB of package files"),
    (chain(3, 10, files=8), {"budget_files": 20}, r"Acme.P2 1.0.0 .*more than the job's restore budget of 20 package files"),
    (chain(3, 10), {"budget_packages": 2}, r"cannot restore Acme.P2 \(for Acme.P1 1.0.0\): .*budget of 2 packages"),
])
def test_a_restore_over_the_jobs_budget_fails_naming_it(tmp_path, packages, budget, message):
    with package_feed(packages) as feed:
        spec = spec_for(feed.v3(), tmp_path, **budget)
        with pytest.raises(RestoreError, match=r"error NU1000: .*" + message):
            run('#r "nuget: Acme.P0, 1.0.0"', spec)
        assert "Acme.P2/1.0.0" not in feed.downloads or "budget_files" in budget  # it stopped there
    assert leftovers(spec) == []


def test_packages_from_the_cache_count_against_the_budget_too(tmp_path):
    with package_feed(chain(2, 600 << 10, random=False)) as feed:
        spec = spec_for(feed.v3(), tmp_path)
        run('#r "nuget: Acme.P0, 1.0.0"', spec)  # both cached now
        with pytest.raises(RestoreError, match=r"NU1000: cannot restore Acme.P1 1.0.0 from the cache: .*budget of 1 MiB"):
            run('#r "nuget: Acme.P0, 1.0.0"', replace(spec, budget_extract_mb=1))


def test_room_is_made_before_a_package_is_installed_even_if_the_job_fails(tmp_path):
    packages = chain(1, 700 << 10, random=False)
    packages[("Acme.Q", "1.0.0")] = pack("Acme.Q", "1.0.0", {"lib/net45/Q.dll": bytes(700 << 10)})
    with package_feed(packages) as feed:
        spec = spec_for(feed.v3(), tmp_path, cache_mb=1)
        run('#r "nuget: Acme.P0, 1.0.0"', spec)
        with pytest.raises(RestoreError, match="NU1101"):  # installs Acme.Q, then fails
            run('#r "nuget: Acme.Q, 1.0.0"\n#r "nuget: Acme.Nope, 1.0.0"', spec)
    entries = Path(spec.cache_dir) / "entries"
    assert sorted(os.listdir(entries)) == ["acme.q"]  # Acme.P0 made room for it: the cache stays in its bound


def test_the_restore_runs_within_its_memory_limit(tmp_path):
    probe = nuget_cgroup.Cgroup("probe", 1, 1 << 30)
    assert probe.create(), "the restore's cgroup could not be made: this test needs cgroups (as the service does)"
    probe.remove()
    big = b"[" + b"[]," * (7 << 18) + b"[]]"  # 5 MiB of JSON, ~120 MB of lists once parsed
    with serve_raw(answers({"/v3/index.json": lambda feed: v3_index(f"{feed.url}/v3"),
                            "/v3/flat/acme.x/index.json": big})) as feed:
        spec = spec_for(f"{feed.url}/v3/index.json", tmp_path, restore_memory_mb=64)
        with pytest.raises(RestoreError, match=r"error NU1000: the restore needed more than its 64 MiB of memory "
                                               r"while reading the versions of Acme.X from feed 'hostile'"):
            run('#r "nuget: Acme.X, 1.0.0"', spec)
    own = [nuget_cgroup._own(c) for c in ("cpu", "memory", "pids")]
    assert [p for d in own if d for p in d.glob(f"{nuget_cgroup.PREFIX}*")] == []  # removed


# ---- 9: credentials and the cache's digests ---------------------------------------------------------

AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.mark.parametrize("elsewhere", ["127.0.0.1", "127.0.0.2"])  # another port, another host
def test_credentials_are_not_sent_after_a_redirect_elsewhere(tmp_path, elsewhere):
    with serve_raw(answers({"/acme.x.nupkg": response(200, NUPKG, kind="application/octet-stream")}), elsewhere) as cdn:
        def private(feed, path, out):
            if feed.requests[-1][1].get("authorization") != AUTH:
                return out.write(response(401))
            out.write({"/v3/index.json": response(200, v3_index(f"{feed.url}/v3")),
                       "/v3/flat/acme.x/index.json": response(200, b'{"versions": ["1.0.0"]}')}.get(
                path, response(302, headers=[("Location", f"{cdn.url}/acme.x.nupkg")])))
        with serve_raw(private) as feed:
            config = (f'<configuration><packageSources><add key="hostile" value="{feed.url}/v3/index.json" />'
                      f'</packageSources><packageSourceCredentials><hostile><add key="Username" value="{USER}" />'
                      f'<add key="ClearTextPassword" value="{PASSWORD}" /></hostile></packageSourceCredentials></configuration>')
            spec = replace(spec_for("", tmp_path), sources=tuple(parse(config)))
            restored, _, _ = run('#r "nuget: Acme.X, 1.0.0"', spec)
    assert [p.id for p in restored.packages] == ["Acme.X"]
    assert len(feed.requests) == 3 and all(h.get("authorization") == AUTH for _, h in feed.requests)
    assert cdn.requests and all("authorization" not in h for _, h in cdn.requests)


@pytest.mark.parametrize("url, sent", [
    ("https://feed.example/v3/index.json", True), ("https://feed.example:443/flat/x.nupkg", True),
    ("http://feed.example/v3/index.json", False), ("http://feed.example:443/v3/index.json", False),
    ("https://feed.example:8443/v3/index.json", False), ("https://cdn.feed.example/x.nupkg", False),
    ("https://FEED.example/x", True), ("https://feed.example:99999/x", False),
])
def test_credentials_go_to_their_own_scheme_host_and_port_only(url, sent):
    assert same_origin("https://feed.example/v3/index.json", url) is sent


def test_a_cache_entry_is_used_only_for_its_full_digest(tmp_path):
    real = pack("Acme.X", "1.0.0", {"lib/net45/Acme.X.dll": DLL + b"real"})
    with package_feed({("Acme.X", "1.0.0"): real}) as feed:
        spec = spec_for(feed.v3(), tmp_path)
        entry = Path(run('#r "nuget: Acme.X, 1.0.0"', spec)[0].packages[0].path)
        assert entry.name == hashlib.sha512(real).hexdigest()
        # another package's entry filed under this one's 64-bit prefix (a collision), intact in itself
        forged = entry.parent / entry.name[:16]
        os.rename(entry, forged)
        meta = json.loads((forged / META).read_text())
        meta["sha512"] = "0" * 128
        (forged / META).write_text(json.dumps(meta))
        before = feed.downloads["Acme.X/1.0.0"]
        assert Path(run('#r "nuget: Acme.X, 1.0.0"', spec)[0].packages[0].path) == entry
        assert feed.downloads["Acme.X/1.0.0"] == before + 1  # not taken from the forged entry
