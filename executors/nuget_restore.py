"""`#r "nuget: Id, Version"`: the packages a script references, restored on its node before its
sandbox starts, from the job's feeds into a per-node cache, and handed to the sandbox read-only.

The cache holds one folder per package id + version + content hash. An entry is used for a job
only if it came from one of the job's own feeds with the same credentials (a private package is
not handed to a job that could not download it), and its files are checked against the hashes
recorded when it was extracted. The cache is bounded; entries in use by a running job are never
evicted (each job holds a shared lock on the entries it uses).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
import zipfile
import zlib
from collections import deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from executors.nuget_config import Source
from executors.nuget_feeds import Feed, FeedError, Policy, feed_for
from executors.nuget_packages import Archive, Dependency, PackageError, Target, best_framework, parse_nuspec, valid_id
from executors.nuget_versions import Version, VersionError, VersionRange

MOUNT_ROOT = "/nuget"  #: where packages appear inside the sandbox (read-only)
REFERENCES_ENV = "CSRUN_REFERENCES"  #: the runner's list of assemblies to reference, ':'-separated
MAX_PACKAGES = 100  #: packages in one job's dependency graph
_DIRECTIVE = re.compile(r'^\s*#r\s+"nuget:\s*([^,"]*?)\s*(?:,\s*([^"]*?)\s*)?"\s*(?://.*)?$', re.IGNORECASE)


class RestoreError(RuntimeError):
    """The script's packages cannot be restored; the message (for the job's stderr) says which
    package and which feed."""


@dataclass(frozen=True)
class Reference:
    line: int
    id: str
    range: VersionRange


def references(script: str) -> list[Reference]:
    """The script's `#r "nuget: …"` directives. RestoreError for a malformed one."""
    refs = []
    for n, line in enumerate(script.split("\n"), 1):
        stripped = line.strip()
        if not (stripped.startswith("#r") and "nuget:" in stripped.lower()):
            continue
        m = _DIRECTIVE.match(line)
        if not m or not valid_id(m.group(1)):
            raise RestoreError(f'script.csx({n},1): error NU0001: expected #r "nuget: Id, Version", '
                               f"got {stripped[:120]}")
        try:
            refs.append(Reference(n, m.group(1), VersionRange.parse(m.group(2))))
        except VersionError as e:
            raise RestoreError(f"script.csx({n},1): error NU0002: {m.group(1)}: {e}") from None
    return refs


@dataclass(frozen=True)
class NuGetSpec:
    """What a job's restore may use: its feeds (with credentials), the egress policy and caps."""
    sources: tuple[Source, ...]
    target: Target
    cache_dir: str
    cache_mb: int = 2048
    max_package_mb: int = 64
    max_extract_mb: int = 256
    timeout_s: float = 120.0  #: the whole restore
    allow: tuple[str, ...] = ()  #: EGRESS_ALLOW


@dataclass(frozen=True)
class Package:
    id: str
    version: Version
    path: Path  #: the cache entry
    framework: str | None  #: the lib folder used; None: the package has no assemblies
    dependencies: tuple[Dependency, ...] = ()  #: for the agent type's framework

    @property
    def mount_point(self) -> str:
        return f"{MOUNT_ROOT}/{self.id.lower()}/{self.version}"

    @property
    def lib(self) -> Path:
        """The folder of the chosen framework's assemblies ("" means directly in lib/)."""
        return self.path / "lib" / self.framework if self.framework else self.path / "lib"

    def assemblies(self) -> list[str]:
        if self.framework is None:
            return []
        return sorted(f"{self.mount_point}/{p.name}" for p in self.lib.iterdir()
                      if p.is_file() and p.suffix.lower() == ".dll")

    def mount(self) -> tuple[str, str]:
        return str(self.lib), self.mount_point


@dataclass(frozen=True)
class Restored:
    packages: tuple[Package, ...]
    warnings: tuple[str, ...] = ()

    def mounts(self) -> tuple[tuple[str, str], ...]:
        return tuple(p.mount() for p in self.packages if p.framework is not None)

    def env(self) -> tuple[tuple[str, str], ...]:
        return ((REFERENCES_ENV, ":".join(a for p in self.packages for a in p.assemblies())),)


def source_identity(source: Source) -> str:
    """A feed as the cache knows it: URL and credentials, hashed (no secret is stored)."""
    raw = "\0".join((source.url.rstrip("/"), source.username or "", source.password or ""))
    return hashlib.sha256(raw.encode()).hexdigest()


# ---- the cache ----------------------------------------------------------------------------------

META = ".meta.json"
INUSE = ".inuse"


