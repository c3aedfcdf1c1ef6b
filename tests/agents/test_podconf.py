"""A pod is told about the cluster as kubelet tells it: resolv.conf by dnsPolicy, service variables."""

from __future__ import annotations

from gitops.agents.podconf import HostResolv, parse_resolv_conf, resolv_conf, service_env
from gitops.model import ServiceEndpoints, ServicePort
from tests.specs import pod_spec

HOST = HostResolv(("127.0.0.53", "192.0.2.53"), ("corp.example",), (("edns0", ""),))


def conf(**spec: object) -> str:
    return resolv_conf(
        pod_spec(image="x", **spec),  # type: ignore[arg-type]
        "shop",
        cluster_dns="10.244.3.1",
        domain="cluster.local",
        host=HOST,
    )


def test_cluster_first_asks_the_cluster_dns_with_kubelets_search_path_and_ndots_5() -> None:
    assert conf() == (
        "nameserver 10.244.3.1\n"
        "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n"
        "options ndots:5\n"
    )


def test_default_gives_the_nodes_resolvers_that_a_pod_can_reach() -> None:
    assert conf(dns_policy="Default") == "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"
    only_stub = HostResolv(("127.0.0.53",))
    text = resolv_conf(
        pod_spec(image="x", dns_policy="Default"),
        "shop",
        cluster_dns="10.244.3.1",
        domain="c.l",
        host=only_stub,
    )
    assert text == "nameserver 10.244.3.1\n"  # the cluster DNS forwards to the stub


def test_none_is_exactly_dns_config_and_dns_config_adds_to_the_others() -> None:
    assert (
        conf(
            dns_policy="None",
            dns_nameservers=("1.2.3.4",),
            dns_searches=("a.example",),
            dns_options=(("ndots", "2"),),
        )
        == "nameserver 1.2.3.4\nsearch a.example\noptions ndots:2\n"
    )
    text = conf(
        dns_nameservers=("10.244.3.1", "1.2.3.4"),
        dns_searches=("x.example",),
        dns_options=(("ndots", "1"), ("rotate", "")),
    )
    assert text.splitlines() == [
        "nameserver 10.244.3.1",
        "nameserver 1.2.3.4",
        "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example x.example",
        "options ndots:1 rotate",
    ]


def test_the_hosts_resolv_conf_is_read_as_glibc_reads_it() -> None:
    parsed = parse_resolv_conf(
        "# c\nnameserver 10.0.0.2\ndomain a.example\nsearch b.example c.example ; x\noptions ndots:2 rotate\n"
    )
    assert parsed == HostResolv(("10.0.0.2",), ("b.example", "c.example"), (("ndots", "2"), ("rotate", "")))


def svc(name: str, vip: str, *ports: ServicePort, namespace: str = "shop", **kw: object) -> ServiceEndpoints:
    return ServiceEndpoints(namespace, name, vip, ports, **kw)  # type: ignore[arg-type]


def test_service_variables_are_kubelets_for_services_of_the_pods_namespace_with_a_virtual_ip() -> None:
    services = [
        svc(
            "redis-cart", "10.243.0.7", ServicePort(6379, 6379, name="tls-redis"), ServicePort(53, 53, "UDP")
        ),
        svc("elsewhere", "10.243.0.8", ServicePort(80, 80), namespace="other"),
        svc("peers", "", ServicePort(80, 80), headless=True),
        svc("db", "", (), type="ExternalName", external_name="db.example"),
    ]
    env = dict(service_env(services, pod_spec(image="x"), "shop"))
    assert env == {
        "REDIS_CART_SERVICE_HOST": "10.243.0.7",
        "REDIS_CART_SERVICE_PORT": "6379",
        "REDIS_CART_SERVICE_PORT_TLS_REDIS": "6379",
        "REDIS_CART_PORT": "tcp://10.243.0.7:6379",
        "REDIS_CART_PORT_6379_TCP": "tcp://10.243.0.7:6379",
        "REDIS_CART_PORT_6379_TCP_PROTO": "tcp",
        "REDIS_CART_PORT_6379_TCP_PORT": "6379",
        "REDIS_CART_PORT_6379_TCP_ADDR": "10.243.0.7",
        "REDIS_CART_PORT_53_UDP": "udp://10.243.0.7:53",
        "REDIS_CART_PORT_53_UDP_PROTO": "udp",
        "REDIS_CART_PORT_53_UDP_PORT": "53",
        "REDIS_CART_PORT_53_UDP_ADDR": "10.243.0.7",
    }
    assert service_env(services, pod_spec(image="x", enable_service_links=False), "shop") == []
