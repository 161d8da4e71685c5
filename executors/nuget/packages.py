"""What is inside a .nupkg (pure, apart from writing the files it extracts): target frameworks,
the .nuspec's identity and dependencies, and extraction that cannot escape its folder.

A package comes from a feed a client chose, so it is hostile until checked: every entry's path is
checked before anything is written (zip-slip, absolute paths, symlinks), the sizes it declares are
capped before decompressing (zip bombs) and the bytes actually written are counted as well.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from executors.nuget.budget import Budget
from executors.nuget.versions import Version, VersionError, VersionRange

MAX_ENTRIES = 20000  #: a package with more entries than this is abuse, whatever their size
MAX_NUSPEC_BYTES = 1 << 20


class PackageError(ValueError):
    """The package cannot be used; the message says why (the job fails with it)."""


# ---- target frameworks ------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """What an agent type's runtime can load: .NET Framework up to `net`, and .NET Standard up to
    `netstandard` when its image has the netstandard facade (None: it has not)."""
    net: tuple[int, ...] = (4, 8)
    netstandard: tuple[int, ...] | None = None

    def __str__(self) -> str:
        s = "net" + "".join(map(str, self.net))
        return s + (f", netstandard{'.'.join(map(str, self.netstandard))}" if self.netstandard else "")


def parse_framework(name: str) -> tuple[str, tuple[int, ...]] | None:
    """A lib folder name or a .nuspec targetFramework as (family, version); None if unknown.
    `net45` and `.NETFramework4.5` → ("net", (4, 5)); `netstandard2.0` → ("netstandard", (2, 0));
    "" (files directly in lib/) → ("net", ()); `net6.0`, `netcoreapp3.1` → their own families."""
    t = name.strip().lower().split("-")[0]  # net40-client: profiles do not matter here
    if t == "":
        return "net", ()
    m = re.fullmatch(r"\.?(netframework|netstandard|netcoreapp|net)(\d+(?:\.\d+)*)", t)
    if not m:
        return None
    family, digits = m.groups()
    if family == "netframework":
        family = "net"
    if family == "net" and "." not in digits:  # net45, net472: one digit per part
        return "net", tuple(int(c) for c in digits)
    version = tuple(int(p) for p in digits.split("."))
    if family == "net" and version[0] >= 5:  # net5.0 and later are .NET (Core), not the Framework
        return "netcore", version
    return family, version


def framework_rank(name: str, target: Target) -> tuple | None:
    """How well a framework suits the target (higher is better); None if it cannot run there.
    The .NET Framework first (the newest the target runs), then .NET Standard."""
    parsed = parse_framework(name)
    if parsed is None:
        return None
    family, version = parsed
    if family == "net" and version <= target.net:
        return 1, version
    if family == "netstandard" and target.netstandard is not None and version <= target.netstandard:
        return 0, version
    return None


def best_framework(names, target: Target) -> str | None:
    ranked = [(r, n) for n in names if (r := framework_rank(n, target)) is not None]
    return max(ranked)[1] if ranked else None


# ---- the .nuspec --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dependency:
    id: str
    range: VersionRange


@dataclass(frozen=True)
class Nuspec:
    id: str
    version: Version
    #: targetFramework ("" for a group without one) → its dependencies
    groups: dict[str, tuple[Dependency, ...]]

    def dependencies(self, target: Target) -> tuple[Dependency, ...]:
        if not self.groups:
            return ()
        named = [n for n in self.groups if n]
        best = best_framework(named, target)
        if best is not None:
            return self.groups[best]
        return self.groups.get("", ())


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_nuspec(xml: bytes) -> Nuspec:
    if len(xml) > MAX_NUSPEC_BYTES:
        raise PackageError("its .nuspec is larger than 1 MiB")
    try:
        root = fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, SyntaxError) as e:
        raise PackageError(f"its .nuspec is not usable XML ({type(e).__name__})") from None
    meta = next((el for el in root if _local(el.tag) == "metadata"), None)
    if meta is None:
        raise PackageError("its .nuspec has no <metadata>")
    fields = {_local(el.tag): (el.text or "").strip() for el in meta}
    try:
        version = Version.parse(fields.get("version", ""))
    except VersionError:
        raise PackageError(f"its .nuspec has an invalid version {fields.get('version', '')[:50]!r}") from None
    groups: dict[str, tuple[Dependency, ...]] = {}
    for deps in (el for el in meta if _local(el.tag) == "dependencies"):
        flat = []
        for el in deps:
            if _local(el.tag) == "group":
                groups[el.get("targetFramework", "")] = tuple(
                    _dependency(d) for d in el if _local(d.tag) == "dependency")
            elif _local(el.tag) == "dependency":
                flat.append(_dependency(el))
        if flat:
            groups[""] = groups.get("", ()) + tuple(flat)
    return Nuspec(fields.get("id", ""), version, groups)


def _dependency(el) -> Dependency:
    pid = el.get("id", "")
    if not valid_id(pid):
        raise PackageError(f"its .nuspec has an invalid dependency id {pid[:100]!r}")
    try:
        return Dependency(pid, VersionRange.parse(el.get("version")))
    except VersionError as e:
        raise PackageError(f"its .nuspec's dependency on {pid}: {e}") from None


def valid_id(package_id: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", package_id)) and ".." not in package_id


# ---- the archive ----------------------------------------------------------------------------------

#: what reading a hostile member can raise besides BadZipFile: bad compressed data, an unknown or
#: encrypted method (RuntimeError), a truncated stream; writing it: OSError (e.g. a name too long)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, RuntimeError,
               ValueError, struct.error, OSError)


def _safe_name(info: zipfile.ZipInfo) -> str:
    """The entry's path as it is written: `\\` as `/`, `a//./b` as `a/b`, a top `LIB/` or `Lib/`
    as `lib/` (NuGet matches it regardless of case; an old package built on Windows has `Lib/`)."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if (name.startswith("/") or "\x00" in name or re.match(r"^[A-Za-z]:", name)
            or any(p == ".." for p in parts)):
        raise PackageError(f"it has an entry outside its folder ({info.filename[:100]!r}): refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise PackageError(f"it has a symbolic link ({info.filename[:100]!r}): refused")
    if not parts or parts == (".",):
        raise PackageError(f"it has an entry without a name ({info.filename[:100]!r}): refused")
    if parts[0].lower() == "lib":
        parts = ("lib", *parts[1:])
    return "/".join(parts)


def _no_conflicts(names) -> None:
    """Refuses two entries that would be the same file or folder on a case-insensitive file system
    (NuGet's own) or here (`a/b` and `a\\b`), or a file that is also a folder: extracting them would
    overwrite one with the other, or fail half-way."""
    seen: dict[str, tuple[str, bool]] = {}
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            path, is_file = "/".join(parts[:i]), i == len(parts)
            prev = seen.get(path.lower())
            if prev is None:
                seen[path.lower()] = (path, is_file)
            elif is_file or prev != (path, False):  # a file twice, a case twin, a file used as a folder
                raise PackageError(f"it has entries that conflict as paths ({prev[0][:100]!r} and {name[:100]!r}): refused")


class Archive:
    """A checked .nupkg (its bytes, or a file holding them): every path is safe and distinct, and
    the declared sizes fit the cap."""

    def __init__(self, data: bytes | str | Path, max_extract_bytes: int):
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
            infos = self.zip.infolist()
        except _ZIP_ERRORS:
            raise PackageError("it is not a valid .nupkg (zip) file") from None
        if len(infos) > MAX_ENTRIES:
            raise PackageError(f"it has {len(infos)} entries; the limit is {MAX_ENTRIES}")
        self.names: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = _safe_name(info)
            if not info.filename.replace("\\", "/").endswith("/"):  # a folder's entry, with either slash
                if name in self.names:
                    raise PackageError(f"it has entries that conflict as paths ({name[:100]!r} twice): refused")
                self.names[name] = info
        _no_conflicts(self.names)
        declared = sum(i.file_size for i in infos)
        if declared > max_extract_bytes:
            raise PackageError(f"it expands to {declared >> 20} MiB; the limit is {max_extract_bytes >> 20} MiB")
        self.max_extract_bytes = max_extract_bytes
        nuspecs = [n for n in self.names if "/" not in n and n.lower().endswith(".nuspec")]
        if len(nuspecs) != 1:
            raise PackageError("it does not have exactly one .nuspec at its root")
        self.nuspec_name = nuspecs[0]

    def close(self) -> None:
        self.zip.close()

    def read_nuspec(self) -> Nuspec:
        info = self.names[self.nuspec_name]
        try:
            with self.zip.open(info) as f:
                xml = f.read(MAX_NUSPEC_BYTES + 1)
        except _ZIP_ERRORS as e:
            raise PackageError(f"its .nuspec cannot be read ({type(e).__name__})") from None
        return parse_nuspec(xml)

    def extract(self, names, dest: Path, budget: Budget | None = None) -> dict[str, str]:
        """Writes `names` under `dest`; returns each relative path's SHA-256. Counts what it writes,
        against the package's cap and the job's budget (BudgetError) as it goes."""
        if budget is not None:
            budget.fits_extract(sum(self.names[n].file_size for n in names))
        written, hashes = 0, {}
        root = dest.resolve()
        for name in names:
            if budget is not None:
                budget.file()
            target = (dest / name).resolve()
            if root not in target.parents:
                raise PackageError(f"it has an entry outside its folder ({name[:100]!r}): refused")
            digest = hashlib.sha256()
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.zip.open(self.names[name]) as src, open(target, "xb") as out:
                    while chunk := src.read(1 << 16):
                        written += len(chunk)
                        if written > self.max_extract_bytes:
                            raise PackageError(f"it expands to more than {self.max_extract_bytes >> 20} MiB: refused")
                        if budget is not None:
                            budget.extract(len(chunk))
                        digest.update(chunk)
                        out.write(chunk)
            except PackageError:
                raise
            except _ZIP_ERRORS as e:
                raise PackageError(f"its entry {name[:100]!r} cannot be extracted ({type(e).__name__})") from None
            hashes[name] = digest.hexdigest()
        return hashes
