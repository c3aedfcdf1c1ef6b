"""Service types as Kubernetes has them: what each allows, and node ports unique across Services."""

from __future__ import annotations

import textwrap

from .helpers import errors, validate, validate_one, warnings

IGNORED = "field is not acted on by gitops and is ignored"


def service(name: str, spec: str) -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n"
        + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
        + "\n"
    )


def test_every_service_type_with_its_fields_is_valid() -> None:
    text = "---\n".join(
        [
            service("web", "type: ClusterIP\nselector: {app: web}\nports: [{port: 80}]"),
            service(
                "np",
                """
                type: NodePort
                selector: {app: web}
                externalTrafficPolicy: Local
                internalTrafficPolicy: Local
                sessionAffinity: ClientIP
                sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
                ports: [{name: http, port: 80, nodePort: 30080}, {name: dns, port: 53, protocol: UDP}]
                """,
            ),
            service("lb", "type: LoadBalancer\nselector: {app: web}\nports: [{port: 8443, targetPort: 443}]"),
            service("db", "type: ExternalName\nexternalName: db.example.com."),
            service("peers", "clusterIP: None\nselector: {app: web}\npublishNotReadyAddresses: true"),
        ]
    )
    result = validate_one(text)
    assert errors(result) == []
    assert warnings(result) == []


def test_a_headless_or_external_name_service_may_have_no_ports_but_no_other() -> None:
    assert validate_one(service("peers", "clusterIP: None\nselector: {app: web}")).ok
    assert validate_one(service("peers", "clusterIP: None\nports: []")).ok
    assert validate_one(service("db", "type: ExternalName\nexternalName: db.example.com")).ok
    result = validate_one(service("web", "type: NodePort\nselector: {app: web}"))
    assert errors(result) == [
        "apps/web.yaml:5:3: Service default/web: spec.ports: required field is missing (only a headless "
        "Service, clusterIP: None, or an ExternalName Service may have no ports)"
    ]
    result = validate_one(service("web", "selector: {app: web}\nports: []"))
    assert errors(result) == [
        "apps/web.yaml:6:10: Service default/web: spec.ports: expected at least 1 item(s), got 0 (only a "
        "headless Service, clusterIP: None, or an ExternalName Service may have no ports)"
    ]


def test_an_external_name_service_needs_a_dns_name_and_no_cluster_ip() -> None:
    result = validate_one(service("db", "type: ExternalName\nclusterIP: 10.0.0.5\nselector: {app: db}"))
    assert errors(result) == [
        "apps/web.yaml:5:3: Service default/db: spec.externalName: required field is missing for type "
        "ExternalName",
        "apps/web.yaml:6:14: Service default/db: spec.clusterIP: may not be set for type ExternalName "
        "(it has no cluster IP)",
    ]
    assert warnings(result) == [
        f"apps/web.yaml:7:3: Service default/db: spec.selector: {IGNORED} for type ExternalName (warning)"
    ]
    result = validate_one(service("db", "type: ExternalName\nexternalName: DB_host.example.com"))
    assert errors(result) == [
        "apps/web.yaml:6:17: Service default/db: spec.externalName: expected a DNS name: a DNS-1123 "
        "subdomain (at most 253 lowercase letters, digits, '-' or '.', starting and ending with a letter "
        'or digit), got "DB_host.example.com"'
    ]


def test_node_ports_are_for_node_port_and_load_balancer_services_only() -> None:
    result = validate_one(service("web", "selector: {app: web}\nports: [{port: 80, nodePort: 30080}]"))
    assert errors(result) == [
        "apps/web.yaml:6:32: Service default/web: spec.ports[0].nodePort: may be used only when type is "
        "NodePort or LoadBalancer, not ClusterIP"
    ]
    result = validate_one(service("web", "type: NodePort\nports: [{port: 80, nodePort: 8080}]"))
    assert errors(result) == [
        "apps/web.yaml:6:32: Service default/web: spec.ports[0].nodePort: expected integer between 30000 "
        "and 32767, got 8080"
    ]


def test_a_node_port_service_cannot_be_headless() -> None:
    result = validate_one(service("web", "type: LoadBalancer\nclusterIP: None\nports: [{port: 80}]"))
    assert errors(result) == [
        'apps/web.yaml:6:14: Service default/web: spec.clusterIP: may not be "None" for type LoadBalancer '
        "(a headless Service has no node ports)"
    ]


def test_external_traffic_policy_needs_an_externally_reachable_service() -> None:
    result = validate_one(service("web", "externalTrafficPolicy: Local\nports: [{port: 80}]"))
    assert errors(result) == [
        "apps/web.yaml:5:26: Service default/web: spec.externalTrafficPolicy: may be set only for type "
        "NodePort or LoadBalancer (externally reachable), not ClusterIP"
    ]
    result = validate_one(
        service("web", "type: NodePort\nexternalTrafficPolicy: Global\nports: [{port: 80}]")
    )
    assert errors(result) == [
        'apps/web.yaml:6:26: Service default/web: spec.externalTrafficPolicy: expected one of "Cluster", '
        '"Local", got "Global"'
    ]


