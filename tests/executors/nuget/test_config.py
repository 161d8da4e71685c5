"""Safe parsing of the client's NuGet.Config (pure)."""

import pytest

from executors.nuget.config import MAX_BYTES, REDACTED, NuGetConfigError, Source, parse, redact, redact_url

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


TOKENS = """<configuration>
  <packageSources>
    <add key="a" value="https://me:pat-in-userinfo@feed.example/v3/index.json" />
    <add key="b" value="https://feed.example/v3/index.json?api-key=key-in-query&amp;sig=sig-in-query&amp;bare-token" />
    <add key="c" value="https://token-as-user@feed.example/nuget" />
  </packageSources>
  <apikeys><add key="https://u:key-in-apikeys-url@feed.example/" value="encrypted-api-key" /></apikeys>
  <config><add key="http_proxy.password" value="proxy-password" /><add key="http_proxy" value="http://proxy.example:3128" /></config>
</configuration>"""


def test_tokens_in_urls_and_other_secrets_are_redacted_too():
    shown = redact(TOKENS)
    for secret in ("pat-in-userinfo", "key-in-query", "sig-in-query", "bare-token", "token-as-user",
                   "key-in-apikeys-url", "encrypted-api-key", "proxy-password"):
        assert secret not in shown
    assert "https://REDACTED@feed.example/v3/index.json" in shown
    assert "?api-key=REDACTED&amp;sig=REDACTED&amp;REDACTED" in shown
    assert "http://proxy.example:3128" in shown  # nothing secret: shown as it is
    assert [s.url for s in parse(TOKENS)][0] == "https://me:pat-in-userinfo@feed.example/v3/index.json"  # the restore's


@pytest.mark.parametrize("url, shown", [
    ("https://u:p@h.example:8443/x?a=1&b#f", "https://REDACTED@h.example:8443/x?a=REDACTED&REDACTED#f"),
    ("https://h.example/x?mail=a@b.example", "https://h.example/x?mail=REDACTED"),
    ("https://h.example/x", "https://h.example/x"),
    ("http://[broken/x?t=1", "http://[broken/x?t=REDACTED"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_no_repr_shows_a_secret():
    source = Source("a", "https://me:pat@feed.example/v3/index.json?sig=s1g", username="u", password="pw")
    assert not any(secret in repr(source) for secret in ("pat", "s1g", "pw"))
    assert "feed.example" in repr(source)


@pytest.mark.parametrize("url", ["https://feed.example:99999/v3/index.json", "https://feed.example:port/",
                                 "https://[feed.example/v3/index.json"])
def test_a_source_with_a_bad_port_or_host_is_refused(url):
    with pytest.raises(NuGetConfigError, match="must be an http"):
        parse(f'<configuration><packageSources><add key="f" value="{url}"/></packageSources></configuration>')


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
