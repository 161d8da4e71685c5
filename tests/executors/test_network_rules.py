"""The egress rules (pure): allowed networks first, then rejects, never a silent drop."""

from executors.network import (
    BLOCKED, BRIDGE_PREFIX, CHAIN_FORWARD, CHAIN_INPUT, forward_rules, input_rules, marker, restore_input,
)


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


def test_the_rules_change_in_one_transaction_that_flushes_only_our_chains():
    text = restore_input(("203.0.113.0/24",), "")
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert lines[1:3] == [f":{CHAIN_FORWARD} - [0:0]", f":{CHAIN_INPUT} - [0:0]"]  # declared: flushed atomically
    assert f"-I FORWARD 1 -i {BRIDGE_PREFIX}+ -j {CHAIN_FORWARD}" in lines  # not DOCKER-USER: Docker re-hooks that
    assert f"-I INPUT 1 -i {BRIDGE_PREFIX}+ -j {CHAIN_INPUT}" in lines
    assert not any(line.startswith((":INPUT", ":DOCKER-USER", ":FORWARD", "-F", "-X")) for line in lines)
    assert lines.index(marker(("203.0.113.0/24",))) < lines.index(f"-A {CHAIN_FORWARD} -d 203.0.113.0/24 -j RETURN")


def test_rules_already_installed_are_left_alone_and_a_changed_set_is_replaced():
    hooks = [f"-A FORWARD -i {BRIDGE_PREFIX}+ -j {CHAIN_FORWARD}", f"-A INPUT -i {BRIDGE_PREFIX}+ -j {CHAIN_INPUT}"]
    installed = "\n".join([*hooks, "-A FORWARD -j DOCKER-USER", marker(())])
    assert restore_input((), installed) is None
    changed = restore_input(("10.5.0.0/16",), installed)
    assert changed is not None and "-I FORWARD" not in changed  # hooked already: only the chains change
    assert marker(("10.5.0.0/16",)) != marker(())


def test_a_hook_that_docker_pushed_down_moves_back_to_the_top_in_the_same_transaction():
    # Docker puts a new network's rules (and its own jumps) above ours: they would accept its traffic
    installed = "\n".join(["-A FORWARD -j DOCKER-USER", "-A FORWARD -i dse-abc ! -o dse-abc -j ACCEPT",
                           f"-A FORWARD -i {BRIDGE_PREFIX}+ -j {CHAIN_FORWARD}",
                           f"-A INPUT -i {BRIDGE_PREFIX}+ -j {CHAIN_INPUT}", marker(())])
    lines = restore_input((), installed).splitlines()
    assert lines == ["*filter", f"-D FORWARD -i {BRIDGE_PREFIX}+ -j {CHAIN_FORWARD}",
                     f"-I FORWARD 1 -i {BRIDGE_PREFIX}+ -j {CHAIN_FORWARD}", "COMMIT"]
