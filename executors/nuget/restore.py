"""`#r "nuget: Id, Version"`: the packages a script references, restored on its node before its
sandbox starts, from the job's feeds into a per-node cache (nuget/cache.py), and handed to the
sandbox read-only.

The work (feeds, downloads, extraction, hashing) runs in a process of its own, in a cgroup of its
own, killed at the restore's deadline (nuget/process.py); it counts what it costs against the job's
budget as it goes (nuget/budget.py). Whatever goes wrong ends as a RestoreError whose `error NU…`
line names the package and the feed where known: a hostile feed or package is the script's
failure, never its node's.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from collections import deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from executors.nuget import process as nuget_process
from executors.nuget.budget import Budget, BudgetError
from executors.nuget.cache import Cache, read_meta
from executors.nuget.config import Source
from executors.nuget.feeds import Feed, FeedError, Policy, Timeout, feed_for
from executors.nuget.packages import Archive, PackageError, best_framework, parse_nuspec
from executors.nuget.spec import NuGetSpec, Package, Reference, RestoreError, Restored
from executors.nuget.versions import Version, VersionRange

log = logging.getLogger(__name__)

TIMEOUT_SETTING = "NUGET_RESTORE_TIMEOUT_S"  #: named in the message of a restore that timed out
_CHILD = "from executors.nuget.restore import _child_main; _child_main()"


def source_identity(source: Source) -> str:
    """A feed as the cache knows it: URL and credentials, hashed (no secret is stored)."""
    raw = "\0".join((source.url.rstrip("/"), source.username or "", source.password or ""))
    return hashlib.sha256(raw.encode()).hexdigest()


# ---- the restore's work (in its own process) ----------------------------------------------------

class _Hashing:
    """A file written to, and the SHA-512 of what was written."""

    def __init__(self, f):
        self.f, self.sha512 = f, hashlib.sha512()

    def write(self, data: bytes) -> None:
        self.sha512.update(data)
        self.f.write(data)


@dataclass
class _Resolution:
    spec: NuGetSpec
    cache: Cache
    feeds: list[Feed]
    stack: ExitStack
    budget: Budget
    report: object  #: called with what the restore is doing, for the message if it is killed
    identities: dict[int, str] = field(default_factory=dict)
    packages: dict[str, Package] = field(default_factory=dict)  #: by lower-case id
    direct: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def feeds_label(self) -> str:
        return ", ".join(f.label for f in self.feeds)

    def timed_out(self, doing: str) -> RestoreError:
        return RestoreError(f"error NU1301: the restore timed out after {self.spec.timeout_s:g} s "
                            f"({TIMEOUT_SETTING}) while {doing}")

    def cached(self, package_id: str, wanted: VersionRange) -> tuple[Version, Path] | None:
        """A cached entry that is exactly what the range would pick, without asking the feeds:
        its lowest bound, when inclusive (an exact version or a bare minimum)."""
        if wanted.float_prefix is not None or wanted.low is None or not wanted.low_inclusive:
            return None
        entry = self.cache.find(package_id, wanted.low, set(self.identities.values()), self.stack, self.budget)
        return (wanted.low, entry) if entry else None

    def versions(self, package_id: str) -> dict[Version, Feed]:
        found: dict[Version, Feed] = {}
        errors = []
        for feed in self.feeds:
            doing = f"reading the versions of {package_id} from feed {feed.label}"
            self.report(doing)
            try:
                for v in feed.versions(package_id):
                    found.setdefault(v, feed)
            except Timeout:
                raise self.timed_out(doing) from None
            except FeedError as e:
                errors.append(f"feed {feed.label}: {e}")
            except BudgetError as e:
                raise RestoreError(f"error NU1000: cannot restore {package_id} from feed {feed.label}: {e}") from None
        if not found and errors:
            raise RestoreError(f"error NU1301: cannot restore {package_id}: " + "; ".join(errors))
        if not found:
            raise RestoreError(f"error NU1101: package {package_id} was not found on {self.feeds_label()}")
        return found

    def fetch(self, package_id: str, wanted: VersionRange) -> Package:
        try:
            hit = self.cached(package_id, wanted)
        except BudgetError as e:
            raise RestoreError(f"error NU1000: cannot restore {package_id} {wanted.low} from the cache: {e}") from None
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
            try:
                entry = self.cache.find(package_id, version, {self.identities[id(feed)]}, self.stack, self.budget)
            except BudgetError as e:
                raise RestoreError(f"error NU1000: cannot restore {package_id} {version} from the cache: {e}") from None
            if entry is None:
                entry = self.download(feed, package_id, version)
        meta = read_meta(entry)
        nuspec_path = next((p for p in entry.iterdir() if p.suffix.lower() == ".nuspec"), None)
        if meta is None or nuspec_path is None:
            raise RestoreError(f"error NU1403: package {package_id} {version}: its cache entry is unreadable")
        try:
            nuspec = parse_nuspec(nuspec_path.read_bytes())
        except PackageError as e:
            raise RestoreError(f"error NU1403: package {package_id} {version} is unusable: {e}") from None
        real_id = str(meta.get("id", package_id))
        files = [n for n in meta["files"] if n.startswith("lib/")]
        frameworks = {n.split("/")[1] if n.count("/") >= 2 else "" for n in files}
        framework = best_framework(frameworks, self.spec.target) if frameworks else None
        if frameworks and framework is None:
            raise RestoreError(f"error NU1202: package {real_id} {version} has no assemblies this agent type "
                               f"can load ({self.spec.target}); it offers {', '.join(sorted(f or 'lib/' for f in frameworks))}")
        folder = f"lib/{framework}/" if framework else "lib/"
        dlls = tuple(sorted(n[len(folder):] for n in files if n.startswith(folder) and "/" not in n[len(folder):]
                            and n.lower().endswith(".dll")))
        return Package(real_id, version, entry, framework, nuspec.dependencies(self.spec.target), dlls)

    def download(self, feed: Feed, package_id: str, version: Version) -> Path:
        what = f"package {package_id} {version} from feed {feed.label}"
        self.report(f"downloading {what}")
        path = self.cache.temporary(".nupkg")
        try:
            with open(path, "wb") as f:
                out = _Hashing(f)
                feed.download(package_id, version, out)
            self.report(f"extracting {what}")
            archive = Archive(path, self.spec.max_extract_mb << 20)
            try:
                nuspec = archive.read_nuspec()
                if nuspec.id.lower() != package_id.lower() or nuspec.version != version:
                    raise PackageError(f"it is {nuspec.id} {nuspec.version}, not what was asked for")
                names = [archive.nuspec_name] + [n for n in archive.names if n.startswith("lib/")]
                return self.cache.install(nuspec.id, version, out.sha512.hexdigest(), self.identities[id(feed)],
                                          archive, names, self.stack, self.budget)
            finally:
                archive.close()
        except Timeout:
            raise self.timed_out(f"downloading {what}") from None
        except FeedError as e:
            raise RestoreError(f"error NU1301: cannot download {package_id} {version} from feed {feed.label}: {e}") from None
        except BudgetError as e:
            raise RestoreError(f"error NU1000: cannot restore {what}: {e}") from None
        except PackageError as e:
            raise RestoreError(f"error NU1403: {what} is unusable: {e}") from None
        finally:
            path.unlink(missing_ok=True)


def _resolve(script_refs: list[Reference], spec: NuGetSpec, cache: Cache, deadline: float, stack: ExitStack,
             report) -> dict:
    """Restores the references and their dependencies into the cache, leased in `stack`; what
    the parent needs to lease and use them, as JSON."""
    budget = spec.budget()
    policy = Policy(allow=spec.allow, max_package_bytes=spec.max_package_mb << 20, deadline=deadline, budget=budget)
    feeds = []
    for source in spec.sources:
        try:
            feeds.append(feed_for(source, policy))
        except FeedError as e:
            raise RestoreError(f"error NU1301: package source '{source.key}' cannot be used: {e}") from None
    res = _Resolution(spec, cache, feeds, stack, budget, report, {id(f): source_identity(f.source) for f in feeds})
    queue = deque((r.id, r.range, None) for r in script_refs)
    res.direct = {r.id.lower() for r in script_refs}
    while queue:
        package_id, wanted, parent = queue.popleft()
        key = package_id.lower()
        have = res.packages.get(key)
        if have is not None and wanted.satisfies(have.version):
            continue
        if have is not None and (key in res.direct or parent is None):  # the script's own choice wins
            res.warnings.append(f"warning NU1608: {have.id} {have.version} is outside the range {wanted} "
                                f"that {parent or 'the script'} asks for")
            continue
        try:
            budget.package()
        except BudgetError as e:
            raise RestoreError(f"error NU1000: cannot restore {package_id}{f' (for {parent})' if parent else ''}: {e}") from None
        picked = res.fetch(package_id, wanted)
        if have is not None and picked.version < have.version:
            raise RestoreError(f"error NU1107: version conflict for {have.id}: {parent} needs {wanted}, "
                               f"another package needs {have.version}")
        res.packages[key] = picked
        for dep in picked.dependencies:
            queue.append((dep.id, dep.range, f"{picked.id} {picked.version}"))
    report("making room in the package cache")
    cache.evict()
    return {"packages": [{"id": p.id, "version": str(p.version), "path": str(p.path), "framework": p.framework,
                          "dlls": list(p.dlls)} for p in res.packages.values()],
            "warnings": res.warnings}


def _child_main() -> None:
    """The restore's process (see nuget/process.py): one request, its answers, then it waits for the
    parent to lease what it restored before it lets its own leases go."""
    (script_refs, spec, job, deadline), answer, wait_for_parent = nuget_process.child_request()
    with ExitStack() as stack:
        try:
            cache = Cache(spec.cache_dir, spec.cache_mb << 20, job)
            result = {"restored": _resolve(script_refs, spec, cache, deadline, stack, lambda d: answer({"doing": d}))}
        except RestoreError as e:
            result = {"error": str(e)}
        except Exception as e:  # a bug, or a case not foreseen: the job's failure still, told plainly
            traceback.print_exc()
            result = {"error": f"error NU1000: the restore failed unexpectedly ({type(e).__name__}); "
                               "the node's log has the details"}
        answer(result)
        wait_for_parent()


# ---- on the node ----------------------------------------------------------------------------------

@contextmanager
def restore(script_refs: list[Reference], spec: NuGetSpec):
    """Restores the references and their dependencies; yields a Restored whose entries stay leased
    (not evictable) until the block ends. RestoreError with the reason otherwise."""
    if not spec.sources:
        raise RestoreError("error NU1100: the script references packages but the job has no package "
                           "sources: give jobConfig.nugetConfigXml with <packageSources>")
    with ExitStack() as stack:
        restored = _restore_in_child(script_refs, spec, stack)
        yield restored


def _restore_in_child(script_refs: list[Reference], spec: NuGetSpec, stack: ExitStack) -> Restored:
    deadline = time.monotonic() + spec.timeout_s
    # the child's own deadline comes a little earlier: then its message says what it was reading
    child_deadline = deadline - min(1.0, spec.timeout_s / 10)  # CLOCK_MONOTONIC: the same in every process
    cache, doing = None, "starting"
    try:
        cache = Cache(spec.cache_dir, spec.cache_mb << 20)
        with nuget_process.Child(_CHILD, (script_refs, spec, cache.job, child_deadline), deadline,
                                 spec.restore_cpus, spec.restore_memory_mb << 20) as child:
            for answer in child.answers():
                if "doing" in answer:
                    doing = str(answer["doing"])[:300]
                elif "error" in answer:
                    raise RestoreError(str(answer["error"])[:4000])
                else:
                    return _leased(answer.get("restored"), cache, stack)
    except nuget_process.TimedOut:
        raise RestoreError(f"error NU1301: the restore timed out after {spec.timeout_s:g} s ({TIMEOUT_SETTING}) "
                           f"while {doing}") from None
    except nuget_process.Died as e:
        if e.out_of_memory:
            raise RestoreError(f"error NU1000: the restore needed more than its {spec.restore_memory_mb} MiB "
                               f"of memory while {doing}") from None
        raise RestoreError(f"error NU1000: the restore failed unexpectedly while {doing}: {e}") from None
    except RestoreError:
        raise
    except Exception:
        log.exception("restore failed unexpectedly")
        raise RestoreError("error NU1000: the restore failed unexpectedly; the node's log has the details") from None
    finally:
        if cache is not None:
            cache.clean()


def _leased(restored, cache: Cache, stack: ExitStack) -> Restored:
    """The child's answer as a Restored, its entries leased by this process. The child handled
    hostile data, so its answer is checked: entries in the cache, plain file names."""
    entries = (cache.root / "entries").resolve()
    try:
        packages = []
        for p in restored["packages"]:
            path = Path(p["path"])
            framework, dlls = p["framework"], tuple(p["dlls"])
            if (entries not in path.resolve().parents or not (framework is None or isinstance(framework, str))
                    or any(not isinstance(n, str) or "/" in n or n in ("", ".", "..") for n in (*dlls, framework or "x"))):
                raise ValueError(f"an unexpected entry {str(path)[:200]!r}")
            if not cache.lease(path, stack):
                raise RestoreError(f"error NU1000: the cache entry of {p['id']} {p['version']} was evicted; try again")
            packages.append(Package(str(p["id"]), Version.parse(p["version"]), path, framework, dlls=dlls))
        return Restored(tuple(packages), tuple(str(w) for w in restored["warnings"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise nuget_process.Died(f"its answer is unusable ({e})") from None
