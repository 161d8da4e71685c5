"""The job's NuGet.Config: untrusted XML, parsed safely into the feeds a restore may use.

No DTDs, no entities (billion laughs, external entities), a size cap, only http(s) sources.
`<clear/>`, `<add>`, `<remove>`, `disabledPackageSources` and `packageSourceCredentials` are
understood; credentials are kept for the restore and never shown (see `redact`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, ParseError, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

MAX_BYTES = 64 << 10  #: a NuGet.Config is a few hundred bytes; anything near this is abuse
SECRET_KEYS = {"password", "cleartextpassword"}  #: packageSourceCredentials values never shown
REDACTED = "REDACTED"


@dataclass(frozen=True)
class Source:
    key: str
    url: str
    protocol_version: int | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # credentials stay out of logs and tracebacks
        return f"Source(key={self.key!r}, url={self.url!r})"


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
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise NuGetConfigError(f"package source {key!r} must be an http(s) URL, not {url[:100]!r}")
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
    """The same configuration with credential values replaced, for showing it back to clients."""
    root = _parse(xml)
    changed = False
    for section in root.findall("packageSourceCredentials"):
        for cred in section:
            for el in cred.findall("add"):
                if el.get("key", "").lower() in SECRET_KEYS:
                    el.set("value", REDACTED)
                    changed = True
    return tostring(root, encoding="unicode") if changed else xml
