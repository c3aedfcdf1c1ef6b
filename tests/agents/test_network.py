"""The pod network's pure parts: which routes change, and the packet rules."""

from __future__ import annotations

from gitops.agents.network import (
    Route,
    bridge_name,
    gateway,
    parse_routes,
    ports_without_hairpin,
    render_rules,
    route_changes,
    split_routes,
    tunnel_address,
)


def test_routes_follow_the_other_nodes_and_only_ours_are_removed() -> None:
    wanted = [
        Route("10.244.1.0/24", "10.251.0.11"),
        Route("10.244.2.0/24", "10.251.0.12"),
        Route("10.244.0.0/24", "10.251.0.10"),
    ]
    present = [Route("10.244.1.0/24", "10.251.0.99"), Route("10.244.5.0/24", "10.251.0.15")]
    add, delete, skipped = route_changes(wanted, present, {"10.251.0.10", "127.0.0.1"}, "10.244.0.0/24")
    assert add == [Route("10.244.1.0/24", "10.251.0.11"), Route("10.244.2.0/24", "10.251.0.12")]
    assert delete == [Route("10.244.5.0/24", "10.251.0.15")]  # its node was deleted
    assert skipped == []


def test_a_node_on_this_host_needs_no_route_and_a_subnet_claimed_twice_is_reported() -> None:
    wanted = [
        Route("10.244.1.0/24", "192.0.2.2"),
        Route("10.244.2.0/24", "10.0.0.1"),
        Route("10.244.2.0/24", "10.0.0.2"),
    ]
    add, _, skipped = route_changes(wanted, [], {"192.0.2.2"}, "10.244.0.0/24")
    assert add == [Route("10.244.2.0/24", "10.0.0.1")]
    assert skipped and "10.244.2.0/24" in skipped[0]


def test_routes_are_read_from_ip_route_output() -> None:
    text = "10.244.1.0/24 via 10.251.0.11 dev br0 proto 103 \n10.244.2.5 via 10.251.0.12 dev br0 proto 103\n"
    assert parse_routes(text) == [
        Route("10.244.1.0/24", "10.251.0.11"),
        Route("10.244.2.5/32", "10.251.0.12"),
    ]


def test_pods_are_masqueraded_only_beyond_the_pod_range_and_accepted_both_ways() -> None:
    text = render_rules("10.244.3.0/24", "10.244.0.0/16", prefix="GT")
    nat, filt = text.split("*filter")
    assert "-A GT-PODNET -s 10.244.3.0/24 -d 10.244.0.0/16" in nat and "-j RETURN" in nat
    assert nat.index("RETURN") < nat.index("MASQUERADE")
    assert "-d 10.244.3.0/24" in filt and "-s 10.244.3.0/24" in filt and filt.count("-j ACCEPT") == 2


def test_names_fit_the_kernel_and_the_gateway_is_the_first_address() -> None:
    assert len(bridge_name("a-very-long-node-name-indeed.example.org")) <= 15
    assert bridge_name("a") != bridge_name("b")
    assert gateway("10.244.7.0/24") == "10.244.7.1"


def test_bridge_ports_without_hairpin_are_found_in_ip_details() -> None:
    text = (
        "5: vethaa6@if4: <UP> master gpod1 \\ bridge_slave hairpin off guard off\n"
        "7: vethbb7@if6: <UP> master gpod1 \\ bridge_slave hairpin on guard off\n"
    )
    assert ports_without_hairpin(text) == ["vethaa6"]


def test_nodes_on_a_link_are_routed_directly_and_the_others_through_the_overlay() -> None:
    routes = [
        Route("10.244.1.0/24", "10.251.0.12"),  # on our segment: host-gw
        Route("10.244.2.0/24", "10.252.4.2"),  # behind a router: VXLAN
        Route("10.244.3.0/24", "192.0.2.2"),  # this host: no route at all (route_changes drops it)
    ]
    direct, overlay = split_routes(routes, ["10.251.0.0/24", "10.244.0.0/24"], {"192.0.2.2"}, "10.244.0.0/24")
    assert direct == [Route("10.244.1.0/24", "10.251.0.12"), Route("10.244.3.0/24", "192.0.2.2")]
    assert overlay == [Route("10.244.2.0/24", "10.252.4.2")]
    assert tunnel_address("10.244.2.0/24") == "10.244.2.0"
