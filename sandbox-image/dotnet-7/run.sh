#!/bin/sh
# Runner of the .NET agent type. stdin (never a command line) carries, in order: a line with the
# byte length of the job's NuGet.Config (0: none), that many bytes of it, then the script. The
# config is saved next to the script, where dotnet-script's restore of `#r "nuget: …"` finds it;
# the script runs with an empty stdin.
set -eu
work=${SANDBOX_DIR:-/sandbox}
read -r n || true  # no newline at all: bad input below
case "$n" in ''|*[!0-9]*) echo "run.sh: bad input" >&2; exit 2 ;; esac
if [ "$n" -gt 0 ]; then
  head -c "$n" > "$work/NuGet.Config"
fi
cat > "$work/main.csx"
exec dotnet script "$work/main.csx" < /dev/null
