"""Frozen values survive the trip through JSON unchanged (store and agent API use it)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gitops.codec import decode_as, encode
from gitops.model import (
    ContainerPort,
    Endpoint,
    MountedFile,
    NodeName,
    ObjectKey,
    Pod,
    PodId,
    PodName,
    PodSpec,
    ServiceEndpoints,
    ServicePort,
    Toleration,
)

text = st.text(max_size=12)
specs = st.builds(
    PodSpec,
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
