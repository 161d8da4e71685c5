"""How a sandbox's output streams are read: Docker's frames, the cap, and the runner's end frames (pure: no Docker)."""

import io
import os
import threading

from executors.protocol import END_FRAME, EXIT_FRAME, CappedReader
from executors.engines.docker import split_frames


def read(data: bytes, cap: int = 1 << 20, end=EXIT_FRAME) -> CappedReader:
    reader = CappedReader(io.BufferedReader(io.BytesIO(data)), cap, end, threading.Event())
    reader.run()
    return reader


def test_the_exit_frame_last_on_stdout_tells_the_code_and_is_not_output():
    r = read(b"hello\n\0csrun-exit 42\n")
    assert r.ended.group(1) == b"42" and r.text() == "hello\n" and not r.truncated
    e = read(b"warning\n\0csrun-end\n", end=END_FRAME)
    assert e.ended and e.text() == "warning\n"


def test_a_frame_that_is_not_last_is_output():
    r = read(b"\0csrun-exit 0\nmore\n")
    assert r.ended is None and r.text() == "\0csrun-exit 0\nmore\n"
    assert read(b"\0csrun-exit x\n").ended is None


def test_the_cap_counts_output_only_and_the_frame_never_shows():
    exact = read(b"x" * 10 + b"\0csrun-exit 1\n", cap=10)  # the frame beyond the cap: not truncated
    assert exact.text() == "x" * 10 and not exact.truncated and exact.ended
    over = read(b"x" * 12 + b"\0csrun-exit 1\n", cap=10)
    assert over.text() == "x" * 10 and over.truncated and over.ended
    inside = read(b"x" * 8 + b"\0csrun-exit 1\n", cap=12)  # the cap falls inside the frame
    assert inside.text() == "x" * 8 and not inside.truncated


class Seen(threading.Event):
    """Records what the reader holds at the moment it tells the run that something changed."""

    def __init__(self):
        super().__init__()
        self.reader, self.texts = None, []

    def set(self):
        self.texts.append(self.reader.text())
        super().set()


def test_when_the_run_is_told_the_frame_came_the_output_before_it_is_already_kept():
    # the run returns as soon as both frames were seen: the output must be in by then (a CI run
    # once returned an empty stdout when the frame was flagged before its chunk was kept)
    seen = Seen()
    reader = CappedReader(io.BufferedReader(io.BytesIO(b"burst 6\n\0csrun-exit 0\n")), 1 << 20, EXIT_FRAME, seen)
    seen.reader = reader
    reader.run()
    assert seen.texts[0] == "burst 6\n"


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def split(data: bytes, chunk: int = 1 << 20) -> tuple[bytes, bytes]:
    """Docker's attach stream, as read in pieces of at most `chunk` bytes → stdout, stderr."""
    class Slow(io.BytesIO):
        def read1(self, n=-1):
            return super().read1(min(n, chunk) if n > 0 else chunk)

    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    split_frames(io.BufferedReader(Slow(data), buffer_size=chunk), out_w, err_w)
    os.close(out_w), os.close(err_w)
    with open(out_r, "rb") as out, open(err_r, "rb") as err:
        return out.read(), err.read()


def test_docker_s_frames_go_to_their_streams_in_order():
    data = frame(1, b"hello ") + frame(2, b"warning\n") + frame(1, b"world\n") + frame(2, b"") + frame(1, b"\0csrun-exit 0\n")
    assert split(data) == (b"hello world\n\0csrun-exit 0\n", b"warning\n")
    assert split(data, chunk=3) == split(data)  # frames and headers arriving in pieces


def test_a_frame_cut_short_ends_the_streams_with_what_came():
    assert split(frame(1, b"complete") + frame(2, b"cut")[:-1]) == (b"complete", b"cu")
    assert split(frame(1, b"a") + frame(2, b"b")[:5]) == (b"a", b"")  # half a header: nothing more
