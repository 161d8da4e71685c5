"""A sandbox's CPU time and memory peak from its cgroup files (pure: a cgroup tree of files)."""

from executors import usage
from executors.usage import Meter


def tree(tmp_path, monkeypatch, cpu_ns: int, peak: int):
    monkeypatch.setattr(usage, "ROOT", tmp_path)
    for ctrl, name, value in (("cpuacct", "cpuacct.usage", cpu_ns), ("memory", "memory.max_usage_in_bytes", peak)):
        (tmp_path / ctrl / "docker/abc").mkdir(parents=True)
        (tmp_path / ctrl / "docker/abc" / name).write_text(f"{value}\n")
    return tmp_path


def test_a_cold_sandbox_counts_from_its_cgroup_s_start(tmp_path, monkeypatch):
    tree(tmp_path, monkeypatch, cpu_ns=2_500_000_000, peak=64 << 20)
    m = Meter("docker/abc")
    assert (m.cpu_ms(), m.peak_memory_kb()) == (2500, 65536)


def test_a_pooled_sandbox_counts_from_its_taking_and_its_peak_is_reset(tmp_path, monkeypatch):
    root = tree(tmp_path, monkeypatch, cpu_ns=900_000_000, peak=80 << 20)
    m = Meter("/docker/abc")
    m.start()
    assert (root / "memory/docker/abc/memory.max_usage_in_bytes").read_text() == "0"
    (root / "cpuacct/docker/abc/cpuacct.usage").write_text("1300000000\n")
    (root / "memory/docker/abc/memory.max_usage_in_bytes").write_text(str(30 << 20))
    assert (m.cpu_ms(), m.peak_memory_kb()) == (400, 30720)


def test_an_unknown_or_gone_cgroup_reads_none(tmp_path, monkeypatch):
    tree(tmp_path, monkeypatch, cpu_ns=1, peak=1)
    assert (Meter(None).cpu_ms(), Meter(None).peak_memory_kb()) == (None, None)  # never the root's
    gone = Meter("docker/gone")
    gone.start()
    assert (gone.cpu_ms(), gone.peak_memory_kb()) == (None, None)


def test_cgroup_v2_files(tmp_path, monkeypatch):
    monkeypatch.setattr(usage, "ROOT", tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    (tmp_path / "dotnet-scripts/x").mkdir(parents=True)
    (tmp_path / "dotnet-scripts/x/cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    (tmp_path / "dotnet-scripts/x/memory.peak").write_text(str(10 << 20))
    assert (Meter("dotnet-scripts/x").cpu_ms(), Meter("dotnet-scripts/x").peak_memory_kb()) == (1500, 10240)
