"""A runsc sandbox's OCI bundle: its runtime configuration (`oci_config`, pure, mirroring
Docker's `container_config`) and the image's files as a read-only root on this node."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from pathlib import Path

from docker.errors import DockerException

from executors.engines.docker import docker_api  # the image's id on every sandbox's start: the API, not the CLI
from executors.protocol import runner_env
from executors.spec import HOSTS

ROOTFS_DIR = Path("/var/lib/dotnet-scripts/rootfs")  #: read-only copies of the images, by image id
CGROUP_PARENT = "/dotnet-scripts"
#: as under Docker; the image itself sets no PATH
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def oci_config(spec, rootfs: str, image_env: tuple[str, ...], labels: dict[str, str]) -> dict:
    """The OCI runtime configuration of a sandbox: what `container_config` asks Docker for."""
    lim = spec.limits
    uid_s, _, gid_s = spec.user.partition(":")
    uid, gid = int(uid_s), int(gid_s or uid_s)

    def tmpfs(dst: str, size_mb: int, mode: str = "0700") -> dict:
        return {"destination": dst, "type": "tmpfs", "source": "tmpfs",
                "options": ["rw", "nosuid", "nodev", "exec", f"uid={uid}", f"gid={gid}", f"mode={mode}",
                            f"size={size_mb}m"]}

    env = list(image_env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    env += ["HOSTNAME=sandbox", "DOTNET_CLI_TELEMETRY_OPTOUT=1", *(f"{k}={v}" for k, v in (*runner_env(spec), *spec.env))]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(spec.command),
            "env": env,
            "cwd": spec.work_dir,
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": lim.nofile, "soft": lim.nofile},
                        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": "sandbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            tmpfs(spec.work_dir, lim.disk_mb),
            tmpfs("/tmp", lim.tmp_mb),
            *({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro", "nosuid", "nodev"]}
              for src, dst in spec.mounts),
        ],
        "annotations": labels,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "resources": {
                "memory": {"limit": lim.memory_mb << 20, "swap": lim.memory_mb << 20},
                "cpu": {"quota": int(lim.cpus * 100_000), "period": 100_000},
                "pids": {"limit": lim.pids},
            },
            "cgroupsPath": f"{CGROUP_PARENT}/{spec.name}",
        },
    }


def image_rootfs(image: str) -> tuple[str, tuple[str, ...]]:
    """The image's file system as a read-only directory of this node, exported once per image
    id, and its environment. Raises OSError or subprocess.CalledProcessError (our fault: no such
    image, no space)."""
    try:
        inspect = docker_api().inspect_image(image)
    except DockerException as e:
        raise OSError(f"no image {image}: {e}") from None
    rootfs = ROOTFS_DIR / inspect["Id"].removeprefix("sha256:")[:32]
    env = tuple(inspect["Config"].get("Env") or ())
    if rootfs.is_dir():
        return str(rootfs), env
    ROOTFS_DIR.mkdir(parents=True, exist_ok=True)
    with open(ROOTFS_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one export at a time on the node (several pools may start)
        if not rootfs.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=ROOTFS_DIR, prefix=".export-"))
            cid = subprocess.run(["docker", "create", image], capture_output=True, text=True, check=True).stdout.strip()
            try:
                exporter = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
                subprocess.run(["tar", "-x", "--numeric-owner", "-C", str(tmp)], stdin=exporter.stdout, check=True)
                if exporter.wait() != 0:
                    raise subprocess.CalledProcessError(exporter.returncode, "docker export")
                # what Docker would mount: the sandbox's name and a hosts file without network
                (tmp / "etc/hostname").write_text("sandbox\n")
                (tmp / "etc/hosts").write_text(HOSTS)
                tmp.chmod(0o755)
                tmp.rename(rootfs)
            finally:
                subprocess.run(["docker", "rm", cid], capture_output=True)
                shutil.rmtree(tmp, ignore_errors=True)
            _prune_rootfs(keep=rootfs)
    return str(rootfs), env


def _prune_rootfs(keep: Path) -> None:
    """Removes the copies of images no longer on the node (the sandbox image was rebuilt)."""
    ids = set(subprocess.run(["docker", "image", "ls", "-q", "--no-trunc"], capture_output=True, text=True).stdout.split())
    live = {i.removeprefix("sha256:")[:32] for i in ids}
    for d in ROOTFS_DIR.iterdir():
        if d != keep and d.is_dir() and not d.name.startswith(".") and d.name not in live:
            shutil.rmtree(d, ignore_errors=True)
