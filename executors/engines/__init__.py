"""The engines that start sandboxes; `engine_for` picks a sandbox's once."""

from executors.engines.base import Engine
from executors.engines.docker import DockerEngine
from executors.engines.runsc import RunscEngine
from executors.spec import SandboxSpec, via_runsc

DOCKER, RUNSC = DockerEngine(), RunscEngine()
ALL: tuple[Engine, ...] = (RUNSC, DOCKER)  #: a name is looked up in runsc's first: a local lookup


def engine_for(spec: SandboxSpec) -> Engine:
    """runsc alone where it can run the sandbox (gVisor, no network) and was chosen; else Docker."""
    return RUNSC if via_runsc(spec) else DOCKER
