"""What one job's restore may cost its node, counted as it goes: bytes downloaded from its feeds,
bytes its packages expand to (those taken from the cache count too: they stay pinned, not
evictable, while the job runs), files and packages. Per-package caps alone let a chain of 100
packages write 100 times the cap."""

from __future__ import annotations

from dataclasses import dataclass


class BudgetError(Exception):
    """The job's restore went over one of its budgets; the message names it. Not a RuntimeError
    or ValueError, so that no handler meant for a feed or an archive takes it for one of theirs."""


@dataclass
class Budget:
    download_bytes: int = 256 << 20
    extract_bytes: int = 512 << 20
    files: int = 20000
    packages: int = 100
    downloaded: int = 0
    extracted: int = 0
    file_count: int = 0
    package_count: int = 0

    def download(self, n: int) -> None:
        self.downloaded += n
        if self.downloaded > self.download_bytes:
            raise BudgetError(f"more than the job's restore budget of {_mib(self.download_bytes)} downloaded")

    def extract(self, n: int) -> None:
        self.extracted += n
        if self.extracted > self.extract_bytes:
            raise BudgetError(f"more than the job's restore budget of {_mib(self.extract_bytes)} of package files")

    def file(self, n: int = 1) -> None:
        self.file_count += n
        if self.file_count > self.files:
            raise BudgetError(f"more than the job's restore budget of {self.files} package files")

    def package(self) -> None:
        self.package_count += 1
        if self.package_count > self.packages:
            raise BudgetError(f"more than the job's restore budget of {self.packages} packages")

    def fits_extract(self, n: int) -> None:
        """Refuses at once what would go over the budget once written (sizes an archive declares)."""
        if self.extracted + n > self.extract_bytes:
            raise BudgetError(f"more than the job's restore budget of {_mib(self.extract_bytes)} of package files")


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"
