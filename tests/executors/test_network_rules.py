"""The egress rules (pure): allowed networks first, then rejects, never a silent drop."""

from executors.network import BLOCKED, forward_rules, input_rules


def test_established_first_then_allowed_then_blocklist_then_return():
    rules = forward_rules(("203.0.113.7", "10.5.0.0/16"))
    assert rules[0][-1] == "RETURN" and "ESTABLISHED,RELATED" in rules[0]
    assert rules[1] == ["-d", "203.0.113.7/32", "-j", "RETURN"]
    assert rules[2] == ["-d", "10.5.0.0/16", "-j", "RETURN"]
    rejected = {r[1] for r in rules[3:-1]}
    assert rejected == set(BLOCKED)
    assert all("REJECT" in r for r in rules[3:-1])
    assert rules[-1] == ["-j", "RETURN"]


def test_blocklist_covers_metadata_loopback_and_private_ranges():
    import ipaddress

    nets = [ipaddress.ip_network(n) for n in BLOCKED]
    for addr in ("169.254.169.254", "127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "100.64.0.1"):
        assert any(ipaddress.ip_address(addr) in n for n in nets), addr
    assert not any(ipaddress.ip_address("198.51.100.2") in n for n in nets)


def test_nothing_from_a_sandbox_reaches_the_host():
    rules = input_rules()
    assert "ESTABLISHED,RELATED" in rules[0]
    assert [r[-3:] for r in rules[1:]] == [["REJECT", "--reject-with", "tcp-reset"],
                                          ["REJECT", "--reject-with", "icmp-admin-prohibited"]]
