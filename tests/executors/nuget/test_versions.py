"""NuGet versions and ranges (pure)."""

import pytest

from executors.nuget.versions import Version, VersionError, VersionRange

V = Version.parse


def test_order_and_normal_form():
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0",
               "1.0.0.1", "1.2.0", "1.10.0", "2.0.0"]
    assert sorted(map(V, reversed(ordered))) == list(map(V, ordered))
    assert str(V("1.0")) == "1.0.0" and str(V("1.0.0.0")) == "1.0.0" and str(V("1.2.3.4")) == "1.2.3.4"
    assert V("1.0.0+build.5") == V("1.0.0") and str(V("2.0-RC.1")) == "2.0.0-RC.1"
    assert V("1.0.0-RC") == V("1.0.0-rc")


@pytest.mark.parametrize("bad", ["", "x", "1.x", "1..2", "-1", "1.0.0-", "1.2.3.4.5", "01234567890"])
def test_bad_versions(bad):
    with pytest.raises(VersionError):
        V(bad)


AVAILABLE = list(map(V, ["1.0.0", "1.1.0-beta", "1.1.0", "1.5.2", "2.0.0", "13.0.1", "13.0.3"]))


@pytest.mark.parametrize("text, picked", [
    ("1.1.0", "1.1.0"), ("1.2", "1.5.2"),  # a bare version is a minimum: the lowest at or above it
    ("[1.0,2.0)", "1.0.0"), ("(1.0,2.0)", "1.1.0"), ("(,1.5.2]", "1.0.0"), ("[2.0]", "2.0.0"),
    ("13.*", "13.0.3"), ("1.*", "1.5.2"), ("13.0.*", "13.0.3"), ("*", "13.0.3"), (None, "13.0.3"),
    ("1.1.0-beta", "1.1.0-beta"), ("[1.1.0-alpha,1.1.0]", "1.1.0-beta"),
    ("14.0.0", None), ("[3.0,4.0)", None), ("[1.2]", None),
])
def test_ranges_pick(text, picked):
    got = VersionRange.parse(text).pick(AVAILABLE)
    assert (str(got) if got else None) == picked


def test_prereleases_only_when_the_range_names_one():
    assert not VersionRange.parse("1.0").satisfies(V("1.1.0-beta"))
    assert not VersionRange.parse("*").satisfies(V("1.1.0-beta"))


@pytest.mark.parametrize("bad", ["[1.0", "1.0]", "(1.0)", "[2.0,1.0]", "(1.0,1.0)", "1.*.3", "a.*", "1*", "[x,2]"])
def test_bad_ranges(bad):
    with pytest.raises(VersionError):
        VersionRange.parse(bad)
