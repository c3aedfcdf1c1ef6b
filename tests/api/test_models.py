"""The agents' request models: fast paths that must agree with the slow checks they skip."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gitops.api.models import PodStatusModel

_OCTETS = st.one_of(
    st.integers(0, 255).map(str),
    st.integers(0, 999).map(str),
    st.integers(0, 255).map(lambda n: f"0{n}"),  # a leading zero: refused
    st.text("0123456789", max_size=4),
    st.sampled_from(["", "-1", "+1", " 1", "1 ", "\u0663", "0x1"]),  # an Arabic-Indic digit
)
_ADDRESSES = st.one_of(
    st.lists(_OCTETS, min_size=1, max_size=5).map(".".join),
    st.text(max_size=20),
    st.ip_addresses(v=4).map(str),
)


def _expected(value: str) -> str | None:
    """What `ipaddress` makes of `value`: its canonical text, or None when it refuses it."""
    if value == "":
        return ""
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


@given(_ADDRESSES)
def test_a_pod_address_is_accepted_exactly_when_ipaddress_accepts_it(value: str) -> None:
    expected = _expected(value)
    if expected is None:
        with pytest.raises(ValidationError, match="pod_ip"):
            PodStatusModel.model_validate({"pod": "default/web-1", "phase": "Running", "pod_ip": value})
    else:
        status = PodStatusModel.model_validate({"pod": "default/web-1", "phase": "Running", "pod_ip": value})
        assert status.pod_ip == expected


_NEAR = ["10.0.0.01", "256.1.1.1", "1.2.3", "1.2.3.4.5", "1.2.3.4\n", "\u0661.2.3.4"]


@pytest.mark.parametrize("value", _NEAR)
def test_near_addresses_are_refused_naming_the_field(value: str) -> None:
    with pytest.raises(ValidationError) as error:
        PodStatusModel.model_validate({"pod": "default/web-1", "phase": "Running", "pod_ip": value})
    assert error.value.errors()[0]["loc"] == ("pod_ip",)
    assert "expected an IPv4 address" in str(error.value)


def test_statuses_do_not_share_their_default_lists() -> None:
    one = PodStatusModel.model_validate_json('{"pod": "default/a", "phase": "Running"}')
    two = PodStatusModel.model_validate_json('{"pod": "default/b", "phase": "Running"}')
    one.host_ports.append((80, "TCP", 8080))
    assert two.host_ports == [] and one.host_ports is not two.host_ports
    assert one.containers is not two.containers
