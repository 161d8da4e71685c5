"""NuGet feeds (v3 JSON and v2 OData) read over HTTP under the sandboxes' egress policy.

The restore runs on the node, outside any sandbox, but it fetches URLs a client chose: so every
connection goes to an address checked first (no loopback, private, link-local/metadata, CGNAT,
multicast or reserved ranges, none of this host's own addresses, unless the operator allowed the
network with EGRESS_ALLOW), to the address that was checked (no second DNS answer), redirects are
checked the same way, and every response is capped in size and time.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from executors.network import BLOCKED
from executors.nuget_config import Source
from executors.nuget_versions import Version, VersionError

MAX_INDEX_BYTES = 8 << 20  #: a service index or version list; real ones are kilobytes
MAX_REDIRECTS = 5
MAX_V2_PAGES = 20
_BLOCKED_V6 = ("::/127", "::ffff:0:0/96", "64:ff9b::/96", "fc00::/7", "fe80::/10", "ff00::/8")


class FeedError(RuntimeError):
    """A feed could not be read; the message names the feed and the reason."""


class NotFound(FeedError):
    """The feed answered 404: it does not have the package (or version)."""


@dataclass(frozen=True)
class Policy:
    """Where restores may connect, and how much they may read."""
    allow: tuple[str, ...] = ()  #: networks reachable although private (EGRESS_ALLOW)
    timeout_s: float = 30.0  #: per connection and read
    max_package_bytes: int = 64 << 20
    deadline: float = field(default=float("inf"))  #: time.monotonic() past which nothing is fetched


def address_refusal(ip: str, allow: tuple[str, ...]) -> str | None:
    """Why a restore may not connect to `ip`, or None if it may (pure apart from the host's addresses)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if any(addr in ipaddress.ip_network(n) for n in allow):
        return None
    blocked = BLOCKED if addr.version == 4 else _BLOCKED_V6
    if any(addr in ipaddress.ip_network(n) for n in blocked):
        return "a private, loopback or link-local address"
    if str(addr) in _host_addresses():
        return "an address of this host"
    return None


def _host_addresses() -> set[str]:
    """Every address of this host's interfaces (the kernel's local routes, IPv4 and IPv6)."""
    found = set()
    try:
        lines = open("/proc/net/fib_trie").read().splitlines()
        found |= {prev.split()[-1] for prev, line in zip(lines, lines[1:]) if "/32 host LOCAL" in line}
    except OSError:
        pass
    try:
        found |= {str(ipaddress.ip_address(bytes.fromhex(line.split()[0]))) for line in open("/proc/net/if_inet6")}
    except OSError:
        pass
    return found


def _connect(host: str, port: int, policy: Policy) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FeedError(f"cannot resolve {host}: {e.strerror}") from None
    for info in infos:  # every answer must be allowed, or a DNS reply could pick a private one
        why = address_refusal(info[4][0], policy.allow)
        if why:
            raise FeedError(f"{host} resolves to {info[4][0]}, {why}: not allowed "
                            "(the operator can allow a network with EGRESS_ALLOW)")
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        s = socket.socket(family, kind, proto)
        s.settimeout(_timeout(policy))
        try:
            s.connect(sockaddr)
            return s
        except OSError as e:
            s.close()
            last = e
    raise FeedError(f"cannot connect to {host}:{port}: {last.strerror if last and last.strerror else last}")


def _timeout(policy: Policy) -> float:
    left = policy.deadline - time.monotonic()
    if left <= 0:
        raise FeedError("the restore took too long")
    return min(policy.timeout_s, left)


class _Pinned(http.client.HTTPConnection):
    def __init__(self, host, port, policy: Policy):
        super().__init__(host, port, timeout=_timeout(policy))
        self.policy = policy

    def connect(self):
        self.sock = _connect(self.host, self.port, self.policy)


class _PinnedTLS(http.client.HTTPSConnection):
    def __init__(self, host, port, policy: Policy):
        super().__init__(host, port, timeout=_timeout(policy), context=ssl.create_default_context())
        self.policy = policy

    def connect(self):
        raw = _connect(self.host, self.port, self.policy)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def _label(url: str) -> str:
    """A URL as shown in messages: without user info or query."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{':' + str(p.port) if p.port else ''}{p.path}"


def fetch(url: str, source: Source, policy: Policy, cap: int) -> bytes:
    """GET `url` with the source's credentials (same host only), at most `cap` bytes. FeedError."""
    origin = urlsplit(source.url).hostname
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FeedError(f"{_label(url)}: only http(s) URLs can be fetched")
        conn_type = _PinnedTLS if parts.scheme == "https" else _Pinned
        conn = conn_type(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), policy)
        headers = {"User-Agent": "dotnet-scripts-restore", "Accept-Encoding": "identity"}
        if source.username is not None and parts.hostname == origin:
            token = base64.b64encode(f"{source.username}:{source.password or ''}".encode()).decode()
            headers["Authorization"] = "Basic " + token
        try:
            conn.request("GET", parts.path + ("?" + parts.query if parts.query else "") or "/", headers=headers)
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urljoin(url, resp.getheader("Location"))
                continue
            if resp.status == 404:
                raise NotFound(f"{_label(url)}: not found (404)")
            if resp.status in (401, 403):
                raise FeedError(f"{_label(url)}: access denied ({resp.status}); check the feed's credentials")
            if resp.status != 200:
                raise FeedError(f"{_label(url)}: HTTP {resp.status}")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > cap:
                raise FeedError(f"{_label(url)}: {int(length) >> 20} MiB is more than the {cap >> 20} MiB limit")
            data = resp.read(cap + 1)
            if len(data) > cap:
                raise FeedError(f"{_label(url)}: more than the {cap >> 20} MiB limit")
            return data
        except (OSError, http.client.HTTPException) as e:
            raise FeedError(f"{_label(url)}: {type(e).__name__}: {e}"[:300]) from None
        finally:
            conn.close()
    raise FeedError(f"{_label(url)}: too many redirects")


