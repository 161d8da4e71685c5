"""A job's restored packages lent to a pre-started sandbox: its folder, bound read-only at /nuget
when the sandbox started, gets hard links to the node's cache when a job takes it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from executors.nuget.spec import MOUNT_ROOT


def lend_packages(folder: Path, mounts: tuple[tuple[str, str], ...]) -> None:
    """Puts a job's restored packages (host folder → where the sandbox sees it) into a pooled
    sandbox's package folder: hard links to the node's cache, copies where that cannot link."""
    for source, target in mounts:
        into = folder / os.path.relpath(target, MOUNT_ROOT)
        into.mkdir(parents=True, exist_ok=True)
        for f in Path(source).iterdir():
            if f.is_file() and not f.is_symlink():  # the cache holds regular files only; never follow one
                try:
                    os.link(f, into / f.name)
                except OSError:
                    shutil.copyfile(f, into / f.name)
        for d in (into, *into.parents):
            if d == folder.parent:
                break
            os.chmod(d, 0o755)
