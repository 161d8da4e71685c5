"""Target frameworks, .nuspec parsing and the archive checks (pure, archives built in memory)."""

import io
import stat
import zipfile

import pytest

from executors.nuget.packages import (Archive, PackageError, Target, best_framework, parse_framework,
                                      parse_nuspec)

MONO = Target(net=(4, 8))
WITH_STANDARD = Target(net=(4, 8), netstandard=(2, 0))


@pytest.mark.parametrize("name, parsed", [
    ("net45", ("net", (4, 5))), ("net472", ("net", (4, 7, 2))), ("net40-client", ("net", (4, 0))),
    (".NETFramework4.6.1", ("net", (4, 6, 1))), ("netstandard2.0", ("netstandard", (2, 0))),
    (".NETStandard1.3", ("netstandard", (1, 3))), ("net6.0", ("netcore", (6, 0))),
    ("netcoreapp3.1", ("netcoreapp", (3, 1))), ("", ("net", ())), ("portable-net45+win8", None), ("uap10.0", None),
])
def test_framework_names(name, parsed):
    assert parse_framework(name) == parsed


def test_best_framework_prefers_the_newest_runnable_net_then_netstandard():
    offered = ["net20", "net461", "net48", "netstandard2.0", "net6.0", "netcoreapp3.1"]
    assert best_framework(offered, MONO) == "net48"
    assert best_framework(["net20", "net461", "netstandard2.0"], MONO) == "net461"
    assert best_framework(["netstandard2.0", "netstandard2.1", "netstandard1.3"], MONO) is None
    assert best_framework(["netstandard2.0", "netstandard2.1", "netstandard1.3"], WITH_STANDARD) == "netstandard2.0"
    assert best_framework(["net481", "net6.0"], MONO) is None
    assert best_framework(["", "netstandard2.0"], MONO) == ""  # assemblies directly in lib/


NUSPEC = b"""<?xml version="1.0"?><package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">
<metadata><id>A</id><version>1.0</version><dependencies>
<group targetFramework=".NETFramework4.5"><dependency id="B" version="[1.0,2.0)"/></group>
<group targetFramework=".NETStandard2.0"><dependency id="C" version="3.0"/></group>
<group><dependency id="D"/></group>
</dependencies></metadata></package>"""


def test_nuspec_dependencies_for_the_target():
    spec = parse_nuspec(NUSPEC)
    assert (spec.id, str(spec.version)) == ("A", "1.0.0")
    assert [(d.id, str(d.range)) for d in spec.dependencies(MONO)] == [("B", "[1.0,2.0)")]
    flat = parse_nuspec(NUSPEC.replace(b'group targetFramework=".NETFramework4.5"', b'group targetFramework="net6.0"'))
    assert [d.id for d in flat.dependencies(MONO)] == ["D"]  # no runnable group: the one without a framework
    assert [d.id for d in flat.dependencies(WITH_STANDARD)] == ["C"]


@pytest.mark.parametrize("xml, message", [
    (b'<!DOCTYPE x [<!ENTITY a "aaaa">]><package><metadata><id>&a;</id></metadata></package>', "not usable XML"),
    (b"<package><metadata><id>A</id><version>one</version></metadata></package>", "invalid version"),
    (b"<package><x/></package>", "no <metadata>"),
    (b'<package><metadata><id>A</id><version>1.0</version><dependencies><dependency id="../x"/></dependencies></metadata></package>',
     "invalid dependency id"),
])
def test_bad_nuspecs(xml, message):
    with pytest.raises(PackageError, match=message):
        parse_nuspec(xml)


def nupkg(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("A.nuspec", b"<package><metadata><id>A</id><version>1.0</version></metadata></package>")
        for name, data in entries.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("data, message", [
    (nupkg({"../evil": b"x"}), "outside its folder"),
    (nupkg({"lib/net45/../../../evil": b"x"}), "outside its folder"),
    (nupkg({"/etc/evil": b"x"}), "outside its folder"),
    (nupkg({"C:/evil": b"x"}), "outside its folder"),
    (nupkg({"lib\\..\\..\\evil": b"x"}), "outside its folder"),
    (nupkg({}, symlink="lib/net45/link.dll"), "symbolic link"),
    (nupkg({"lib/net45/zeros": bytes(3 << 20)}), "expands to 3 MiB; the limit is 2 MiB"),
    (b"PK\x03\x04 not really a zip", "not a valid .nupkg"),
    (nupkg({"B.nuspec": b"<package/>"}), "exactly one .nuspec"),
])
def test_hostile_archives(data, message):
    with pytest.raises(PackageError, match=message):
        Archive(data, 2 << 20)


def test_extraction_counts_what_it_writes(tmp_path):
    archive = Archive(nupkg({"lib/net45/A.dll": b"MZ" + bytes(100), "lib/net45/de/A.resources.dll": b"MZ"}), 2 << 20)
    hashes = archive.extract(["lib/net45/A.dll"], tmp_path)
    assert list(hashes) == ["lib/net45/A.dll"] and (tmp_path / "lib/net45/A.dll").stat().st_size == 102
    archive.max_extract_bytes = 50  # a header that lies about its size is caught while writing
    with pytest.raises(PackageError, match="expands to more than"):
        archive.extract(["lib/net45/A.dll"], tmp_path / "again")
