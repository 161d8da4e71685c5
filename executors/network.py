"""Controlled egress for sandboxes: a Docker bridge network of its own per sandbox, plus iptables
rules that this module installs and removes itself (under a file lock shared by the node's processes).

From the bridges, everything addressed to the host itself is rejected (INPUT: the API, Ray GCS and
dashboard, Redis, PostgreSQL, the Docker API all listen there), and so are loopback, private,
link-local (cloud metadata 169.254.169.254), shared, multicast and reserved ranges (FORWARD), with
a TCP reset or an ICMP error so that a script fails at once instead of hanging. Operator-allowed
networks (e.g. an internal NuGet feed) are accepted before those rules; public addresses pass.

A network per sandbox: Docker's name service on a network answers for every container on it
(names and reverse look-ups), and a container's name carries its job's id, which is all it takes
to read or delete another tenant's job. Alone on its network a sandbox can look up only itself.

The rules change in one `iptables-restore` transaction and only when they differ from what is
installed: flushed and re-added rule by rule, they left every running sandbox a gap.

Under gVisor this needs runsc's `--network=host` mode (the `runsc-host-net` runtime): the sandbox
then uses the container's network namespace through the host kernel's network stack instead of
gVisor's own netstack, which this machine's runsc cannot run. See docs/SECURITY.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import logging
import random
import subprocess
import time
import uuid
from contextlib import contextmanager

log = logging.getLogger(__name__)

NETWORK_PREFIX = "dotnet-scripts-egress-"  #: the Docker networks of egress sandboxes, one each
BRIDGE_PREFIX = "dse-"  #: their Linux bridges (15 characters at most), so the rules can match them all
SUBNETS = ipaddress.ip_network("10.213.0.0/16")  #: where their subnets are taken from
SUBNET_PREFIX = 28  #: a gateway and one sandbox: 4096 of them fit
LABEL = "dotnet-scripts.egress"  #: every egress network carries it, with its creation time
CHAIN_FORWARD = "DS-EGRESS"  #: jumped to first thing in FORWARD for traffic leaving the bridges
CHAIN_INPUT = "DS-EGRESS-HOST"  #: jumped to from INPUT for traffic to the host itself
LOCK = "/run/dotnet-scripts-egress.lock"

#: never reachable from a sandbox (RFC 1918, loopback, link-local incl. metadata, CGNAT, ...)
BLOCKED = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
           "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4")


class NetworkError(RuntimeError):
    """An egress network or its rules could not be set up: our fault, not the script's."""


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


#: each chain's jump is the first rule of its parent. Not in DOCKER-USER: Docker deletes and
#: re-inserts the jump to DOCKER-USER whenever it makes a network, and meanwhile nothing of it
#: applied. A new network's rules go above ours, so ours move back up after each (only its own,
#: still empty bridge passed them meanwhile)
HOOKS = ((CHAIN_FORWARD, "FORWARD"), (CHAIN_INPUT, "INPUT"))


def _hook(chain: str, parent: str) -> str:
    return f"-A {parent} -i {BRIDGE_PREFIX}+ -j {chain}"


def _first(parent: str, lines: list[str]) -> str | None:
    return next((line for line in lines if line.startswith(f"-A {parent} ")), None)


def marker(allowed: tuple[str, ...]) -> str:
    """A no-op first rule naming the rule set's digest: what is installed is known in one look."""
    digest = hashlib.sha256(repr((forward_rules(allowed), input_rules(), BRIDGE_PREFIX)).encode()).hexdigest()[:32]
    return f'-A {CHAIN_FORWARD} -m comment --comment "dotnet-scripts {digest}"'


def restore_input(allowed: tuple[str, ...], installed: str) -> str | None:
    """The `iptables-restore --noflush` input that makes the rules what they should be, given
    `iptables -S` of the filter table as installed; None when they already are (pure). Declaring
    a chain flushes it within the transaction: no moment sees it empty or half filled."""
    lines = installed.splitlines()
    want = marker(allowed)
    first = [_first(p, lines) == _hook(c, p) for c, p in HOOKS]
    if want in lines and all(first):
        return None
    out = ["*filter"]
    if want not in lines:
        out += [f":{CHAIN_FORWARD} - [0:0]", f":{CHAIN_INPUT} - [0:0]", want]
        for chain, rules in ((CHAIN_FORWARD, forward_rules(allowed)), (CHAIN_INPUT, input_rules())):
            out += [" ".join(["-A", chain, *rule]) for rule in rules]
    for (chain, parent), ok in zip(HOOKS, first):
        if not ok:
            if _hook(chain, parent) in lines:
                out.append(_hook(chain, parent).replace("-A", "-D", 1))
            out.append(f"-I {parent} 1 -i {BRIDGE_PREFIX}+ -j {chain}")
    return "\n".join([*out, "COMMIT", ""])


