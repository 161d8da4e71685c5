"""NuGet feeds (v3 JSON and v2 OData) read over HTTP under the sandboxes' egress policy.

The restore runs on the node, outside any sandbox, but it fetches URLs a client chose: so every
connection goes to an address checked first (no loopback, private, link-local/metadata, CGNAT,
multicast or reserved ranges, none of this host's own addresses, unless the operator allowed the
network with EGRESS_ALLOW), to the address that was checked (no second DNS answer), redirects are
checked the same way, and every response is capped in size and time: each read waits at most
until the restore's deadline, and every byte counts against the job's download budget.

A feed is hostile until proven otherwise: whatever it answers (a bad URL or port, JSON of the wrong
shape or nested beyond reason) ends as a FeedError that names it, never another exception type.
A source's credentials go only to its own scheme, host and port.
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
from typing import BinaryIO
from urllib.parse import SplitResult, quote, urljoin, urlsplit

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from executors.network import BLOCKED
from executors.nuget.budget import Budget
from executors.nuget.config import Source
from executors.nuget.versions import Version, VersionError

MAX_INDEX_BYTES = 8 << 20  #: a service index or version list; real ones are kilobytes
MAX_REDIRECTS = 5
MAX_V2_PAGES = 20
_BLOCKED_V6 = ("::/127", "::ffff:0:0/96", "64:ff9b::/96", "fc00::/7", "fe80::/10", "ff00::/8")


class FeedError(RuntimeError):
    """A feed could not be read; the message names the feed and the reason."""


class NotFound(FeedError):
    """The feed answered 404: it does not have the package (or version)."""


class Timeout(FeedError):
    """The restore's deadline passed while reading a feed: the whole restore ends, not just this feed."""


@dataclass(frozen=True)
class Policy:
    """Where restores may connect, and how much they may read."""
    allow: tuple[str, ...] = ()  #: networks reachable although private (EGRESS_ALLOW)
    timeout_s: float = 30.0  #: per connection and read
    max_package_bytes: int = 64 << 20
    deadline: float = field(default=float("inf"))  #: time.monotonic() past which nothing is fetched
    budget: Budget = field(default_factory=Budget)  #: the job's, shared by all its feeds


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
        raise FeedError(f"cannot resolve {host[:100]}: {e.strerror}") from None
    except (UnicodeError, ValueError):  # a label too long for IDNA, a NUL in the name
        raise FeedError(f"{host[:100]!r} is not a host name") from None
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
    """A wait's timeout: the per-read one, or what is left of the restore if that is less."""
    left = policy.deadline - time.monotonic()
    if left <= 0:
        raise Timeout("the restore timed out")
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
    """A URL as shown in messages: without user info or query (whatever the URL is like)."""
    try:
        p = urlsplit(url)
        host = p.netloc.rpartition("@")[2]
    except ValueError:
        return "(an invalid URL)"
    return f"{p.scheme}://{host}{p.path}"[:300]


def _parts(url: str) -> tuple[SplitResult, int]:
    """The URL's parts and its port; FeedError for anything but a valid http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port out of range or not a number, a bracketed non-IPv6 host
        raise FeedError(f"{_label(url)}: not a valid URL (its host or port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FeedError(f"{_label(url)}: only http(s) URLs can be fetched")
    return parts, port


def same_origin(given_for: str, url: str) -> bool:
    """Whether credentials given for the URL `given_for` may go with a request to `url`: the same
    scheme, host and port (a redirect elsewhere, or from https to http, goes without them)."""
    try:
        a, b = _parts(given_for), _parts(url)
    except FeedError:
        return False
    return (a[0].scheme, a[0].hostname, a[1]) == (b[0].scheme, b[0].hostname, b[1])


def fetch(url: str, source: Source, policy: Policy, cap: int, out: BinaryIO | None = None) -> bytes:
    """GET `url` with the source's credentials (its own origin only), at most `cap` bytes, into
    `out` if given (then b"" is returned). FeedError, Timeout; BudgetError past the job's budget."""
    for _ in range(MAX_REDIRECTS + 1):
        parts, port = _parts(url)
        headers = {"User-Agent": "dotnet-scripts-restore", "Accept-Encoding": "identity"}
        if source.username is not None and same_origin(source.url, url):
            token = base64.b64encode(f"{source.username}:{source.password or ''}".encode()).decode()
            headers["Authorization"] = "Basic " + token
        conn = None
        try:
            conn = (_PinnedTLS if parts.scheme == "https" else _Pinned)(parts.hostname, port, policy)
            conn.request("GET", parts.path + ("?" + parts.query if parts.query else "") or "/", headers=headers)
            sock = conn.sock  # the response may take it over (and conn.sock become None)
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                try:
                    url = urljoin(url, resp.getheader("Location"))
                except ValueError:
                    raise FeedError(f"{_label(url)}: redirected to an invalid URL") from None
                continue
            if resp.status == 404:
                raise NotFound(f"{_label(url)}: not found (404)")
            if resp.status in (401, 403):
                raise FeedError(f"{_label(url)}: access denied ({resp.status}); check the feed's credentials")
            if resp.status != 200:
                raise FeedError(f"{_label(url)}: HTTP {resp.status}")
            length = resp.getheader("Content-Length") or ""
            if length.isascii() and length.isdigit() and int(length) > cap:
                raise FeedError(f"{_label(url)}: {int(length) >> 20} MiB is more than the {cap >> 20} MiB limit")
            return _read(resp, sock, policy, cap, url, out)
        except (OSError, http.client.HTTPException) as e:
            if time.monotonic() >= policy.deadline:
                raise Timeout("the restore timed out") from None
            raise FeedError(f"{_label(url)}: {type(e).__name__}: {e}"[:300]) from None
        finally:
            if conn is not None:
                conn.close()
    raise FeedError(f"{_label(url)}: too many redirects")