class Cache:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / "entries").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        os.chmod(self.root, 0o755)

    @contextmanager
    def _locked(self):
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _dir(self, package_id: str, version: Version) -> Path:
        return self.root / "entries" / package_id.lower() / str(version).lower()

    def find(self, package_id: str, version: Version, sources: set[str], stack: ExitStack) -> Path | None:
        """An intact entry from one of `sources`, leased (shared-locked) for the job's lifetime."""
        base = self._dir(package_id, version)
        for entry in sorted(base.glob("*")) if base.is_dir() else []:
            try:
                meta = json.loads((entry / META).read_text())
            except (OSError, ValueError):
                continue
            if not sources & set(meta.get("sources", [])):
                continue
            if self._lease(entry, stack) and self._intact(entry, meta):
                os.utime(entry / META)  # last use, for eviction
                return entry
        return None

    def _lease(self, entry: Path, stack: ExitStack) -> bool:
        try:
            f = stack.enter_context(open(entry / INUSE, "a"))
        except OSError:
            return False
        fcntl.flock(f, fcntl.LOCK_SH)
        return (entry / META).exists()  # not evicted between the lookup and the lock

    @staticmethod
    def _intact(entry: Path, meta: dict) -> bool:
        for rel, digest in meta.get("files", {}).items():
            try:
                if hashlib.sha256((entry / rel).read_bytes()).hexdigest() != digest:
                    return False
            except OSError:
                return False
        return True

    def install(self, package_id: str, version: Version, data: bytes, source: str, archive: Archive,
                names: list[str], stack: ExitStack) -> Path:
        digest = hashlib.sha512(data).hexdigest()
        entry = self._dir(package_id, version) / digest[:16]
        tmp = self.root / "tmp" / uuid.uuid4().hex
        trash = self.root / "tmp" / uuid.uuid4().hex
        try:
            tmp.mkdir()
            files = archive.extract(names, tmp)
            meta = {"id": package_id, "version": str(version), "sha512": digest, "files": files,
                    "size": sum((tmp / n).stat().st_size for n in files), "sources": [source]}
            (tmp / META).write_text(json.dumps(meta))
            _readable(tmp)
            with self._locked():
                try:
                    current = json.loads((entry / META).read_text())
                except (OSError, ValueError):
                    current = None
                if current is not None and self._intact(entry, current):  # the same content, already here
                    if source not in current["sources"]:
                        current["sources"].append(source)
                        (entry / META).write_text(json.dumps(current))
                else:
                    if entry.exists():  # damaged: replaced (a job still using it keeps its mount)
                        entry.rename(trash)
                    entry.parent.mkdir(parents=True, exist_ok=True)
                    os.chmod(entry.parent, 0o755)
                    os.chmod(entry.parent.parent, 0o755)
                    tmp.rename(entry)
            self._lease(entry, stack)
            return entry
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(trash, ignore_errors=True)

    def evict(self) -> list[Path]:
        """Removes the least recently used entries not in use until the cache fits its bound."""
        removed = []
        with self._locked():
            entries = []
            for meta_path in (self.root / "entries").glob(f"*/*/*/{META}"):
                try:
                    entries.append((meta_path.stat().st_mtime, json.loads(meta_path.read_text())["size"], meta_path.parent))
                except (OSError, ValueError, KeyError):
                    entries.append((0.0, 0, meta_path.parent))
            total = sum(size for _, size, _ in entries)
            for _, size, entry in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                with open(entry / INUSE, "a") as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a running job uses it
                    trash = self.root / "tmp" / uuid.uuid4().hex
                    entry.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
                for parent in (entry.parent, entry.parent.parent):  # the version's and id's folders, if empty
                    try:
                        parent.rmdir()
                    except OSError:
                        break
                total -= size
                removed.append(entry)
        return removed


def _readable(path: Path) -> None:
    """The sandbox's unprivileged user reads packages through a read-only mount."""
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


# ---- the restore --------------------------------------------------------------------------------

