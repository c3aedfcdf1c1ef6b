"""CPU and memory quantities parse to whole millicores and bytes, or say what is valid."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitops.schemas.quantity import QuantityError, parse_cpu, parse_memory


@pytest.mark.parametrize(
    ("value", "millicores"),
    [
        ("100m", 100),
        ("0.5", 500),
        (2, 2000),
        ("1.5", 1500),
        (0.25, 250),
        ("1", 1000),
        ("0", 0),
        ("250m", 250),
    ],
)
def test_cpu_quantities_become_millicores(value: object, millicores: int) -> None:
    assert parse_cpu(value) == millicores


def test_fractional_millicores_round_up_like_kubernetes() -> None:
    assert parse_cpu("0.0001") == 1


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("500M", 500 * 10**6),
        ("1e3", 1000),
        ("12345", 12345),
        ("64Ki", 65536),
        ("1k", 1000),
        (1024, 1024),
        ("0.5Gi", 2**29),
        ("1E3", 1000),
    ],
)
def test_memory_quantities_become_bytes(value: object, size: int) -> None:
    assert parse_memory(value) == size


def test_an_unknown_cpu_suffix_is_refused_saying_what_is_valid() -> None:
    with pytest.raises(QuantityError) as caught:
        parse_cpu("100x")
    assert str(caught.value) == (
        'invalid CPU quantity "100x": expected cores like 2, 0.5 or 1.5, or millicores like 100m'
    )


@pytest.mark.parametrize("value", ["12XB", "", "Mi", "1.2.3", "--1", "1 Gi", "0x10"])
def test_malformed_memory_quantities_are_refused(value: str) -> None:
    with pytest.raises(QuantityError, match="invalid memory quantity"):
        parse_memory(value)


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}, float("nan"), float("inf")])
def test_values_that_are_not_numbers_or_strings_are_refused(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_cpu(value)


def test_negative_quantities_are_refused() -> None:
    with pytest.raises(QuantityError, match=r'memory quantity "-1Gi" must not be negative'):
        parse_memory("-1Gi")


def test_huge_exponents_are_refused_quickly_instead_of_computed() -> None:
    with pytest.raises(QuantityError, match="out of range"):
        parse_memory("1e999999999")
    with pytest.raises(QuantityError, match="out of range"):
        parse_cpu("9Ei")


@given(st.integers(min_value=0, max_value=10**6))
def test_millicore_strings_round_trip(millicores: int) -> None:
    assert parse_cpu(f"{millicores}m") == millicores


@given(st.integers(min_value=0, max_value=2**40))
def test_mebibytes_are_binary_multiples(count: int) -> None:
    assert parse_memory(f"{count}Mi") == count * 2**20
