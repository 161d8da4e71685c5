#!/usr/bin/env bash
# Installs what the service needs on a Debian 12 machine, as root, skipping what is already there:
# Docker engine + gVisor (runsc), the project's venv, and the sandbox image. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[setup] $*"; }

# 1. Debian packages: the Docker engine, gVisor, and what the image build needs
need=()
command -v dockerd >/dev/null || need+=(docker.io containerd runc)
command -v runsc >/dev/null || need+=(runsc)
command -v iptables >/dev/null || need+=(iptables)
command -v debootstrap >/dev/null || need+=(debootstrap)
dpkg -s gcc libc6-dev >/dev/null 2>&1 || need+=(gcc libc6-dev)  # the image's static helper (runner/after.c)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. Docker knows gVisor: `runsc` (no network) and `runsc-host-net` (the container's own netns)
python3 - <<'PY'
import json, os, shutil
path = "/etc/docker/daemon.json"
conf = json.load(open(path)) if os.path.exists(path) else {}
runsc = shutil.which("runsc")
want = {"runsc": {"path": runsc, "runtimeArgs": ["--network=none"]},
        "runsc-host-net": {"path": runsc, "runtimeArgs": ["--network=host"]}}
if any(conf.get("runtimes", {}).get(k) != v for k, v in want.items()):
    conf.setdefault("runtimes", {}).update(want)
    os.makedirs("/etc/docker", exist_ok=True)
    json.dump(conf, open(path, "w"), indent=2)
    open("/run/dotnet-scripts-daemon-changed", "w").close()
PY

# 3. A running Docker engine (no systemd here: start dockerd in the background)
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  nohup dockerd >/var/log/dotnet-scripts-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/dotnet-scripts-dockerd.log; exit 1; }
elif [ -e /run/dotnet-scripts-daemon-changed ]; then
  log "reloading dockerd's runtimes"
  kill -HUP "$(pidof dockerd)"; sleep 1
fi
rm -f /run/dotnet-scripts-daemon-changed
docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' || { echo "dockerd has no runsc runtime" >&2; exit 1; }

# 4. The Python environment
stamp=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
  log "installing Python packages into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  echo "$stamp" > .venv/.stamp
fi

# 5. The sandbox image (skipped when the recipe has not changed), and its read-only copy for
#    sandboxes that runsc starts alone (once per image id; the first job need not wait for it)
bash sandbox-image/build.sh mono-6
.venv/bin/python -c 'from executors.engines.runsc import image_rootfs; image_rootfs("dotnet-scripts/mono-6")'
log "ready"
