"""What a job's packages are: the script's `#r "nuget: …"` references, what their restore may use
(NuGetSpec), and what it hands the sandbox (Restored). Light: the API and the planner import it;
the restore itself is nuget/restore.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from executors.nuget.budget import Budget
from executors.nuget.config import Source
from executors.nuget.packages import Dependency, Target, valid_id
from executors.nuget.versions import Version, VersionError, VersionRange

MOUNT_ROOT = "/nuget"  #: where packages appear inside the sandbox (read-only)
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
    max_package_mb: int = 64  #: one .nupkg's download
    max_extract_mb: int = 256  #: one package's files
    timeout_s: float = 120.0  #: the whole restore
    allow: tuple[str, ...] = ()  #: EGRESS_ALLOW
    #: the job's budget, all its packages together (those from the cache too: they stay pinned)
    budget_download_mb: int = 256
    budget_extract_mb: int = 512
    budget_files: int = 20000
    budget_packages: int = MAX_PACKAGES
    #: the restore's process: its cgroup's CPU quota (in CPUs) and memory limit
    restore_cpus: float = 1.0
    restore_memory_mb: int = 512

    def budget(self) -> Budget:
        return Budget(self.budget_download_mb << 20, self.budget_extract_mb << 20, self.budget_files,
                      self.budget_packages)


@dataclass(frozen=True)
class Package:
    id: str
    version: Version
    path: Path  #: the cache entry
    framework: str | None  #: the lib folder used; None: the package has no assemblies
    dependencies: tuple[Dependency, ...] = ()  #: for the agent type's framework
    dlls: tuple[str, ...] = ()  #: the assemblies' file names in the framework's folder

    @property
    def mount_point(self) -> str:
        return f"{MOUNT_ROOT}/{self.id.lower()}/{self.version}"

    @property
    def lib(self) -> Path:
        """The folder of the chosen framework's assemblies ("" means directly in lib/)."""
        return self.path / "lib" / self.framework if self.framework else self.path / "lib"

    def assemblies(self) -> list[str]:
        return [f"{self.mount_point}/{name}" for name in self.dlls] if self.framework is not None else []

    def mount(self) -> tuple[str, str]:
        return str(self.lib), self.mount_point


@dataclass(frozen=True)
class Restored:
    packages: tuple[Package, ...]
    warnings: tuple[str, ...] = ()

    def mounts(self) -> tuple[tuple[str, str], ...]:
        return tuple(p.mount() for p in self.packages if p.framework is not None)

    def references(self) -> tuple[str, ...]:
        """The assemblies the script references, as the sandbox sees them."""
        return tuple(a for p in self.packages for a in p.assemblies())