class Feed:
    """One package source: which versions of a package it has, and its .nupkg bytes."""

    def __init__(self, source: Source, policy: Policy):
        self.source, self.policy = source, policy
        self.label = f"'{source.key}' ({_label(source.url)})"

    def versions(self, package_id: str) -> list[Version]:
        raise NotImplementedError

    def download(self, package_id: str, version: Version) -> bytes:
        raise NotImplementedError

    def _get(self, url: str, cap: int = MAX_INDEX_BYTES) -> bytes:
        return fetch(url, self.source, self.policy, cap)


def _versions(texts) -> list[Version]:
    out = []
    for t in texts:
        try:
            out.append(Version.parse(str(t)))
        except VersionError:
            pass  # a feed may list versions we cannot read; they are simply not candidates
    return out


class V3Feed(Feed):
    """Service index → PackageBaseAddress/3.0.0 (the flat container)."""

    base: str | None = None

    def _base(self) -> str:
        if self.base is None:
            try:
                index = json.loads(self._get(self.source.url))
                base = next(r["@id"] for r in index["resources"]
                            if str(r.get("@type", "")).startswith("PackageBaseAddress/3.0.0"))
            except (ValueError, KeyError, TypeError, StopIteration):
                raise FeedError(f"feed {self.label}: not a NuGet v3 service index with a PackageBaseAddress") from None
            self.base = urljoin(self.source.url, str(base)).rstrip("/") + "/"
        return self.base

    def versions(self, package_id: str) -> list[Version]:
        try:
            data = json.loads(self._get(f"{self._base()}{quote(package_id.lower())}/index.json"))
            return _versions(data["versions"])
        except NotFound:
            return []
        except (ValueError, KeyError, TypeError):
            raise FeedError(f"feed {self.label}: unreadable version list of {package_id}") from None

    def download(self, package_id: str, version: Version) -> bytes:
        pid, ver = quote(package_id.lower()), quote(str(version).lower())
        return self._get(f"{self._base()}{pid}/{ver}/{pid}.{ver}.nupkg", self.policy.max_package_bytes)


class V2Feed(Feed):
    """OData: FindPackagesById()?id='…' (Atom, paged) and package/{id}/{version}."""

    def versions(self, package_id: str) -> list[Version]:
        url = urljoin(self.source.url.rstrip("/") + "/", f"FindPackagesById()?id='{quote(package_id)}'")
        found: list[str] = []
        for _ in range(MAX_V2_PAGES):
            try:
                root = fromstring(self._get(url), forbid_dtd=True, forbid_entities=True, forbid_external=True)
            except NotFound:
                return []
            except (DefusedXmlException, SyntaxError):
                raise FeedError(f"feed {self.label}: unreadable answer for {package_id}") from None
            for el in root.iter():
                if el.tag.rsplit("}", 1)[-1] == "Version" and el.text:
                    found.append(el.text.strip())
            nxt = next((el.get("href") for el in root if el.tag.rsplit("}", 1)[-1] == "link"
                        and el.get("rel") == "next" and el.get("href")), None)
            if not nxt:
                break
            url = urljoin(url, nxt)
        return _versions(found)

    def download(self, package_id: str, version: Version) -> bytes:
        url = urljoin(self.source.url.rstrip("/") + "/", f"package/{quote(package_id)}/{quote(str(version))}")
        return self._get(url, self.policy.max_package_bytes)


def feed_for(source: Source, policy: Policy) -> Feed:
    """v3 when the config says so or the URL is a service index (…/index.json), else v2 (NuGet's rule)."""
    v3 = source.protocol_version == 3 or (source.protocol_version is None and urlsplit(source.url).path.endswith(".json"))
    return (V3Feed if v3 else V2Feed)(source, policy)
