"""Kept endpoints are every Service's endpoints as `all_endpoints` computes them, whatever
moved in between (pods, their labels and states, nodes, the Services themselves), and a
change computes again only the Services it touches."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.model import Container, Manifest, Node, NodeName, ObjectKey, Pod, PodName, PodSpec, pod_changes
from gitops.planner import all_endpoints
from gitops.planner.services import KeptEndpoints
from tests.planner.factories import manifest

SPEC = PodSpec(containers=(Container(name="main", image="web:1"),))
APPS = ("a", "b", "c")
NAMESPACES = ("default", "other")


def pod(number: int, app: str, namespace: str = "default", **fields: object) -> Pod:
    defaults: dict[str, object] = {
        "node": NodeName("n1"),
        "phase": "Running",
        "ready": True,
        "pod_ip": f"10.244.0.{number + 2}",
    }
    return Pod(
        namespace,
        PodName(f"p{number}"),
        ObjectKey("Deployment", namespace, app),
        "h",
        SPEC,
        labels=(("app", app), ("tier", "web")),
        **{**defaults, **fields},  # type: ignore[arg-type]
    )


def service(name: str, namespace: str = "default", *, port: int = 80, **selector: str) -> Manifest:
    spec = {"selector": selector, "ports": [{"name": "http", "port": port, "targetPort": 8080}]}
    return manifest("Service", name, namespace, spec=spec)


def vips_of(services: list[Manifest]) -> dict[ObjectKey, str]:
    return {s.key: f"10.96.0.{i + 1}" for i, s in enumerate(services)}


NODES = [Node(NodeName("n1"), "192.0.2.1"), Node(NodeName("n2"), "192.0.2.2")]


def test_a_pod_that_moves_computes_only_its_service_again() -> None:
    services = [service(app, app=app) for app in APPS]
    pods = [pod(i, APPS[i % 3]) for i in range(9)]
    kept = KeptEndpoints()
    vips = vips_of(services)
    kept.update(services, vips, pods, NODES, None, changed=None)
    assert kept.recomputed == {s.key for s in services}
    after = [*pods]
    after[4] = dataclasses.replace(pods[4], ready=False)  # app "b"
    changed, _, _ = pod_changes(pods, after)
    result = kept.update(services, vips, after, NODES, None, changed=changed)
    assert kept.recomputed == {ObjectKey("Service", "default", "b")}
    assert result == all_endpoints(services, vips, after, NODES)
    assert kept.update(services, vips, after, NODES, None, changed=[]) == result
    assert kept.recomputed == set()


def test_a_node_going_not_ready_computes_only_the_services_of_its_pods() -> None:
    services = [service(app, app=app) for app in APPS]
    pods = [pod(0, "a", node=NodeName("n2")), pod(1, "b"), pod(2, "c")]
    kept = KeptEndpoints()
    vips = vips_of(services)
    kept.update(services, vips, pods, NODES, None, changed=None)
    nodes = [NODES[0], dataclasses.replace(NODES[1], ready=False)]
    result = kept.update(services, vips, pods, nodes, None, changed=[])
    assert kept.recomputed == {ObjectKey("Service", "default", "a")}
    assert result == all_endpoints(services, vips, pods, nodes)
    assert result[0].endpoints[0][1] == ()


steps = st.lists(
    st.one_of(
        # a pod: (number, app, namespace, node, phase, ready, ip); None for the app removes it
        st.tuples(
            st.just("pod"),
            st.integers(0, 11),
            st.sampled_from([*APPS, None]),
            st.sampled_from(NAMESPACES),
            st.sampled_from(["n1", "n2", "n3"]),
            st.sampled_from(["Running", "Pending"]),
            st.booleans(),
            st.sampled_from(["", "10.244.1.9"]),
        ),
        # a node: (name, ready, address)
        st.tuples(st.just("node"), st.sampled_from(["n1", "n2"]), st.booleans(), st.sampled_from(["a", "b"])),
        # a Service: (name, namespace, what it selects; None removes it, port)
        st.tuples(
            st.just("service"),
            st.sampled_from(["s1", "s2", "s3"]),
            st.sampled_from(NAMESPACES),
            st.sampled_from(
                [None, {}, {"app": "a"}, {"app": "b"}, {"tier": "web"}, {"app": "c", "tier": "web"}]
            ),
            st.sampled_from([80, 81]),
        ),
        # the VIPs (None: of every Service, else all but that one, not allocated yet)
        st.tuples(st.just("vips"), st.sampled_from([None, "s1", "s2"])),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_kept_endpoints_are_all_endpoints_after_any_changes(moves: list[tuple[object, ...]]) -> None:
    pods: dict[str, Pod] = {f"default/p{i}": pod(i, APPS[i % 3]) for i in range(6)}
    nodes = {n.name: n for n in NODES}
    services: dict[ObjectKey, Manifest] = {
        s.key: s for s in (service("s1", app="a"), service("s2", tier="web"))
    }
    unallocated: str | None = None
    kept = KeptEndpoints()
    last: list[Pod] = []
    first = True
    for move in [("start",), *moves]:
        match move:
            case ("pod", int(number), app, str(namespace), str(node), phase, bool(ready), str(ip)):
                pods = {k: p for k, p in pods.items() if p.name != f"p{number}"}
                if isinstance(app, str):
                    moved = pod(
                        number, app, namespace, node=NodeName(node), phase=phase, ready=ready, pod_ip=ip
                    )
                    pods[moved.id] = moved
            case ("node", str(name), bool(ready), str(address)):
                nodes[NodeName(name)] = Node(NodeName(name), f"192.0.2.{ord(address)}", ready=ready)
            case ("service", str(name), str(namespace), selector, int(port)):
                key = ObjectKey("Service", namespace, name)
                if isinstance(selector, dict):
                    services[key] = service(name, namespace, port=port, **selector)
                else:
                    services.pop(key, None)
            case ("vips", skipped):
                unallocated = skipped if isinstance(skipped, str) else None
        listed = [pods[k] for k in sorted(pods)]
        desired = list(services.values())
        vips = {
            k: v for k, v in vips_of(sorted(desired, key=lambda m: m.key)).items() if k.name != unallocated
        }
        changed, _, swapped = pod_changes(last, listed)
        got = kept.update(
            desired, vips, listed, list(nodes.values()), None, changed=None if first else changed + swapped
        )
        assert got == all_endpoints(desired, vips, listed, list(nodes.values()))
        last, first = listed, False