@dataclass
class _Resolution:
    spec: NuGetSpec
    cache: Cache
    feeds: list[Feed]
    stack: ExitStack
    identities: dict[int, str] = field(default_factory=dict)
    packages: dict[str, Package] = field(default_factory=dict)  #: by lower-case id
    direct: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def feeds_label(self) -> str:
        return ", ".join(f.label for f in self.feeds)

    def cached(self, package_id: str, wanted: VersionRange) -> tuple[Version, Path] | None:
        """A cached entry that is exactly what the range would pick, without asking the feeds:
        its lowest bound, when inclusive (an exact version or a bare minimum)."""
        if wanted.float_prefix is not None or wanted.low is None or not wanted.low_inclusive:
            return None
        entry = self.cache.find(package_id, wanted.low, set(self.identities.values()), self.stack)
        return (wanted.low, entry) if entry else None

    def versions(self, package_id: str) -> dict[Version, Feed]:
        found: dict[Version, Feed] = {}
        errors = []
        for feed in self.feeds:
            try:
                for v in feed.versions(package_id):
                    found.setdefault(v, feed)
            except FeedError as e:
                errors.append(f"feed {feed.label}: {e}")
        if not found and errors:
            raise RestoreError(f"error NU1301: cannot restore {package_id}: " + "; ".join(errors))
        if not found:
            raise RestoreError(f"error NU1101: package {package_id} was not found on {self.feeds_label()}")
        return found

    def fetch(self, package_id: str, wanted: VersionRange) -> Package:
        hit = self.cached(package_id, wanted)
        if hit:
            version, entry = hit
        else:
            available = self.versions(package_id)
            version = wanted.pick(available)
            if version is None:
                newest = ", ".join(map(str, sorted(available)[-5:]))
                raise RestoreError(f"error NU1102: package {package_id} has no version matching {wanted} "
                                   f"on {self.feeds_label()} (newest: {newest})")
            feed = available[version]
            entry = self.cache.find(package_id, version, {self.identities[id(feed)]}, self.stack)
            if entry is None:
                entry = self.download(feed, package_id, version)
        meta = json.loads((entry / META).read_text())
        real_id = meta["id"]
        nuspec = next(parse_nuspec(p.read_bytes()) for p in entry.iterdir() if p.suffix.lower() == ".nuspec")
        frameworks = {n.split("/")[1] if n.count("/") >= 2 else "" for n in meta["files"] if n.lower().startswith("lib/")}
        framework = best_framework(frameworks, self.spec.target) if frameworks else None
        if frameworks and framework is None:
            raise RestoreError(f"error NU1202: package {real_id} {version} has no assemblies this agent type "
                               f"can load ({self.spec.target}); it offers {', '.join(sorted(f or 'lib/' for f in frameworks))}")
        return Package(real_id, version, entry, framework, nuspec.dependencies(self.spec.target))

    def download(self, feed: Feed, package_id: str, version: Version) -> Path:
        try:
            data = feed.download(package_id, version)
        except FeedError as e:
            raise RestoreError(f"error NU1301: cannot download {package_id} {version} from feed {feed.label}: {e}") from None
        what = f"package {package_id} {version} from feed {feed.label}"
        try:
            archive = Archive(data, self.spec.max_extract_mb << 20)
            nuspec = archive.read_nuspec()
            if nuspec.id.lower() != package_id.lower() or nuspec.version != version:
                raise PackageError(f"it is {nuspec.id} {nuspec.version}, not what was asked for")
            names = [archive.nuspec_name] + [n for n in archive.names if n.lower().startswith("lib/")]
            return self.cache.install(nuspec.id, version, data, self.identities[id(feed)], archive, names, self.stack)
        except PackageError as e:
            raise RestoreError(f"error NU1403: {what} is unusable: {e}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise RestoreError(f"error NU1403: {what} is unusable: corrupt archive ({type(e).__name__})") from None


@contextmanager
def restore(script_refs: list[Reference], spec: NuGetSpec):
    """Restores the references and their dependencies; yields a Restored whose entries stay leased
    (not evictable) until the block ends. RestoreError with the reason otherwise."""
    if not spec.sources:
        raise RestoreError("error NU1100: the script references packages but the job has no package "
                           "sources: give jobConfig.nugetConfigXml with <packageSources>")
    policy = Policy(allow=spec.allow, max_package_bytes=spec.max_package_mb << 20,
                    deadline=time.monotonic() + spec.timeout_s)
    cache = Cache(spec.cache_dir, spec.cache_mb << 20)
    with ExitStack() as stack:
        feeds = [feed_for(s, policy) for s in spec.sources]
        res = _Resolution(spec, cache, feeds, stack, {id(f): source_identity(f.source) for f in feeds})
        queue = deque((r.id, r.range, None) for r in script_refs)
        res.direct = {r.id.lower() for r in script_refs}
        while queue:
            package_id, wanted, parent = queue.popleft()
            key = package_id.lower()
            have = res.packages.get(key)
            if have is not None:
                if wanted.satisfies(have.version):
                    continue
                if key in res.direct or parent is None:  # the script's own choice wins
                    res.warnings.append(f"warning NU1608: {have.id} {have.version} is outside the range {wanted} "
                                        f"that {parent or 'the script'} asks for")
                    continue
                picked = res.fetch(package_id, wanted)
                if picked.version < have.version:
                    raise RestoreError(f"error NU1107: version conflict for {have.id}: {parent} needs {wanted}, "
                                       f"another package needs {have.version}")
            else:
                picked = res.fetch(package_id, wanted)
            res.packages[key] = picked
            if len(res.packages) > MAX_PACKAGES:
                raise RestoreError(f"error NU1000: more than {MAX_PACKAGES} packages to restore")
            for dep in picked.dependencies:
                queue.append((dep.id, dep.range, f"{picked.id} {picked.version}"))
        cache.evict()
        yield Restored(tuple(res.packages.values()), tuple(res.warnings))
