"""Restores against a real NuGet feed on loopback (testing/nuget_feed.py): v3, v2, credentials,
ranges, dependencies, the cache, the egress policy and hostile packages. No sandbox here: the
packages' use inside one is tested end to end in tests/serve_app/test_nuget_e2e.py."""

import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from executors.nuget.config import Source, parse
from executors.nuget.packages import Target
from executors.nuget.restore import Cache, restore
from executors.nuget.spec import NuGetSpec, RestoreError, references
from executors.nuget.versions import Version

pytestmark = pytest.mark.integration

MONO = Target(net=(4, 8))
LOOPBACK = ("127.0.0.1/32",)


@pytest.fixture
def spec(nuget_feed, tmp_path) -> NuGetSpec:
    return NuGetSpec(sources=tuple(parse(nuget_feed.config())), target=MONO, cache_dir=str(tmp_path / "cache"),
                     max_extract_mb=16, timeout_s=60, allow=LOOPBACK)


def run(script: str, spec: NuGetSpec):
    with restore(references(script), spec) as restored:
        return restored


def versions(restored) -> dict[str, str]:
    return {p.id: str(p.version) for p in restored.packages}


def leftovers(spec: NuGetSpec) -> list[str]:
    tmp = Path(spec.cache_dir) / "tmp"
    return os.listdir(tmp) if tmp.exists() else []


def test_a_package_and_its_dependency_chain(spec):
    restored = run('#r "nuget: Acme.Greeter, 1.0.0"\nAcme.Greeter.Hello("x");', spec)
    assert versions(restored) == {"Acme.Greeter": "1.0.0", "Acme.Formatting": "1.0.0"}
    mounts = dict((dst, src) for src, dst in restored.mounts())
    assert mounts["/nuget/acme.greeter/1.0.0"].endswith("lib/net45")
    assert list(restored.references()) == [
        "/nuget/acme.greeter/1.0.0/Acme.Greeter.dll", "/nuget/acme.formatting/1.0.0/Acme.Formatting.dll"]
    for src in mounts.values():  # readable by the sandbox's unprivileged user
        assert all(os.stat(os.path.join(src, f)).st_mode & 0o004 for f in os.listdir(src))


@pytest.mark.parametrize("wanted, expected", [
    ("1.0.0", "1.0.0"), ("1.0", "1.0.0"), ("1.*", "1.0.0"), ("2.*", "2.0.0"), ("*", "2.0.0"), ("", "2.0.0"),
    ("[1.0,2.0)", "1.0.0"), ("(1.0,)", "2.0.0"), ("[2.0]", "2.0.0"), ("1.1.0-beta", "1.1.0-beta"),
])
def test_versions_and_ranges(spec, wanted, expected):
    directive = f'#r "nuget: Acme.Formatting, {wanted}"' if wanted else '#r "nuget: Acme.Formatting"'
    assert versions(run(directive, spec)) == {"Acme.Formatting": expected}


def test_the_scripts_own_version_wins_over_a_dependencys_range(spec):
    restored = run('#r "nuget: Acme.Formatting, 2.0.0"\n#r "nuget: Acme.Greeter, 1.0.0"', spec)
    assert versions(restored) == {"Acme.Greeter": "1.0.0", "Acme.Formatting": "2.0.0"}
    assert any("NU1608" in w and "Acme.Formatting 2.0.0" in w for w in restored.warnings)


def test_v2_feed_with_its_redirecting_download(spec, nuget_feed):
    v2 = replace(spec, sources=tuple(parse(nuget_feed.config(nuget_feed.v2()))))
    assert versions(run('#r "nuget: Acme.Greeter, 1.0.0"', v2)) == {"Acme.Greeter": "1.0.0", "Acme.Formatting": "1.0.0"}
    assert any(r.startswith("/v2/FindPackagesById()") for r in nuget_feed.requests)
    assert any(r.startswith("/v2/package/Acme.Greeter/1.0.0") for r in nuget_feed.requests)


