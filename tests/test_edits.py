"""A list sent as edits of one the receiver holds (`gitops.edits`): applied to the list it
was made for, an edit script gives the new list exactly; one that does not fit is refused,
not applied."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitops.codec import encode
from gitops.edits import EditMismatch, edited, edited_service, script, service_edits
from gitops.model import Endpoint, NodeName, PodAddress, PodId, ServiceEndpoints, ServicePort

items = st.lists(st.integers(0, 30), max_size=40)


def _sent(values: list[int]) -> list[dict[str, int]]:
    return [{"v": v} for v in values]


@given(items, items)
def test_edits_applied_to_the_list_they_were_made_for_give_the_new_one(
    old: list[int], new: list[int]
) -> None:
    edits = script(old, new, _sent(new))
    assert edited(_sent(old), edits) == _sent(new)
    assert all(isinstance(part, (list, dict)) for part in edits)


def test_what_the_old_list_has_goes_as_runs_of_it() -> None:
    old = list(range(100))
    new = [*range(40), 1000, *range(41, 100)]  # one item replaced
    assert script(old, new, _sent(new)) == [[0, 40], {"v": 1000}, [41, 100]]
    assert script(old, old[::-1][:2], _sent(old[::-1][:2])) == [[99, 100], [98, 99]]
    assert script(old, [], []) == []


@pytest.mark.parametrize("edits", [[[0, 4]], [[2, 1]], [[-1, 1]], [[0, 1, 2]], [[0, "1"]], {"v": 1}])
def test_edits_that_do_not_fit_the_held_list_are_refused(edits: Any) -> None:
    with pytest.raises(EditMismatch):
        edited(_sent([1, 2, 3]), edits)


HTTP = ServicePort(80, 8080, name="http")
METRICS = ServicePort(9090, 9090, name="metrics")


def _service(
    pods: range, ports: tuple[ServicePort, ...] = (HTTP, METRICS), vip: str = "10.96.0.10"
) -> ServiceEndpoints:
    def endpoint(i: int, port: ServicePort) -> Endpoint:
        return Endpoint(
            PodId(f"default/web-{i}"),
            NodeName(f"n{i % 7}"),
            f"10.128.0.{i}",
            int(port.target_port),
            "192.0.2.1",
            0,
        )

    return ServiceEndpoints(
        "default",
        "web",
        vip,
        ports,
        tuple((port, tuple(endpoint(i, port) for i in pods)) for port in ports),
        addresses=tuple(PodAddress(PodId(f"default/web-{i}"), f"10.128.0.{i}") for i in pods),
    )


def _sent_whole(service: ServiceEndpoints) -> tuple[dict[str, Any], bytes]:
    value = encode(service)
    return value, json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (range(100), range(101)),  # a pod more
        (range(100), range(1, 100)),  # a pod less
        (range(50, 100), range(0, 60)),  # many in, many out
    ],
)
def test_a_service_as_edits_of_the_one_held_is_that_service(before: range, after: range) -> None:
    old, new = _service(before), _service(after, vip="10.96.0.11")
    held = json.loads(_sent_whole(old)[1])
    value, whole = _sent_whole(new)
    text = service_edits(old, new, value, whole)
    entry = json.loads(text)
    assert "edits" in entry and "endpoints" not in entry and "addresses" not in entry
    assert len(text) < len(whole)
    # Of its other fields, only those that changed go: the VIP here, not the ports.
    assert entry["namespace"] == "default" and entry["name"] == "web" and entry["vip"] == "10.96.0.11"
    assert "ports" not in entry and "type" not in entry
    service = edited_service(held, entry)
    assert service == json.loads(whole) and list(service) == list(held)  # its fields in their order


def test_a_service_whose_ports_changed_goes_whole() -> None:
    old = _service(range(10))
    for ports in ((HTTP,), (METRICS, HTTP)):  # a port fewer; the same number, others
        new = _service(range(10), ports=ports)
        assert service_edits(old, new, *_sent_whole(new)) == _sent_whole(new)[1]


def test_service_edits_that_do_not_fit_the_one_held_are_refused() -> None:
    old, new = _service(range(10)), _service(range(11))
    entry = json.loads(service_edits(old, new, *_sent_whole(new)))
    fewer = json.loads(_sent_whole(_service(range(5)))[1])  # another Service than the edits were made for
    with pytest.raises(EditMismatch):
        edited_service(fewer, entry)
    one_port = json.loads(_sent_whole(_service(range(10), ports=(HTTP,)))[1])
    with pytest.raises(EditMismatch):
        edited_service(one_port, entry)
