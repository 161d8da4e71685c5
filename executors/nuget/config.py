"""The job's NuGet.Config: untrusted XML, parsed safely into the feeds a restore may use.

No DTDs, no entities (billion laughs, external entities), a size cap, only http(s) sources.
`<clear/>`, `<add>`, `<remove>`, `disabledPackageSources` and `packageSourceCredentials` are
understood; credentials are kept for the restore and never shown (see `redact`), nor are
passwords or tokens a URL carries in its user info or query string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, ParseError, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

MAX_BYTES = 64 << 10  #: a NuGet.Config is a few hundred bytes; anything near this is abuse
SECRET_KEYS = {"password", "cleartextpassword"}  #: packageSourceCredentials values never shown
SECRET_WORDS = ("password", "token", "apikey", "secret")  #: any <add> whose key has one (http_proxy.password)
REDACTED = "REDACTED"
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def redact_url(url: str) -> str:
    """The URL with its user info and every query value replaced (a token can be either); pure
    string work, so that no URL, however malformed, escapes it."""
    url = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", url, count=1)
    head, q, rest = url.partition("?")
    if not q:
        return url
    query, hash_, fragment = rest.partition("#")
    shown = "&".join(f"{k}={REDACTED}" if eq else REDACTED if k else ""
                     for k, eq, _ in (pair.partition("=") for pair in query.split("&")))
    return f"{head}?{shown}{hash_}{fragment}"


@dataclass(frozen=True)
class Source:
    key: str
    url: str
    protocol_version: int | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # credentials stay out of logs and tracebacks, the URL's own too
        return f"Source(key={self.key!r}, url={redact_url(self.url)!r})"


class NuGetConfigError(ValueError):
    """The client's NuGet.Config is unusable; the message says why (a 400 for the client)."""


def _parse(xml: str) -> Element:
    size = len(xml.encode())
    if size > MAX_BYTES:
        raise NuGetConfigError(f"nugetConfigXml is {size} bytes; the limit is {MAX_BYTES}")
    try:
        root = fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise NuGetConfigError("nugetConfigXml must not contain a DTD or entity declarations") from None
    except ParseError as e:
        line, column = e.position
        raise NuGetConfigError(f"nugetConfigXml is not well-formed XML (line {line}, column {column})") from None
    if root.tag != "configuration":
        raise NuGetConfigError(f"nugetConfigXml: the root element must be <configuration>, not <{root.tag}>")
    return root


def parse(xml: str) -> list[Source]:
    """The enabled package sources, in order, with their credentials. NuGetConfigError if unusable."""
    root = _parse(xml)
    sources: dict[str, dict] = {}
    for section in root.findall("packageSources"):
        for el in section:
            key = el.get("key", "")
            if el.tag == "clear":
                sources.clear()
            elif el.tag == "add":
                url = el.get("value", "")
                try:
                    parts = urlsplit(url)
                    parts.port  # ValueError: out of range, or not a number
                except ValueError:
                    parts = None
                if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                    raise NuGetConfigError(f"package source {key!r} must be an http(s) URL with a valid host "
                                           f"and port, not {redact_url(url)[:100]!r}")
                version = el.get("protocolVersion")
                if version is not None and version not in ("2", "3"):
                    raise NuGetConfigError(f"package source {key!r}: protocolVersion must be 2 or 3")
                sources[key] = {"key": key, "url": url, "protocol_version": int(version) if version else None}
            elif el.tag == "remove":
                sources.pop(key, None)
    for section in root.findall("disabledPackageSources"):
        for el in section.findall("add"):
            if el.get("value", "").lower() == "true":
                sources.pop(el.get("key", ""), None)
    for section in root.findall("packageSourceCredentials"):
        for cred in section:
            source = sources.get(cred.tag) or sources.get(cred.tag.replace("_x0020_", " "))
            if source is None:
                continue
            for el in cred.findall("add"):
                name = el.get("key", "").lower()
                if name == "username":
                    source["username"] = el.get("value")
                elif name in SECRET_KEYS:
                    source["password"] = el.get("value")
    return [Source(**s) for s in sources.values()]


def redact(xml: str) -> str:
    """The same configuration with credential values replaced, for showing it back to clients:
    packageSourceCredentials' passwords, apikeys, any setting named like a secret, and the user
    info and query values of every URL (`https://user:token@host/?sig=...`)."""
    root = _parse(xml)
    changed = False
    secret_sections = {id(el) for el in root.findall("apikeys")}
    for section in root:
        for el in section.iter():
            for attr, value in list(el.attrib.items()):
                key = el.get("key", "").lower()
                if attr == "value" and (key in SECRET_KEYS or any(w in key for w in SECRET_WORDS)
                                        or id(section) in secret_sections):
                    shown = REDACTED
                else:
                    shown = redact_url(value) if "://" in value else value
                if shown != value:
                    el.set(attr, shown)
                    changed = True
    return tostring(root, encoding="unicode") if changed else xml