def test_private_feed_needs_its_credentials(spec, nuget_feed):
    with_creds = replace(spec, sources=tuple(parse(nuget_feed.config(nuget_feed.v3(private=True), credentials=True))))
    assert versions(run('#r "nuget: Acme.Private, 1.0.0"', with_creds)) == {"Acme.Private": "1.0.0"}
    without = replace(spec, sources=tuple(parse(nuget_feed.config(nuget_feed.v3(private=True)))))
    with pytest.raises(RestoreError, match=r"Acme.Private.*access denied \(401\)"):
        run('#r "nuget: Acme.Private, 1.0.0"', without)


def test_cached_copy_is_not_handed_to_a_job_without_the_feeds_credentials(spec, nuget_feed):
    private = nuget_feed.config(nuget_feed.v3(private=True), credentials=True)
    run('#r "nuget: Acme.Private, 1.0.0"', replace(spec, sources=tuple(parse(private))))
    # same feed and cache, a wrong password: the cached package is not used, the feed says 401
    wrong = private.replace("s3cret-feed-password", "guess")
    with pytest.raises(RestoreError, match="access denied"):
        run('#r "nuget: Acme.Private, 1.0.0"', replace(spec, sources=tuple(parse(wrong))))


def test_a_repeated_restore_is_served_from_the_cache(spec, nuget_feed):
    before = nuget_feed.downloads.copy()
    run('#r "nuget: Acme.Greeter, 1.0.0"', spec)
    requests = len(nuget_feed.requests)
    run('#r "nuget: Acme.Greeter, 1.0.0"', spec)
    assert nuget_feed.downloads - before == {"Acme.Greeter/1.0.0": 1, "Acme.Formatting/1.0.0": 1}
    # the exact version and the dependency's inclusive minimum are both cached: no request at all
    assert len(nuget_feed.requests) == requests


def test_a_tampered_cache_entry_is_downloaded_again(spec, nuget_feed):
    dll = Path(run('#r "nuget: Acme.Formatting, 1.0.0"', spec).mounts()[0][0]) / "Acme.Formatting.dll"
    dll.write_bytes(b"not the package")
    before = nuget_feed.downloads["Acme.Formatting/1.0.0"]
    dll = Path(run('#r "nuget: Acme.Formatting, 1.0.0"', spec).mounts()[0][0]) / "Acme.Formatting.dll"
    assert nuget_feed.downloads["Acme.Formatting/1.0.0"] == before + 1
    assert dll.read_bytes().startswith(b"MZ")


@pytest.mark.parametrize("script, message", [
    ('#r "nuget: Acme.Nope, 1.0.0"', r"NU1101: package Acme.Nope was not found on 'test' \(http://127.0.0.1:\d+/v3/index.json\)"),
    ('#r "nuget: Acme.Formatting, 9.9.9"', r"NU1102: package Acme.Formatting has no version matching 9.9.9 .*newest: .*2.0.0"),
    ('#r "nuget: Acme.Formatting, 1.x"', r"script.csx\(1,1\): error NU0002: Acme.Formatting: '1.x' is not a version"),
    ('\n#r "nuget: Acme..Bad"', r"script.csx\(2,1\): error NU0001"),
    ('#r "nuget: Acme.StdOnly, 1.0.0"', r"NU1202: package Acme.StdOnly 1.0.0 has no assemblies .*net48.*netstandard2.0"),
    ('#r "nuget: Evil.Liar, 1.0.0"', r"NU1403: package Evil.Liar 1.0.0 from feed 'test' .* is Acme.Formatting 1.0.0"),
])
def test_restore_failures_say_which_package_and_feed(spec, script, message):
    with pytest.raises(RestoreError, match=message):
        run(script, spec)
    assert leftovers(spec) == []


def test_frameworks_best_for_mono_is_chosen(spec):
    restored = run('#r "nuget: Acme.Multi, 1.0.0"', spec)
    assert restored.packages[0].framework == "net461"  # not net20, netstandard2.0 or net6.0


