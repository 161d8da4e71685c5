"""Controlled egress for sandboxes: a dedicated Docker bridge plus iptables rules that this module
installs and removes itself (idempotently, under a file lock shared by the node's processes).

From the bridge, everything addressed to the host itself is rejected (INPUT: the API, Ray GCS and
dashboard, Redis, PostgreSQL, the Docker API all listen there), and so are loopback, private,
link-local (cloud metadata 169.254.169.254), shared, multicast and reserved ranges (FORWARD), with
a TCP reset or an ICMP error so that a script fails at once instead of hanging. Operator-allowed
networks (e.g. an internal NuGet feed) are accepted before those rules; public addresses pass.

Under gVisor this needs runsc's `--network=host` mode (the `runsc-host-net` runtime): the sandbox
then uses the container's network namespace through the host kernel's network stack instead of
gVisor's own netstack, which this machine's runsc cannot run. See docs/SECURITY.md.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import subprocess
from contextlib import contextmanager

log = logging.getLogger(__name__)

NETWORK = "dotnet-scripts-egress"  #: the Docker network sandboxes with egress join
BRIDGE = "ds-egress0"  #: its Linux bridge, named so the rules can match it
SUBNET = "10.213.213.0/24"
CHAIN_FORWARD = "DS-EGRESS"  #: jumped to from DOCKER-USER for traffic leaving the bridge
CHAIN_INPUT = "DS-EGRESS-HOST"  #: jumped to from INPUT for traffic to the host itself
LOCK = "/run/dotnet-scripts-egress.lock"

#: never reachable from a sandbox (RFC 1918, loopback, link-local incl. metadata, CGNAT, ...)
BLOCKED = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
           "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4")


def _reject(dest: str | None = None) -> list[list[str]]:
    match = ["-d", dest] if dest else []
    return [[*match, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
            [*match, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]]


def forward_rules(allowed: tuple[str, ...] = ()) -> list[list[str]]:
    """The rules of the FORWARD-side chain, in order (pure)."""
    rules = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]]
    rules += [["-d", str(ipaddress.ip_network(net, strict=False)), "-j", "RETURN"] for net in allowed]
    for net in BLOCKED:
        rules += _reject(net)
    rules.append(["-j", "RETURN"])
    return rules


def input_rules() -> list[list[str]]:
    """The rules of the host-side chain: nothing from a sandbox is for the host (pure)."""
    return [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"], *_reject()]


def _ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)


@contextmanager
def _locked():
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _hook(chain: str, parent: str) -> None:
    jump = ["-i", BRIDGE, "-j", chain]
    if _ipt("-C", parent, *jump, check=False).returncode != 0:
        _ipt("-I", parent, "1", *jump)


def ensure_egress(allowed: tuple[str, ...] = ()) -> str:
    """Creates the bridge and installs the rules if missing; returns the Docker network's name."""
    with _locked():
        if subprocess.run(["docker", "network", "inspect", NETWORK], capture_output=True).returncode != 0:
            subprocess.run(["docker", "network", "create", "--driver", "bridge", "--subnet", SUBNET,
                            "--opt", f"com.docker.network.bridge.name={BRIDGE}",
                            "--opt", "com.docker.network.bridge.enable_icc=false",
                            "--label", "dotnet-scripts.egress=1", NETWORK],
                           capture_output=True, text=True, check=True)
        for chain, rules, parent in ((CHAIN_FORWARD, forward_rules(allowed), "DOCKER-USER"),
                                     (CHAIN_INPUT, input_rules(), "INPUT")):
            _ipt("-N", chain, check=False)
            _ipt("-F", chain)
            for rule in rules:
                _ipt("-A", chain, *rule)
            _hook(chain, parent)
    return NETWORK


def remove_egress() -> None:
    """Removes the rules and the bridge (when no sandbox uses it any more)."""
    with _locked():
        for chain, parent in ((CHAIN_FORWARD, "DOCKER-USER"), (CHAIN_INPUT, "INPUT")):
            while _ipt("-D", parent, "-i", BRIDGE, "-j", chain, check=False).returncode == 0:
                pass
            _ipt("-F", chain, check=False)
            _ipt("-X", chain, check=False)
        subprocess.run(["docker", "network", "rm", NETWORK], capture_output=True)
