"""Agent types: a platform a job can ask for. Each is a sandbox image plus the runner inside it.

A node offers an agent type by advertising a Ray custom resource of the same name whose count is
its number of sandbox slots; a job's Ray task asks for one unit of it.
"""

from dataclasses import dataclass

from executors.nuget.packages import Target
from executors.spec import DELAY_BY_SHELL


@dataclass(frozen=True)
class AgentType:
    name: str  #: the job's `agentType` and the Ray custom resource
    image: str  #: local Docker image (see sandbox-image/)
    command: tuple[str, ...]  #: the runner; it reads the script from stdin
    work_dir: str = "/sandbox"  #: the script's clean, size-limited disk (a tmpfs)
    user: str = "10001:10001"  #: non-root uid:gid inside the image
    description: str = ""
    runtime: str = ""  #: what runs the scripts, as GET /agent-types shows it
    runtime_version: str = ""
    language_version: str = ""  #: the C# language version scripts are compiled as
    #: what `#r "nuget: …"` packages must target; the service restores them on the node.
    #: None: the runner restores them itself from the job's NuGet.Config (dotnet-script)
    nuget: Target | None = None
    #: the runner reads a length-prefixed NuGet.Config ahead of the script on stdin (dotnet-7's run.sh)
    config_on_stdin: bool = False
    #: the runner hands out what it compiled and runs it again when given it (csrun's CSRUN_ARTIFACTS):
    #: repeated scripts skip the compiler
    artifacts: bool = False
    #: the runner writes end frames (SandboxSpec.end_frames)
    end_frames: bool = False
    #: the runner reports its compile (SandboxSpec.report): results get a phase and diagnostics
    report: bool = False
    #: the runner's environment in every sandbox (never secrets)
    env: tuple[tuple[str, str], ...] = ()
    #: how the image starts a command after a delay: these, the seconds, the command (pooled
    #: gVisor runners wait for the sandbox's clock)
    delayed_start: tuple[str, ...] = DELAY_BY_SHELL


MONO_6 = AgentType(
    name="linux-amd64-mono-6",
    image="dotnet-scripts/mono-6",
    command=("mono", "--debug", "-O=-inline", "/opt/csrun/csrun.exe"),
    description="C# 7.2 scripts (.csx semantics) on Debian's Mono 6.8; builds offline",
    runtime="Mono", runtime_version="6.8", language_version="7.2",
    # Mono 6.8 runs .NET Framework 4.8 assemblies; Debian's Mono has no netstandard.dll facade
    nuget=Target(net=(4, 8), netstandard=None),
    artifacts=True,
    end_frames=True,
    report=True,
    # runner/after.c: no shell, no `sleep` process per pooled sandbox
    delayed_start=("/opt/csrun/after",),
)

DOTNET_7 = AgentType(
    name="linux-amd64-dotnet-7",
    image="dotnet-scripts/dotnet-7",
    command=("/opt/csrun/run.sh",),
    config_on_stdin=True,
    description="dotnet-script on the .NET 7 SDK; its image needs a container registry to build",
    runtime=".NET", runtime_version="7.0", language_version="11.0",
)

#: every agent type this code knows how to run; Settings.agent_types picks the enabled ones
CATALOGUE: dict[str, AgentType] = {t.name: t for t in (MONO_6, DOTNET_7)}