def test_zip_slip_is_refused_and_nothing_escapes(spec):
    marker = Path("/tmp/dotnet-scripts-zip-slip.txt")
    marker.unlink(missing_ok=True)
    with pytest.raises(RestoreError, match=r"Evil.Slip 1.0.0 .* entry outside its folder"):
        run('#r "nuget: Evil.Slip, 1.0.0"', spec)
    assert not marker.exists()
    assert leftovers(spec) == [] and not (Path(spec.cache_dir) / "entries" / "evil.slip").exists()


def test_zip_bomb_is_refused_before_it_expands(spec, nuget_packages):
    assert len(nuget_packages[("Evil.Bomb", "1.0.0")]) < 1 << 20  # 64 MiB of zeros in under 1 MiB
    with pytest.raises(RestoreError, match=r"Evil.Bomb 1.0.0 .* expands to 64 MiB; the limit is 16 MiB"):
        run('#r "nuget: Evil.Bomb, 1.0.0"', spec)
    assert leftovers(spec) == [] and not (Path(spec.cache_dir) / "entries" / "evil.bomb").exists()


def test_oversized_download_is_refused(spec):
    with pytest.raises(RestoreError, match=r"Evil.Bomb.*more than the 0 MiB limit|Evil.Bomb.*limit"):
        run('#r "nuget: Evil.Bomb, 1.0.0"', replace(spec, max_package_mb=0))


def test_private_addresses_are_refused_unless_allowed(spec):
    with pytest.raises(RestoreError, match=r"127.0.0.1, a private, loopback or link-local address: not allowed"):
        run('#r "nuget: Acme.Formatting, 1.0.0"', replace(spec, allow=()))
    metadata = (Source("metadata", "http://169.254.169.254/v3/index.json"),)
    with pytest.raises(RestoreError, match="169.254.169.254, a private"):
        run('#r "nuget: Acme.Formatting, 1.0.0"', replace(spec, sources=metadata, allow=()))


def test_unreachable_feed(spec):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = (Source("dead", f"http://127.0.0.1:{port}/v3/index.json"),)
    with pytest.raises(RestoreError, match=rf"NU1301: cannot restore Acme.Formatting: feed 'dead' \(http://127.0.0.1:{port}/v3/index.json\).*(refused|connect)"):
        run('#r "nuget: Acme.Formatting, 1.0.0"', replace(spec, sources=dead))


def test_no_sources(spec):
    with pytest.raises(RestoreError, match="NU1100: .* no package sources"):
        run('#r "nuget: Acme.Formatting, 1.0.0"', replace(spec, sources=()))


def test_eviction_keeps_the_cache_bounded_and_spares_entries_in_use(spec, tmp_path):
    run('#r "nuget: Acme.Multi, 1.0.0"', spec)
    cache = Cache(spec.cache_dir, 1)  # a bound nothing fits in
    with restore(references('#r "nuget: Acme.Formatting, 2.0.0"'), spec) as in_use:
        removed = cache.evict()
        assert [p.parent.parent.name for p in removed] == ["acme.multi"]
        assert Path(in_use.mounts()[0][0]).exists()  # leased by a running job: kept
    assert [p.parent.parent.name for p in cache.evict()] == ["acme.formatting"]
    assert os.listdir(Path(spec.cache_dir) / "entries") == []  # no empty folders either
    assert leftovers(spec) == []


def test_directives():
    refs = references('#r "nuget: A.B, 1.2.3"\n  #r "nuget:C"  // comment\nvar x = "#r \\"nuget: D\\"";')
    assert [(r.line, r.id, str(r.range)) for r in refs] == [(1, "A.B", "1.2.3"), (2, "C", "*")]
    assert references('#r "System.dll"') == []  # not a package: the runner says it is unsupported
    assert Version.parse("1.2") == Version.parse("1.2.0.0")
