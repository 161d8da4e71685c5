"""Compiled scripts a node's pool keeps, so a repeated script skips the compiler."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

from executors.engines.docker import image_id


def packages_digest(mounts: tuple[tuple[str, str], ...]) -> bytes:
    """What a job's packages are, by content: a compiled script is only reused with the same ones."""
    h = hashlib.sha256()
    for source, target in sorted(mounts):
        for f in sorted(Path(source).iterdir()):
            if f.is_file():
                h.update(f"{target}/{f.name}\0".encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.digest()


class CompiledCache:
    """Compiled scripts of this node's pool, by script text and image, least recently used first
    out. An entry is what a runner wrote before the script it compiled ran (so no script can forge
    it) and is only ever handed to a new sandbox's runner: nothing writable is shared between jobs."""

    def __init__(self, max_bytes: int, image: str):
        self.max_bytes, self.on = max_bytes, max_bytes > 0
        # the image id covers the runner and the compiler: a rebuilt image never gets old entries
        self.image_id = image_id(image) if self.on else ""
        self.entries: OrderedDict[str, bytes] = OrderedDict()
        self.size = self.hits = self.misses = 0
        self.lock = threading.Lock()

    def key(self, script: str, packages: bytes = b"") -> str:
        return hashlib.sha256(self.image_id.encode() + b"\0" + packages + b"\0" + script.encode()).hexdigest()

    def get(self, key: str) -> bytes | None:
        if not self.on:
            return None
        with self.lock:
            found = self.entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: str, artifact: bytes) -> None:
        if not self.on or len(artifact) > self.max_bytes:
            return
        with self.lock:
            if key in self.entries:
                return
            self.entries[key] = artifact
            self.size += len(artifact)
            while self.size > self.max_bytes:
                _, dropped = self.entries.popitem(last=False)
                self.size -= len(dropped)

    def stats(self) -> dict:
        with self.lock:
            return {"entries": len(self.entries), "bytes": self.size, "hits": self.hits, "misses": self.misses}
