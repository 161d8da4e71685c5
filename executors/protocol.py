"""The runners' stdin/stdout contract: what precedes a script on stdin (package references, a
compiled artifact, the warm-up marker), what a runner writes around the script's output (the
artifact frame first, the end frames last), and the reader that keeps a stream's output capped."""

from __future__ import annotations

import re
import threading

#: how the runner (CSRUN_ARTIFACTS=1) frames the compiled script ahead of the script's output
ARTIFACT_MAGIC = b"\0csrun-artifact "
MAX_ARTIFACT_BYTES = 8 << 20  #: a larger compiled script is not kept


#: a pre-started runner (CSRUN_REFERENCES=-) gets the job's package assemblies ahead of all else
REFERENCES_MAGIC = b"\0csrun-references "
WARMUP_MARKER = b"\0csrun-warmup\n"  #: ahead of a pooled runner's input: warm up now, the job follows
#: a runner with end frames (csrun's CSRUN_END) writes these last: the outcome is known without
#: waiting for the container's exit (~0.1 s later under gVisor). A script printing them itself can
#: only end its own run early, with the code it printed
EXIT_FRAME = re.compile(rb"\0csrun-exit (-?\d{1,10})\n\Z")
END_FRAME = re.compile(rb"\0csrun-end\n\Z")


#: the script's arguments and standard input, always sent to csrun after any artifact frame
ARGS_MAGIC = b"\0csrun-args "
STDIN_MAGIC = b"\0csrun-stdin "


def input_frames(args: tuple[str, ...] | list[str], stdin: bytes) -> bytes:
    """csrun's frames of the script's arguments (each ended by a NUL, which none may hold) and its
    standard input: length-prefixed, so no byte of either can pass for a frame or the script."""
    return _frame(ARGS_MAGIC, b"".join(a.encode() + b"\0" for a in args)) + _frame(STDIN_MAGIC, stdin)


def runner_env(spec) -> tuple[tuple[str, str], ...]:
    """How a spec's runner options reach csrun: its environment (the only place it reads them)."""
    return (*((("CSRUN_END", "1"),) if spec.end_frames else ()),
            *((("CSRUN_ARTIFACTS", "1"),) if spec.artifacts else ()),
            *((("CSRUN_REFERENCES", "-"),) if spec.references_on_stdin else
              (("CSRUN_REFERENCES", ":".join(spec.references)),) if spec.references else ()))


def _frame(magic: bytes, body: bytes) -> bytes:
    return magic + f"{len(body)}\n".encode() + body


def artifact_frame(artifact: bytes) -> bytes:
    return _frame(ARTIFACT_MAGIC, artifact)


def references_frame(paths: tuple[str, ...]) -> bytes:
    return _frame(REFERENCES_MAGIC, ":".join(paths).encode())


class CappedReader(threading.Thread):
    """Reads a stream to its end, keeping at most `cap` bytes: memory stays flat on a flood. With
    `expect_frame` (set before the runner gets its input) an artifact frame at the very start is
    taken apart from the output: the runner writes it before the script runs, so only there."""

    def __init__(self, stream, cap: int, end: re.Pattern | None, changed: threading.Event):
        super().__init__(daemon=True)
        self.stream, self.cap, self.end, self.changed = stream, cap, end, changed
        self.data = bytearray()
        self.expect_frame = False
        self.frame: bytes | None = None
        self.total, self.tail = 0, b""  #: bytes of output so far, and the last of them
        self.ended: re.Match | None = None  #: the end frame, while it is the last thing read
        self.eof = False

    def run(self) -> None:
        first = self.stream.read1(65536)
        if first and self.expect_frame:
            first = self._take_frame(first)
        self._keep(first)
        while chunk := self.stream.read1(65536):
            self._keep(chunk)
        self.eof = True
        self.changed.set()

    def _take_frame(self, head: bytes) -> bytes:
        """Removes the frame from the start of the stream; returns the output that follows it."""
        n = len(ARTIFACT_MAGIC)
        while (nl := head.find(b"\n", n)) < 0:
            if not ARTIFACT_MAGIC.startswith(head[:n]) or len(head) > n + 12:
                return head  # no frame (e.g. the compile failed): all output
            more = self.stream.read1(65536)
            if not more:
                return head
            head += more
        if not head.startswith(ARTIFACT_MAGIC) or not head[n:nl].isdigit():
            return head
        length, body = int(head[n:nl]), bytearray(head[nl + 1:])
        got = len(body)
        while got < length:
            more = self.stream.read1(min(65536, length - got))
            if not more:
                return b""
            got += len(more)
            if len(body) <= MAX_ARTIFACT_BYTES:  # a larger one is read to its end but not kept
                body += more
        if length <= MAX_ARTIFACT_BYTES:
            self.frame = bytes(body[:length])
        return bytes(body[length:])

    def _keep(self, chunk: bytes) -> None:
        # the output first: the moment `ended` is seen, the run may take the text and return
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.total += len(chunk)
        self.tail = (self.tail + chunk)[-32:]
        self.ended = self.end.search(self.tail) if self.end else None
        if self.ended:
            self.changed.set()

    @property
    def size(self) -> int:
        """Bytes of output, the end frame not counted."""
        return self.total - (len(self.ended.group(0)) if self.ended else 0)

    @property
    def truncated(self) -> bool:
        return self.size > self.cap

    def text(self) -> str:
        return self.data[:self.size].decode("utf-8", errors="replace")
