"""A restore's work in a process of its own: in a cgroup of its own (nuget/cgroup.py), killed at its
deadline. That is what makes the deadline hold whatever the work is blocked in (a DNS look-up
that hangs, a TLS handshake or response headers that trickle, hashing), and what keeps a hostile
feed's download, decompression and hashing within a CPU quota and a memory limit.

The protocol: the parent writes a length line and a pickle (its own data, to its own child) on the
child's stdin; the child answers JSON lines on its stdout (never a pickle: the child handles what
a feed sent, so the parent trusts nothing it says beyond its shape), and when it has answered it
waits for its stdin to close before it exits: so the cache entries it leased stay leased until
the parent has leased them itself.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from executors.nuget.cgroup import Cgroup, fallback_rlimits

log = logging.getLogger(__name__)

MAX_ANSWER = 16 << 20  #: what the parent reads from a child at most
_PROJECT = str(Path(__file__).resolve().parents[1])


class TimedOut(Exception):
    """The child did not answer before the deadline; it is killed."""


class Died(Exception):
    """The child ended without answering (or answered nonsense)."""

    def __init__(self, message: str, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory


class Child:
    """`python -c code` started in a cgroup of its own, fed `request`, read until `deadline`."""

    def __init__(self, code: str, request, deadline: float, cpus: float, memory_bytes: int):
        self.code, self.request, self.deadline = code, request, deadline
        self.cgroup = Cgroup(uuid.uuid4().hex[:16], cpus, memory_bytes)
        self.proc: subprocess.Popen | None = None
        self.stderr = tempfile.TemporaryFile()
        self.buffer = b""

    def __enter__(self) -> Child:
        try:
            has_cgroup = self.cgroup.create()
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_PROJECT, os.environ.get("PYTHONPATH"))))}
            self.proc = subprocess.Popen([sys.executable, "-c", self.code, str(os.getpid())], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.stderr, env=env, close_fds=True)
            # in its cgroup before it is told what to do: nothing of the work runs outside
            if has_cgroup:
                try:
                    self.cgroup.add(self.proc.pid)
                except OSError as e:
                    log.warning("a restore runs without its cgroup: %s", e)
                    has_cgroup = False
            if not has_cgroup:
                fallback_rlimits(self.proc.pid, self.cgroup.memory_bytes)
            data = pickle.dumps(self.request)
            # by a thread: a child stuck before it reads cannot hold the parent past the deadline
            threading.Thread(target=self._send, args=(b"%d\n" % len(data) + data,), daemon=True).start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the child is gone (or closed): its stdout's end tells the parent

    def answers(self):
        """The child's JSON answers, one per line, until it closes its stdout. TimedOut, Died."""
        fd = self.proc.stdout.fileno()
        poll = select.poll()  # not select(): a busy worker's descriptors can be past 1024
        poll.register(fd, select.POLLIN)
        total = 0
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                try:
                    answer = json.loads(line)
                except ValueError:
                    raise Died("the restore's process answered nonsense") from None
                if not isinstance(answer, dict):
                    raise Died("the restore's process answered nonsense")
                yield answer
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimedOut()
            if not poll.poll(left * 1000):
                continue
            chunk = os.read(fd, 1 << 16)
            total += len(chunk)
            if not chunk or total > MAX_ANSWER:
                self._died()
            self.buffer += chunk

    def _died(self):
        try:
            code = self.proc.wait(timeout=max(0.0, min(2.0, self.deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            code = None
        if self.cgroup.oom_killed():
            raise Died("out of memory", out_of_memory=True)
        raise Died(f"its process ended ({_how(code)})")

    def log_stderr(self) -> None:
        """What the child wrote on its stderr (tracebacks, warnings) goes to the node's log."""
        self.stderr.seek(0)
        text = self.stderr.read(64 << 10).decode(errors="replace").strip()
        if text:
            log.warning("restore process (pid %s): %s", self.proc.pid if self.proc else "-", text)

    def __exit__(self, kind, value, tb) -> None:
        """Closes the child's stdin (on success it exits by itself right then), kills it if it
        does not, removes its cgroup."""
        try:
            if self.proc is not None:
                if kind is not None:  # timed out, or the parent gave up on it: no waiting
                    self.proc.kill()  # first: a write to its stdin still under way then fails
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                self.proc.stdout.close()
                self.log_stderr()
        finally:
            self.cgroup.remove()
            self.stderr.close()


def _how(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"signal {signal.Signals(-code).name if -code in signal.valid_signals() else -code}"
    return f"exit code {code}"


# ---- in the child ---------------------------------------------------------------------------------

def child_request():
    """In the child: dies with its parent, keeps its stdout for answers (anything else printed goes
    to stderr), and reads the parent's request. Returns (request, answer function, wait function)."""
    parent = int(sys.argv[1])
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent was gone before that took hold
        os._exit(1)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    size = int(stdin.readline())
    request = pickle.loads(stdin.read(size))

    def answer(message: dict) -> None:
        out.write(json.dumps(message).encode() + b"\n")
        out.flush()

    def wait_for_parent() -> None:
        out.close()
        stdin.read()  # until the parent closes it: it has what it needed (and its own leases)

    return request, answer, wait_for_parent
