"""NuGet versions and version ranges (pure): parsing, ordering and which version a range picks.

Versions are SemVer 2 with an optional fourth number (`1.2.3.4-beta.1+meta`). Ranges are NuGet's:
a bare version is a minimum (`1.0` means ≥ 1.0), intervals `[1.0,2.0)`, `(,2.0]`, `[1.0]`, and
floating versions `*`, `13.*`, `1.2.*`. A range picks its lowest matching version (what NuGet
calls lowest applicable, so restores are reproducible); a floating one picks its highest.
Pre-release versions only match a range that names one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

_VERSION = re.compile(r"^(\d{1,9})(?:\.(\d{1,9}))?(?:\.(\d{1,9}))?(?:\.(\d{1,9}))?"
                      r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]*)?$")


class VersionError(ValueError):
    """Not a NuGet version or version range; the message quotes it."""


@total_ordering
@dataclass(frozen=True)
class Version:
    numbers: tuple[int, int, int, int]
    pre: tuple[str, ...] = ()  #: pre-release labels; empty for a release

    @classmethod
    def parse(cls, text: str) -> Version:
        m = _VERSION.match(text.strip())
        if not m:
            raise VersionError(f"{text!r} is not a version")
        numbers = tuple(int(g) if g else 0 for g in m.groups()[:4])
        return cls(numbers, tuple(m.group(5).split(".")) if m.group(5) else ())

    @property
    def is_prerelease(self) -> bool:
        return bool(self.pre)

    def __str__(self) -> str:
        """NuGet's normalized form: three numbers, a fourth only when it is not 0."""
        nums = self.numbers if self.numbers[3] else self.numbers[:3]
        return ".".join(map(str, nums)) + ("-" + ".".join(self.pre) if self.pre else "")

    def _key(self):
        # a release sorts after its pre-releases; numeric labels before alphanumeric ones
        labels = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in self.pre)
        return self.numbers, not self.pre, labels

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __eq__(self, other) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


@dataclass(frozen=True)
class VersionRange:
    low: Version | None = None
    low_inclusive: bool = True
    high: Version | None = None
    high_inclusive: bool = False
    float_prefix: tuple[int, ...] | None = None  #: `13.*` → (13,); `*` → (); None: not floating
    text: str = ""

    @classmethod
    def parse(cls, text: str | None) -> VersionRange:
        """A range from a `#r "nuget: Id, <range>"` directive or a .nuspec; empty or None: any version."""
        t = (text or "").strip()
        if not t or t == "*":
            return cls(float_prefix=(), text=t or "*")
        if t.endswith("*"):
            head = t[:-1]
            parts = head.rstrip(".").split(".") if head else []
            if not head.endswith(".") or not all(p.isdigit() for p in parts) or len(parts) > 3:
                raise VersionError(f"{text!r} is not a version range")
            return cls(float_prefix=tuple(map(int, parts)), text=t)
        if t[0] not in "[(":
            return cls(low=Version.parse(t), text=t)
        if t[-1] not in "])":
            raise VersionError(f"{text!r} is not a version range")
        inner = t[1:-1]
        low_inc, high_inc = t[0] == "[", t[-1] == "]"
        if "," not in inner:  # [1.0]: exactly
            if not (low_inc and high_inc):
                raise VersionError(f"{text!r} is not a version range")
            v = Version.parse(inner)
            return cls(v, True, v, True, text=t)
        lo, hi = (s.strip() for s in inner.split(",", 1))
        r = cls(Version.parse(lo) if lo else None, low_inc, Version.parse(hi) if hi else None, high_inc, text=t)
        if r.low and r.high and (r.high < r.low or (r.high == r.low and not (low_inc and high_inc))):
            raise VersionError(f"{text!r} is an empty version range")
        return r

    def allows_prerelease(self) -> bool:
        return any(v is not None and v.is_prerelease for v in (self.low, self.high))

    def satisfies(self, v: Version) -> bool:
        if v.is_prerelease and not self.allows_prerelease():
            return False
        if self.float_prefix is not None:
            return v.numbers[:len(self.float_prefix)] == self.float_prefix
        if self.low is not None and (v < self.low or (v == self.low and not self.low_inclusive)):
            return False
        if self.high is not None and (v > self.high or (v == self.high and not self.high_inclusive)):
            return False
        return True

    def pick(self, versions) -> Version | None:
        """The version this range restores among those a feed has; None if none matches."""
        ok = [v for v in versions if self.satisfies(v)]
        if not ok:
            return None
        return max(ok) if self.float_prefix is not None else min(ok)

    def __str__(self) -> str:
        return self.text
