#!/bin/bash
# Runner of the .NET agent type. stdin (never a command line) carries, in order, three parts each
# as a line with its byte length and then that many bytes: the job's NuGet.Config (0: none), the
# script's stdin, its arguments (each ended by a NUL); then the script. The config is saved next
# to the script, where dotnet-script's restore of `#r "nuget: …"` finds it; the arguments follow
# `--` on dotnet-script's command line, as `dotnet script main.csx -- a b` gives them.
set -eu
work=${SANDBOX_DIR:-/sandbox}
input="$work/.input"  # the work directory: /tmp may be smaller than the job's stdin
mkdir -p "$input"
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
mapfile -d '' -t args < "$input/args"
exec 3< "$input/stdin"
rm -rf "$input"  # the script finds only its own files; its stdin stays open on fd 3
if [ ${#args[@]} -gt 0 ]; then
  exec dotnet script "$work/main.csx" -- "${args[@]}" <&3 3<&-
fi
exec dotnet script "$work/main.csx" <&3 3<&-
