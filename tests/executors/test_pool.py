"""The pool's pure parts: the pooled sandbox's spec, its name, and how a job's packages are lent and keyed."""

import os
from pathlib import Path

from cluster.agent_types import MONO_6
from executors.pool import (
    GVISOR_CLOCK_S, CompiledCache, lend_packages, packages_digest, pool_name, refill_now, template,
)
from executors.protocol import runner_env
from executors.spec import PoolSpec, SandboxSpec

PACKAGES = PoolSpec(MONO_6.name, cache_mb=8, packages_dir="/cache/sandboxes")


def job(job_id: str = "j1", **kw) -> SandboxSpec:
    return SandboxSpec(job_id=job_id, image=MONO_6.image, command=MONO_6.command, **kw)


def test_jobs_with_and_without_packages_share_one_pool_whose_runners_read_the_list_from_stdin():
    with_packages = job("j2", mounts=(("/cache/a/lib/net45", "/nuget/a/1.0.0"),),
                        references=("/nuget/a/1.0.0/A.dll",))
    t = template(with_packages, PACKAGES)
    assert t == template(job(), PACKAGES) and t.mounts == () and t.references == ()
    assert t.artifacts and t.references_on_stdin
    assert dict(runner_env(t)) == {"CSRUN_ARTIFACTS": "1", "CSRUN_REFERENCES": "-"}
    assert pool_name("n" * 40, with_packages, PACKAGES) == pool_name("n" * 40, job(), PACKAGES)
    # a pool that lends no packages runs its runners without the list, and is another pool
    plain = PoolSpec(MONO_6.name, cache_mb=8)
    assert not template(job(), plain).references_on_stdin
    assert "CSRUN_REFERENCES" not in dict(runner_env(template(job(), plain)))
    assert pool_name("n" * 40, job(), plain) != pool_name("n" * 40, job(), PACKAGES)


def test_a_pooled_gvisor_runner_starts_once_the_sandbox_clock_is_calibrated_and_is_then_the_same_process():
    t = template(job(), PACKAGES)
    assert t.command == ("sh", "-c", 'sleep "$0"; exec "$@"', f"{GVISOR_CLOCK_S:g}", *MONO_6.command)
    assert GVISOR_CLOCK_S >= 1.0  # gVisor calibrates ~1 s after its boot
    # an image that has a way of its own (Mono's static helper, no shell)
    helped = template(job(delayed_start=MONO_6.delayed_start), PACKAGES)
    assert helped.command == ("/opt/csrun/after", f"{GVISOR_CLOCK_S:g}", *MONO_6.command)
    assert pool_name("n" * 40, job(delayed_start=MONO_6.delayed_start), PACKAGES) != pool_name("n" * 40, job(), PACKAGES)
    # runc has no such clock: its runner starts at once, as does every cold sandbox's
    assert template(job(runtime="runc"), PACKAGES).command == MONO_6.command == job().command


def test_a_lone_job_leaves_the_refill_for_later_a_burst_or_a_low_pool_refills_at_once():
    assert not refill_now(active=1, slots=2, left=15)  # one user's jobs back to back: the next one gets the CPU
    assert refill_now(active=2, slots=2, left=14)  # every slot busy: the depth counts
    assert refill_now(active=1, slots=2, left=1)  # less than a sandbox per slot left
    assert not refill_now(active=1, slots=2, left=2)
    assert refill_now(active=1, slots=1, left=7)  # one slot: a lone job is all the node runs
    assert refill_now(active=1, slots=0, left=0)


def package(root: Path, name: str, content: bytes) -> str:
    lib = root / name / "lib/net45"
    lib.mkdir(parents=True)
    (lib / f"{name}.dll").write_bytes(content)
    return str(lib)


def test_lent_packages_are_links_into_the_sandboxes_folder_readable_by_the_sandbox_user(tmp_path):
    src = package(tmp_path / "cache", "A", b"assembly A")
    folder = tmp_path / "sandboxes/pool/s1"
    folder.mkdir(parents=True)
    lend_packages(folder, ((src, "/nuget/a/1.0.0"),))
    lent = folder / "a/1.0.0/A.dll"
    assert lent.read_bytes() == b"assembly A" and os.stat(lent).st_ino == os.stat(Path(src) / "A.dll").st_ino
    assert all(oct(d.stat().st_mode)[-3:] == "755" for d in (folder, folder / "a", folder / "a/1.0.0"))


def test_a_symlink_in_a_package_folder_is_never_lent(tmp_path):
    src = package(tmp_path / "cache", "A", b"assembly A")
    (Path(src) / "passwd.dll").symlink_to("/etc/passwd")
    folder = tmp_path / "sandboxes/pool/s1"
    folder.mkdir(parents=True)
    lend_packages(folder, ((src, "/nuget/a/1.0.0"),))
    assert sorted(p.name for p in (folder / "a/1.0.0").iterdir()) == ["A.dll"]


def test_a_compiled_script_is_only_reused_with_the_same_packages_by_content(tmp_path):
    one = package(tmp_path / "v1", "A", b"assembly A, build 1")
    same = package(tmp_path / "v1-again", "A", b"assembly A, build 1")
    other = package(tmp_path / "v2", "A", b"assembly A, build 2")
    digest = lambda src: packages_digest(((src, "/nuget/a/1.0.0"),))  # noqa: E731
    assert digest(one) == digest(same) != digest(other)
    assert digest(one) != packages_digest(((one, "/nuget/b/1.0.0"),))  # seen elsewhere by the script
    cache = CompiledCache(1 << 20, MONO_6.image)
    script = '#r "nuget: A, 1.*"\nWriteLine(A.X.Y);'
    assert len({cache.key(script), cache.key(script, digest(one)), cache.key(script, digest(other))}) == 3
