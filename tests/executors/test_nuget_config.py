"""Safe parsing of the client's NuGet.Config (pure)."""

import pytest

from executors.nuget_config import MAX_BYTES, REDACTED, NuGetConfigError, parse, redact

FULL = """<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="public" value="https://public-feed.example/v3/index.json" protocolVersion="3" />
    <clear />
    <add key="feed" value="https://feed.example/v3/index.json" />
    <add key="old" value="http://legacy.example/nuget" protocolVersion="2" />
    <add key="gone" value="https://gone.example/v3/index.json" />
    <add key="off" value="https://off.example/v3/index.json" />
    <remove key="gone" />
  </packageSources>
  <disabledPackageSources><add key="off" value="true" /></disabledPackageSources>
  <packageSourceCredentials>
    <feed><add key="Username" value="me" /><add key="ClearTextPassword" value="s3cret" /></feed>
  </packageSourceCredentials>
</configuration>"""


def test_sources_with_clear_remove_disabled_and_credentials():
    sources = parse(FULL)
    assert [(s.key, s.url, s.protocol_version) for s in sources] == [
        ("feed", "https://feed.example/v3/index.json", None), ("old", "http://legacy.example/nuget", 2)]
    assert (sources[0].username, sources[0].password) == ("me", "s3cret")
    assert "s3cret" not in repr(sources)


def test_credentials_are_redacted_for_display():
    shown = redact(FULL)
    assert "s3cret" not in shown and REDACTED in shown and "feed.example" in shown
    plain = '<configuration><packageSources><add key="a" value="https://a.example/" /></packageSources></configuration>'
    assert redact(plain) == plain


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
                  '<configuration>&lol2;</configuration>')
EXTERNAL = ('<?xml version="1.0"?><!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            '<configuration><packageSources><add key="a" value="&x;"/></packageSources></configuration>')


@pytest.mark.parametrize("xml, message", [
    (BILLION_LAUGHS, "DTD"),
    (EXTERNAL, "DTD"),
    ("<configuration>" + " " * MAX_BYTES + "</configuration>", "limit"),
    ("<configuration><packageSources>", "not well-formed"),
    ("<settings/>", "root element"),
    ('<configuration><packageSources><add key="f" value="file:///etc/passwd"/></packageSources></configuration>', "http(s)"),
    ('<configuration><packageSources><add key="f" value="ftp://x.example/"/></packageSources></configuration>', "http(s)"),
    ('<configuration><packageSources><add key="f" value="https://x.example/" protocolVersion="9"/></packageSources></configuration>', "protocolVersion"),
])
def test_hostile_or_unusable_configs_are_refused_with_a_reason(xml, message):
    with pytest.raises(NuGetConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(xml)


def test_ten_megabytes_are_refused_before_parsing():
    with pytest.raises(NuGetConfigError, match="limit"):
        parse("<configuration>" + "<a/>" * (10 << 18) + "</configuration>")
