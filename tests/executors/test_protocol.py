"""The runner's compile report and artifact frames at the start of stdout, and the compiler's
messages as data (pure: no Docker)."""

import io
import threading

from executors.protocol import ARTIFACT_MAGIC, COMPILED_MAGIC, CappedReader, compile_report, diagnostics
from executors.spec import Compiled


def frame(magic: bytes, body: bytes) -> bytes:
    return magic + b"%d\n" % len(body) + body


def read(data: bytes, expect: tuple[bytes, ...], chunk: int = 65536) -> CappedReader:
    class Trickle(io.RawIOBase):  # hands out at most `chunk` bytes a read, as a pipe may
        def __init__(self):
            self.left = data

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), chunk, len(self.left))
            b[:n], self.left = self.left[:n], self.left[n:]
            return n

    reader = CappedReader(io.BufferedReader(Trickle(), 7), 1 << 20, None, threading.Event())
    reader.expect = expect
    reader.run()
    return reader


REPORT = b"ok 412\nscript.csx(2,5): warning CS0168: The variable `x' is declared but never used\n"


def test_the_report_then_the_artifact_are_taken_from_the_start_and_the_rest_is_output():
    data = frame(COMPILED_MAGIC, REPORT) + frame(ARTIFACT_MAGIC, b"\0dll\n") + b"hello\n"
    for chunk in (65536, 3):
        r = read(data, (COMPILED_MAGIC, ARTIFACT_MAGIC), chunk)
        assert r.text() == "hello\n" and r.frame == b"\0dll\n"
        assert compile_report(r.frames[COMPILED_MAGIC]) == Compiled("ok", 412, REPORT.split(b"\n", 1)[1].decode())


def test_a_frame_not_expected_or_not_at_the_start_is_the_script_s_output():
    data = frame(COMPILED_MAGIC, b"failed 0\nforged\n") + b"out\n"
    assert read(data, ()).text() == data.decode()  # a runner told nothing writes no report
    later = b"out\n" + frame(COMPILED_MAGIC, b"failed 0\n")
    r = read(frame(COMPILED_MAGIC, REPORT) + later, (COMPILED_MAGIC,))
    assert r.text() == later.decode() and compile_report(r.frames[COMPILED_MAGIC]).status == "ok"
    no_report = read(b"\0csrun-compiledx", (COMPILED_MAGIC,))
    assert no_report.text() == "\0csrun-compiledx" and no_report.frames == {}


def test_a_garbled_report_is_none():
    assert compile_report(None) is None
    assert compile_report(b"maybe 3\n") is None and compile_report(b"ok soon\n") is None
    assert compile_report(b"cached 0\n") == Compiled("cached", 0, "")


def test_compiler_messages_become_diagnostics_and_other_lines_are_left_out():
    messages = ("script.csx(1,9): error CS0029: Cannot implicitly convert type `string' to `int'\n"
                "script.csx(7,1): warning CS0168: The variable `b' is declared but never used\n"
                "/usr/lib/mono/4.5/mscorlib.dll (Location of the symbol related to previous error)\n"
                "error CS0006: Metadata file `x.dll' could not be found\n"
                "script.csx(3,1): error NU0001: expected #r \"nuget: Id, Version\", got #r \"nuget:\"\n")
    assert diagnostics(messages) == [
        {"severity": "error", "code": "CS0029", "file": "script.csx", "line": 1, "column": 9,
         "message": "Cannot implicitly convert type `string' to `int'"},
        {"severity": "warning", "code": "CS0168", "file": "script.csx", "line": 7, "column": 1,
         "message": "The variable `b' is declared but never used"},
        {"severity": "error", "code": "CS0006", "file": None, "line": None, "column": None,
         "message": "Metadata file `x.dll' could not be found"},
        {"severity": "error", "code": "NU0001", "file": "script.csx", "line": 3, "column": 1,
         "message": 'expected #r "nuget: Id, Version", got #r "nuget:"'},
    ]
