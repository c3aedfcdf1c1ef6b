"""Frozen values survive the trip through JSON unchanged (store and agent API use it)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gitops.codec import decode_as, encode
from gitops.model import (
    Container,
    ContainerPort,
    Endpoint,
    MountedFile,
    NodeName,
    ObjectKey,
    Pod,
    PodId,
    PodName,
    PodSpec,
    SecurityContext,
    ServiceEndpoints,
    ServicePort,
    Toleration,
    Volume,
    VolumeMount,
)

text = st.text(max_size=12)
containers = st.builds(
    Container,
    name=text,
    image=text,
    command=st.lists(text, max_size=3).map(tuple),
    env=st.lists(st.tuples(text, text), max_size=3).map(tuple),
    ports=st.lists(
        st.builds(ContainerPort, st.integers(1, 65535), st.sampled_from(["TCP", "UDP"]), text), max_size=2
    ).map(tuple),
    files=st.lists(
        st.builds(MountedFile, text, st.binary(max_size=20), st.integers(0, 0o777)), max_size=2
    ).map(tuple),
    cpu_limit_milli=st.none() | st.integers(0, 10**6),
    mounts=st.lists(st.builds(VolumeMount, text, text, st.booleans(), text), max_size=2).map(tuple),
    field_env=st.lists(st.tuples(text, text), max_size=2).map(tuple),
    security=st.builds(
        SecurityContext,
        run_as_user=st.none() | st.integers(0, 65535),
        capabilities_add=st.lists(text, max_size=2).map(tuple),
        read_only_root_filesystem=st.booleans(),
    ),
)
specs = st.builds(
    PodSpec,
    containers=st.lists(containers, min_size=1, max_size=3).map(tuple),
    init_containers=st.lists(containers, max_size=2).map(tuple),
    volumes=st.lists(
        st.builds(Volume, text, st.sampled_from(["", "Memory"]), st.integers(0, 2**40)), max_size=2
    ).map(tuple),
    tolerations=st.lists(
        st.builds(Toleration, text, st.sampled_from(["Equal", "Exists"]), text, text), max_size=2
    ).map(tuple),
)


@given(specs, st.none() | text.map(NodeName), st.none() | st.integers(-255, 255))
def test_pods_round_trip_through_json(spec: PodSpec, node: NodeName | None, exit_code: int | None) -> None:
    pod = Pod(
        "ns",
        PodName("p"),
        ObjectKey("Deployment", "ns", "d"),
        "h",
        spec,
        labels=(("a", "b"),),
        node=node,
        exit_code=exit_code,
    )
    assert decode_as(Pod, json.loads(json.dumps(encode(pod)))) == pod


def test_a_pod_spec_stored_by_release_0_1_reads_as_a_pod_of_one_container() -> None:
    """Release 0.1 kept its single container's fields on the spec itself."""
    stored = {
        "image": "web:1",
        "command": ["serve"],
        "env": [["A", "b"]],
        "ports": [{"container_port": 80, "protocol": "TCP", "name": "http"}],
        "files": [],
        "cpu_request_milli": 100,
        "container_name": "web",
        "restart_policy": "OnFailure",
        "node_selector": [["disk", "ssd"]],
    }
    spec = decode_as(PodSpec, stored)
    (container,) = spec.containers
    assert (container.name, container.image, container.command, container.env) == (
        "web",
        "web:1",
        ("serve",),
        (("A", "b"),),
    )
    assert container.ports == (ContainerPort(80, "TCP", "http"),)
    assert (spec.restart_policy, spec.node_selector, spec.cpu_request_milli) == (
        "OnFailure",
        (("disk", "ssd"),),
        100,
    )


def test_service_endpoints_round_trip_through_json() -> None:
    port = ServicePort(80, "http", "TCP", "http")
    svc = ServiceEndpoints(
        "ns",
        "web",
        "10.243.0.2",
        (port,),
        ((port, (Endpoint(PodId("ns/p"), NodeName("n"), "172.17.0.2", 8080, "192.0.2.1", 3000),)),),
    )
    assert decode_as(ServiceEndpoints, json.loads(json.dumps(encode(svc)))) == svc
