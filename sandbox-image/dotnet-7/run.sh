#!/bin/sh
# Runner of the .NET agent type: the script arrives on stdin (never on a command line), is saved
# to the clean work disk and run by dotnet-script with an empty stdin.
set -eu
cat > /sandbox/main.csx
exec dotnet script /sandbox/main.csx < /dev/null
