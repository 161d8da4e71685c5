"""The node's package cache: one folder per package id + version + the .nupkg's full SHA-512.

An entry is used for a job only if it came from one of the job's own feeds with the same
credentials (a private package is not handed to a job that could not download it), its recorded
digest is its folder's name, and its files match the hashes recorded when it was extracted. The
cache is bounded: room is made before an entry is installed, by evicting the least recently used
entries no running job uses (each job holds a shared lock on the entries it uses, and can pin no
more than its budget). Temporaries carry their job's token, so that whatever a killed restore left
is removed by the job that started it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from executors.nuget.budget import Budget
from executors.nuget.packages import Archive
from executors.nuget.versions import Version

log = logging.getLogger(__name__)

META = ".meta.json"
INUSE = ".inuse"


def read_meta(entry: Path) -> dict | None:
    try:
        meta = json.loads((entry / META).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(meta, dict) and isinstance(meta.get("files"), dict) and isinstance(meta.get("sources"), list)
    return meta if ok else None


class Cache:
    def __init__(self, root: str | Path, max_bytes: int, job: str = ""):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.job = job or uuid.uuid4().hex  #: the prefix of this job's temporaries
        (self.root / "entries").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        os.chmod(self.root, 0o755)

    def temporary(self, suffix: str = "") -> Path:
        return self.root / "tmp" / f"{self.job}-{uuid.uuid4().hex}{suffix}"

    def clean(self) -> None:
        """Removes this job's temporaries (a restore killed at its deadline leaves some)."""
        for path in (self.root / "tmp").glob(f"{self.job}-*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

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

    def find(self, package_id: str, version: Version, sources: set[str], stack: ExitStack,
             budget: Budget | None = None) -> Path | None:
        """An intact entry from one of `sources`, leased (shared-locked) for the job's lifetime.
        Its size counts against the job's budget before its files are hashed."""
        base = self._dir(package_id, version)
        for entry in sorted(base.glob("*")) if base.is_dir() else []:
            meta = read_meta(entry)
            if meta is None or meta.get("sha512") != entry.name or not sources & set(meta["sources"]):
                continue
            if budget is not None:
                budget.extract(int(meta.get("size", 0)))
                budget.file(len(meta["files"]))
            if self.lease(entry, stack) and self._intact(entry, meta):
                os.utime(entry / META)  # last use, for eviction
                return entry
        return None

    def lease(self, entry: Path, stack: ExitStack) -> bool:
        """A shared lock on the entry, held until `stack` closes: eviction passes it by."""
        try:
            f = stack.enter_context(open(entry / INUSE, "a"))
        except OSError:
            return False
        fcntl.flock(f, fcntl.LOCK_SH)
        return (entry / META).exists()  # not evicted between the lookup and the lock

    @staticmethod
    def _intact(entry: Path, meta: dict) -> bool:
        for rel, digest in meta["files"].items():
            try:
                if hashlib.sha256((entry / rel).read_bytes()).hexdigest() != digest:
                    return False
            except (OSError, TypeError):
                return False
        return True

    def install(self, package_id: str, version: Version, digest: str, source: str, archive: Archive,
                names: list[str], stack: ExitStack, budget: Budget | None = None) -> Path:
        """Extracts `names` into an entry for the .nupkg whose SHA-512 is `digest` (reusing an
        intact one with that very digest), making room first; the entry is leased."""
        entry = self._dir(package_id, version) / digest
        tmp = self.temporary()
        trash: list[Path] = []
        try:
            tmp.mkdir()
            files = archive.extract(names, tmp, budget)
            size = sum((tmp / n).stat().st_size for n in files)
            meta = {"id": package_id, "version": str(version), "sha512": digest, "files": files,
                    "size": size, "sources": [source]}
            (tmp / META).write_text(json.dumps(meta))
            _readable(tmp)
            # hashed before the lock: other jobs' installs and evictions need not wait for it
            existing = read_meta(entry)
            intact = existing is not None and existing.get("sha512") == digest and self._intact(entry, existing)
            with self._locked():
                current = read_meta(entry)
                if intact and current is not None and current.get("sha512") == digest:
                    if source not in current["sources"]:  # the same content, already here
                        current["sources"].append(source)
                        (entry / META).write_text(json.dumps(current))
                else:
                    if entry.exists():  # damaged: replaced (a job still using it keeps its mount)
                        trash.append(self.temporary())
                        entry.rename(trash[-1])
                    trash += [moved for _, moved in self._make_room(size)]
                    entry.parent.mkdir(parents=True, exist_ok=True)
                    os.chmod(entry.parent, 0o755)
                    os.chmod(entry.parent.parent, 0o755)
                    tmp.rename(entry)
                self.lease(entry, stack)  # under the lock: no eviction can come first
            return entry
        finally:
            for path in (tmp, *trash):  # outside the lock: other jobs need not wait for it
                shutil.rmtree(path, ignore_errors=True)

    def evict(self) -> list[Path]:
        """Removes the least recently used entries not in use until the cache fits its bound."""
        with self._locked():
            removed = self._make_room(0)
        for _, moved in removed:
            shutil.rmtree(moved, ignore_errors=True)
        return [entry for entry, _ in removed]

    def _make_room(self, need: int) -> list[tuple[Path, Path]]:
        """Under the lock: moves the least recently used entries no job leases out of the cache
        until `need` more bytes fit; returns them as (entry, where it is now: in tmp, to be
        deleted outside the lock). What running jobs lease stays, even past the bound: each of
        them pins no more than its budget."""
        entries = []
        for meta_path in (self.root / "entries").glob(f"*/*/*/{META}"):
            try:
                mtime, meta = meta_path.stat().st_mtime, read_meta(meta_path.parent)
            except OSError:
                continue
            entries.append((mtime, int(meta.get("size", 0)) if meta else 0, meta_path.parent))
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, entry in sorted(entries, key=lambda e: e[0]):
            if total + need <= self.max_bytes:
                break
            with open(entry / INUSE, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a running job uses it
                removed.append((entry, self.temporary()))
                entry.rename(removed[-1][1])
            for parent in (entry.parent, entry.parent.parent):  # the version's and id's folders, if empty
                try:
                    parent.rmdir()
                except OSError:
                    break
            total -= size
        if total + need > self.max_bytes:
            log.info("package cache over its bound by %d bytes: entries in use", total + need - self.max_bytes)
        return removed


def _readable(path: Path) -> None:
    """The sandbox's unprivileged user reads packages through a read-only mount."""
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