def _read(resp: http.client.HTTPResponse, sock, policy: Policy, cap: int, url: str, out: BinaryIO | None) -> bytes:
    """The body, a chunk at a time: each wait bounded by the restore's deadline (a feed that
    trickles a byte at a time would otherwise get a fresh timeout per byte), each chunk counted."""
    data, total = bytearray(), 0
    while True:
        if sock is not None:
            sock.settimeout(_timeout(policy))
        chunk = resp.read1(1 << 16)
        if not chunk:
            return bytes(data)
        total += len(chunk)
        if total > cap:
            raise FeedError(f"{_label(url)}: more than the {cap >> 20} MiB limit")
        policy.budget.download(len(chunk))
        if out is not None:
            out.write(chunk)
        else:
            data += chunk


class Feed:
    """One package source: which versions of a package it has, and its .nupkg bytes."""

    def __init__(self, source: Source, policy: Policy):
        self.source, self.policy = source, policy
        self.label = f"'{source.key}' ({_label(source.url)})"

    def versions(self, package_id: str) -> list[Version]:
        raise NotImplementedError

    def download(self, package_id: str, version: Version, out: BinaryIO) -> None:
        """Writes the package's .nupkg into `out`."""
        raise NotImplementedError

    def _get(self, url: str, cap: int = MAX_INDEX_BYTES, out: BinaryIO | None = None) -> bytes:
        return fetch(url, self.source, self.policy, cap, out)

    def _json(self, url: str, what: str):
        try:
            return json.loads(self._get(url))
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            raise FeedError(f"{what} is not readable JSON") from None


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
            index = self._json(self.source.url, "its service index")
            resources = index.get("resources") if isinstance(index, dict) else None
            base = next((r["@id"] for r in resources if isinstance(r, dict) and isinstance(r.get("@id"), str)
                         and str(r.get("@type", "")).startswith("PackageBaseAddress/3.0.0")),
                        None) if isinstance(resources, list) else None
            if base is None:
                raise FeedError("not a NuGet v3 service index with a PackageBaseAddress")
            try:
                self.base = urljoin(self.source.url, base).rstrip("/") + "/"
            except ValueError:
                raise FeedError("its PackageBaseAddress is not a valid URL") from None
        return self.base

    def versions(self, package_id: str) -> list[Version]:
        try:
            data = self._json(f"{self._base()}{quote(package_id.lower())}/index.json", f"the version list of {package_id}")
        except NotFound:
            return []
        if not (isinstance(data, dict) and isinstance(data.get("versions"), list)):
            raise FeedError(f"unreadable version list of {package_id}")
        return _versions(data["versions"])

    def download(self, package_id: str, version: Version, out: BinaryIO) -> None:
        pid, ver = quote(package_id.lower()), quote(str(version).lower())
        self._get(f"{self._base()}{pid}/{ver}/{pid}.{ver}.nupkg", self.policy.max_package_bytes, out)


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
                raise FeedError(f"unreadable answer for {package_id}") from None
            for el in root.iter():
                if el.tag.rsplit("}", 1)[-1] == "Version" and el.text:
                    found.append(el.text.strip())
            nxt = next((el.get("href") for el in root if el.tag.rsplit("}", 1)[-1] == "link"
                        and el.get("rel") == "next" and el.get("href")), None)
            if not nxt:
                break
            try:
                url = urljoin(url, nxt)
            except ValueError:
                raise FeedError("its next page is not a valid URL") from None
        return _versions(found)

    def download(self, package_id: str, version: Version, out: BinaryIO) -> None:
        url = urljoin(self.source.url.rstrip("/") + "/", f"package/{quote(package_id)}/{quote(str(version))}")
        self._get(url, self.policy.max_package_bytes, out)


def feed_for(source: Source, policy: Policy) -> Feed:
    """v3 when the config says so or the URL is a service index (…/index.json), else v2 (NuGet's rule).
    FeedError for a source that is no valid http(s) URL."""
    parts, _ = _parts(source.url)
    v3 = source.protocol_version == 3 or (source.protocol_version is None and parts.path.endswith(".json"))
    return (V3Feed if v3 else V2Feed)(source, policy)
