#!/bin/sh
# Runner of the .NET agent type. stdin (never a command line) carries, in order, three parts each
# as a line with its byte length and then that many bytes: the job's NuGet.Config (0: none), the
# script's stdin, its arguments (each ended by a NUL); then the script. The config is saved next
# to the script, where dotnet-script's restore of `#r "nuget: …"` finds it; the arguments follow
# `--` on dotnet-script's command line, as `dotnet script main.csx -- a b` gives them.
set -eu
work=${SANDBOX_DIR:-/sandbox}
input=$(mktemp -d)
part() {  # the next length line, then that many bytes into $1
  read -r n || true  # no newline at all: bad input below
  case "$n" in ''|*[!0-9]*) echo "run.sh: bad input" >&2; exit 2 ;; esac
  head -c "$n" > "$1"
}
part "$input/config"
part "$input/stdin"
part "$input/args"
if [ -s "$input/config" ]; then
  mv "$input/config" "$work/NuGet.Config"
fi
cat > "$work/main.csx"
if [ -s "$input/args" ]; then  # xargs -a leaves stdin to the command
  exec xargs -0 -a "$input/args" dotnet script "$work/main.csx" -- < "$input/stdin"
fi
exec dotnet script "$work/main.csx" < "$input/stdin"