@contextmanager
def _locked():
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_rules(allowed: tuple[str, ...] = ()) -> None:
    """Installs the rules, or changes them in one transaction, unless they already are these."""
    with _locked():
        installed = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True).stdout
        wanted = restore_input(allowed, installed)
        if wanted is not None:
            done = subprocess.run(["iptables-restore", "-w", "--noflush"], input=wanted, capture_output=True, text=True)
            if done.returncode != 0:
                raise NetworkError(f"the egress rules could not be installed: {done.stderr.strip()[:300]}")


def create_network(api, allowed: tuple[str, ...] = ()) -> str:
    """A new egress network for one sandbox, behind the rules; returns its name. `api`: Docker's."""
    token = uuid.uuid4().hex[:11]
    name = NETWORK_PREFIX + token
    subnets = list(SUBNETS.subnets(new_prefix=SUBNET_PREFIX))
    for _ in range(8):  # another process may take the same subnet at once: Docker says so, try another
        subnet = random.choice(subnets)
        ipam = {"Driver": "default", "Config": [{"Subnet": str(subnet), "Gateway": str(subnet[1])}]}
        try:
            api.create_network(name, driver="bridge", ipam=ipam, labels={LABEL: str(int(time.time()))},
                               options={"com.docker.network.bridge.name": BRIDGE_PREFIX + token,
                                        "com.docker.network.bridge.enable_icc": "false"})
            break
        except Exception as e:  # docker-py's APIError; this module does not import Docker's SDK
            if "overlap" not in str(e).lower():
                raise NetworkError(f"the egress network could not be made: {e}") from None
    else:
        raise NetworkError("no free subnet for an egress network")
    try:
        ensure_rules(allowed)  # after: Docker put the new network's rules above ours
    except (NetworkError, subprocess.SubprocessError, OSError):
        remove_network(api, name)
        raise
    return name


def remove_network(api, name: str) -> None:
    """Removes an egress network once its sandbox is gone (a network still in use stays)."""
    try:
        api.remove_network(name)
    except Exception as e:  # gone already, or still in use: the reaper retries
        log.debug("egress network %s not removed: %s", name, e)


def networks(api) -> dict[str, float]:
    """This node's egress networks: name → when it was made (Unix time)."""
    found = {}
    for n in api.networks(filters={"label": LABEL}):
        try:
            found[n["Name"]] = float((n.get("Labels") or {}).get(LABEL, "0"))
        except ValueError:
            found[n["Name"]] = 0.0
    return found


def remove_unused_networks(api, older_than_s: float = 120.0) -> list[str]:
    """Removes egress networks no sandbox uses, once older than a sandbox takes to be created in them."""
    removed = []
    for name, made in networks(api).items():
        if time.time() - made < older_than_s:
            continue
        try:
            if not api.inspect_network(name).get("Containers"):
                api.remove_network(name)
                removed.append(name)
        except Exception as e:  # taken meanwhile, or gone
            log.debug("egress network %s kept: %s", name, e)
    return removed


def remove_egress(api) -> None:
    """Removes the unused egress networks, and the rules once no egress network is left."""
    remove_unused_networks(api, older_than_s=0)
    if networks(api):
        return  # sandboxes still use some: their rules stay
    with _locked():
        for chain, parent in HOOKS:
            while _ipt("-D", parent, "-i", f"{BRIDGE_PREFIX}+", "-j", chain).returncode == 0:
                pass
            _ipt("-D", "DOCKER-USER", "-i", f"{BRIDGE_PREFIX}+", "-j", chain)  # where earlier versions hooked it
            _ipt("-F", chain)
            _ipt("-X", chain)


def _ipt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