def test_session_affinity_config_goes_with_client_ip_affinity_and_a_timeout_in_range() -> None:
    result = validate_one(
        service("web", "sessionAffinityConfig: {clientIP: {timeoutSeconds: 90000}}\nports: [{port: 80}]")
    )
    assert errors(result) == [
        "apps/web.yaml:5:26: Service default/web: spec.sessionAffinityConfig: must not be set when "
        'sessionAffinity is "None" (only with "ClientIP")',
        "apps/web.yaml:5:54: Service default/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: "
        "expected integer between 1 and 86400, got 90000",
    ]


def test_fields_gitops_does_not_act_on_are_warnings() -> None:
    text = service(
        "lb",
        """
        type: LoadBalancer
        ipFamilies: [IPv4]
        ipFamilyPolicy: SingleStack
        loadBalancerIP: 192.0.2.50
        allocateLoadBalancerNodePorts: false
        ports: [{port: 80}]
        """,
    )
    result = validate_one(text)
    assert result.ok
    assert [w.field for w in result.warnings] == [
        "spec.ipFamilies",
        "spec.ipFamilyPolicy",
        "spec.loadBalancerIP",
        "spec.allocateLoadBalancerNodePorts",
    ]


def test_two_services_asking_for_one_node_port_is_an_error_naming_the_first() -> None:
    first = service("web", "type: NodePort\nports: [{port: 80, nodePort: 30080}]")
    second = service("api", "type: NodePort\nports: [{name: a, port: 80, nodePort: 30080}]")
    udp = service("dns", "type: NodePort\nports: [{port: 53, protocol: UDP, nodePort: 30080}]")
    result = validate(("apps/web.yaml", first), ("apps/zz-api.yaml", second), ("apps/dns.yaml", udp))
    assert errors(result) == [
        "apps/zz-api.yaml:6:41: Service default/api: spec.ports[0].nodePort: nodePort 30080/TCP is already "
        "used by Service default/web (apps/web.yaml:6:32)"
    ]


def test_a_load_balancer_port_takes_that_port_on_every_node() -> None:
    lb = service("lb", "type: LoadBalancer\nports: [{port: 30080}]")
    np = service("web", "type: NodePort\nports: [{port: 80, nodePort: 30080}]")
    other_lb = service("lb2", "type: LoadBalancer\nports: [{port: 30080, nodePort: 30081}]")
    result = validate(("a/lb.yaml", lb), ("b/web.yaml", np), ("c/lb2.yaml", other_lb))
    assert errors(result) == [
        "b/web.yaml:6:32: Service default/web: spec.ports[0].nodePort: nodePort 30080/TCP is already used "
        "by Service default/lb (a/lb.yaml:6:18) as its LoadBalancer port",
        "c/lb2.yaml:6:18: Service default/lb2: spec.ports[0].port: LoadBalancer port 30080/TCP is already "
        "used by Service default/lb (a/lb.yaml:6:18)",
    ]


def test_one_service_cannot_lead_one_node_port_to_two_of_its_ports() -> None:
    text = service(
        "web",
        "type: NodePort\nports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]",
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:6:79: Service default/web: spec.ports[1].nodePort: nodePort 30080/TCP is also the "
        "nodePort of spec.ports[0].nodePort; a port on the nodes leads to one Service port"
    ]
    same_port = service("lb", "type: LoadBalancer\nports: [{port: 30080, nodePort: 30080}]")
    assert validate_one(same_port).ok  # one Service port, reached both ways


def test_dns_policy_none_needs_a_nameserver() -> None:
    deployment = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      dnsPolicy: "None"
      containers: [{name: web, image: nginx}]
"""
    result = validate_one(deployment)
    assert errors(result) == [
        "apps/web.yaml:9:18: Deployment default/web: spec.template.spec.dnsPolicy: must provide at least 1 "
        'DNS nameserver when dnsPolicy is "None" (in spec.template.spec.dnsConfig.nameservers)'
    ]
    searches_only = deployment.replace(
        'dnsPolicy: "None"', 'dnsPolicy: "None"\n      dnsConfig: {searches: [x.local]}'
    )
    assert [d.field for d in validate_one(searches_only).errors] == [
        "spec.template.spec.dnsConfig.nameservers"
    ]
    served = deployment.replace(
        'dnsPolicy: "None"', 'dnsPolicy: "None"\n      dnsConfig: {nameservers: [1.1.1.1]}'
    )
    assert validate_one(served).ok
