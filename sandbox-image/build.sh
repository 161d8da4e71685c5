#!/usr/bin/env bash
# Builds the offline sandbox image of an agent type. Usage: sandbox-image/build.sh [mono-6]
#
# The Mono image is made without any container registry: debootstrap a minimal Debian, install
# Debian's Mono into it, compile the runner, and `docker import` the tree. It is skipped when an
# image built from the same recipe (this script + the runner's sources) already exists.
set -euo pipefail

flavour=${1:-mono-6}
here=$(cd "$(dirname "$0")" && pwd)
case "$flavour" in
  mono-6) ;;
  dotnet-7)
    echo "dotnet-7 needs a container registry: docker build --build-arg SDK_IMAGE=<registry>/dotnet/sdk:7.0 -t dotnet-scripts/dotnet-7 $here/dotnet-7" >&2
    exit 2 ;;
  *) echo "unknown image flavour: $flavour" >&2; exit 2 ;;
esac

image="dotnet-scripts/$flavour"
recipe=$(cat "$0" "$here/$flavour"/runner/* | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{ index .Config.Labels "recipe" }}' "$image" 2>/dev/null)" = "$recipe" ]; then
  echo "image $image is up to date (recipe $recipe)"
  exit 0
fi

# The Debian mirror is the one this host's apt already uses (override with DEBIAN_MIRROR).
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "no Debian mirror found in apt sources; set DEBIAN_MIRROR" >&2; exit 1; }

command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
# runner/after.c is compiled here, statically (the image has no compiler)
dpkg -s gcc libc6-dev >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
root=$(mktemp -d /var/tmp/dotnet-scripts-rootfs.XXXXXX)
cleanup() { umount "$root/proc" 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT

echo "debootstrap bookworm into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
mount -t proc proc "$root/proc"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  mono-runtime mono-mcs libmono-system-net-http4.0-cil libmono-system-xml-linq4.0-cil \
  libmono-system-numerics4.0-cil libmono-microsoft-csharp4.0-cil >/dev/null

mkdir -p "$root/opt/csrun" "$root/sandbox"
cp "$here/$flavour/runner/csrun.cs" "$root/opt/csrun/"
chroot "$root" mcs -nologo -optimize -out:/opt/csrun/csrun.exe -r:System.Core -r:/usr/lib/mono/4.5/mcs.exe /opt/csrun/csrun.cs
rm "$root/opt/csrun/csrun.cs"
gcc -static -O2 -s -o "$root/opt/csrun/after" "$here/$flavour/runner/after.c"
# the unprivileged user scripts run as (the executor passes the same uid/gid)
echo "sandbox:x:10001:10001::/sandbox:/usr/sbin/nologin" >> "$root/etc/passwd"
echo "sandbox:x:10001:" >> "$root/etc/group"
umount "$root/proc"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*

tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 MONO_PATH=/usr/lib/mono/4.5 HOME=/sandbox' \
  --change 'WORKDIR /sandbox' \
  --change 'USER 10001:10001' \
  --change "LABEL recipe=$recipe" \
  --change 'CMD ["mono", "--debug", "-O=-inline", "/opt/csrun/csrun.exe"]' \
  - "$image" >/dev/null
echo "built $image (recipe $recipe)"
