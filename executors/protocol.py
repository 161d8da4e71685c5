"""The runners' stdin/stdout contract: what precedes a script on stdin (the warm-up marker,
package references, a compiled artifact, the job's args and stdin), what a runner writes around
the script's output (its compile report and the artifact frame first, the end frames last), and
the reader that keeps a stream's output capped."""

from __future__ import annotations

import re
import threading

from executors.spec import Compiled

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
    return _frame(ARGS_MAGIC, nul_ended(args)) + _frame(STDIN_MAGIC, stdin)


def nul_ended(args: tuple[str, ...] | list[str]) -> bytes:
    """The arguments, each ended by a NUL (`xargs -0`'s form; an empty one stays one)."""
    return b"".join(a.encode() + b"\0" for a in args)


#: how a runner (CSRUN_REPORT=1) reports its compile, first on stdout: "<status> <ms>\n" + messages
COMPILED_MAGIC = b"\0csrun-compiled "
MAX_REPORT_BYTES = 1 << 20  #: compiler messages beyond this are not kept in the report
#: a compiler message: `file(line,column): error CS0029: text`; the location may be missing
_DIAGNOSTIC = re.compile(r"^(?:(?P<file>[^\s(][^(]*)\((?P<line>\d+),(?P<column>\d+)\): )?"
                         r"(?P<severity>error|warning) (?P<code>[A-Z]+\d+): (?P<message>.*)$")


def compile_report(body: bytes | None) -> Compiled | None:
    """The runner's compile report from its frame's body; None without one (or a garbled one)."""
    if body is None:
        return None
    head, _, messages = body.partition(b"\n")
    status, _, ms = head.decode("ascii", errors="replace").partition(" ")
    if status not in ("ok", "failed", "cached") or not ms.isdigit():
        return None
    return Compiled(status, int(ms), messages.decode("utf-8", errors="replace"))


def diagnostics(messages: str) -> list[dict]:
    """The compiler's messages as data (severity, code, file, line, column, message); lines that
    are not messages (mcs's notes on a related symbol) are left out."""
    found = []
    for line in messages.splitlines():
        m = _DIAGNOSTIC.match(line)
        if m:
            found.append({"severity": m["severity"], "code": m["code"], "file": m["file"],
                          "line": int(m["line"]) if m["line"] else None,
                          "column": int(m["column"]) if m["column"] else None, "message": m["message"]})
    return found


def runner_env(spec) -> tuple[tuple[str, str], ...]:
    """How a spec's runner options reach csrun: its environment (the only place it reads them)."""
    return (*((("CSRUN_END", "1"),) if spec.end_frames else ()),
            *((("CSRUN_REPORT", "1"),) if spec.report else ()),
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
    """Reads a stream to its end, keeping at most `cap` bytes: memory stays flat on a flood. The
    frames named in `expect` (set before the runner gets its input), those of them that come, in
    that order, at the very start are taken apart from the output into `frames`: the runner
    writes them before the script runs, so only there."""

    def __init__(self, stream, cap: int, end: re.Pattern | None, changed: threading.Event):
        super().__init__(daemon=True)
        self.stream, self.cap, self.end, self.changed = stream, cap, end, changed
        self.data = bytearray()
        self.expect: tuple[bytes, ...] = ()
        self.frames: dict[bytes, bytes] = {}
        self.total, self.tail = 0, b""  #: bytes of output so far, and the last of them
        self.ended: re.Match | None = None  #: the end frame, while it is the last thing read
        self.eof = False

    @property
    def frame(self) -> bytes | None:
        """The compiled artifact, if the runner handed one out."""
        return self.frames.get(ARTIFACT_MAGIC)

    def run(self) -> None:
        first = self.stream.read1(65536)
        for magic in self.expect:
            first = first or self.stream.read1(65536)  # the previous frame ended where a read did
            if first:
                first = self._take_frame(first, magic)
        self._keep(first)
        while chunk := self.stream.read1(65536):
            self._keep(chunk)
        self.eof = True
        self.changed.set()

    def _take_frame(self, head: bytes, magic: bytes) -> bytes:
        """Removes the frame from the start of the stream; returns the output that follows it."""
        n = len(magic)
        while (nl := head.find(b"\n", n)) < 0:
            if not magic.startswith(head[:n]) or len(head) > n + 12:
                return head  # no frame (e.g. the compile failed): all output
            more = self.stream.read1(65536)
            if not more:
                return head
            head += more
        if not head.startswith(magic) or not head[n:nl].isdigit():
            return head
        keep = MAX_ARTIFACT_BYTES if magic == ARTIFACT_MAGIC else MAX_REPORT_BYTES
        length, body = int(head[n:nl]), bytearray(head[nl + 1:])
        got = len(body)
        while got < length:
            more = self.stream.read1(min(65536, length - got))
            if not more:
                return b""
            got += len(more)
            if len(body) <= keep:  # a larger one is read to its end but not kept whole
                body += more
        if length <= keep or magic != ARTIFACT_MAGIC:  # a report cut short still tells; an artifact would not run
            self.frames[magic] = bytes(body[:min(length, keep)])
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
