"""Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1e3`) as whole numbers.

CPU comes out in millicores and memory in bytes, rounded up the way Kubernetes rounds
(`Quantity.MilliValue()` / `Quantity.Value()`), so a request is never under-counted.
Arithmetic is exact (fractions), never floating point.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["QuantityError", "parse_cpu", "parse_memory"]

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?[0-9]+))?$"
)
_SUFFIXES: dict[str, Fraction] = {
    "": Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_MAX_TEXT = 64
_MAX_EXPONENT = 30  # 1e30 is already far beyond any machine; bigger exponents only cost time
_MAX_RESULT = 2**63 - 1

CPU_HELP = "expected cores like 2, 0.5 or 1.5, or millicores like 100m"
MEMORY_HELP = (
    "expected bytes like 12345, 1e3 or 128Mi "
    "(suffixes Ki, Mi, Gi, Ti, Pi, Ei are powers of 1024; k, M, G, T, P, E powers of 1000)"
)


class QuantityError(ValueError):
    """A value that is not a valid, non-negative Kubernetes quantity."""


def _amount(value: object, what: str, help_text: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise QuantityError(f"invalid {what} quantity {value!r}: {help_text}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"invalid {what} quantity {value!r}: {help_text}")
        amount = Fraction(str(value))
    elif isinstance(value, int):
        amount = Fraction(value)
    else:
        text = value.strip()
        match = _QUANTITY.match(text) if len(text) <= _MAX_TEXT else None
        if match is None:
            raise QuantityError(f'invalid {what} quantity "{value}": {help_text}')
        amount = Fraction(match["number"])
        if match["exponent"] is not None:
            exponent = int(match["exponent"])
            if abs(exponent) > _MAX_EXPONENT:
                raise QuantityError(f'{what} quantity "{value}" is out of range: {help_text}')
            amount *= Fraction(10) ** exponent
        else:
            amount *= _SUFFIXES[match["suffix"] or ""]
    if amount < 0:
        raise QuantityError(f"{what} quantity {_show(value)} must not be negative: {help_text}")
    return amount


def _show(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _whole(amount: Fraction, value: object, what: str, help_text: str) -> int:
    result = math.ceil(amount)
    if result > _MAX_RESULT:
        raise QuantityError(f"{what} quantity {_show(value)} is out of range: {help_text}")
    return result


def parse_cpu(value: object) -> int:
    """Millicores in a CPU quantity: `"100m"` -> 100, `"0.5"` -> 500, `2` -> 2000."""
    return _whole(_amount(value, "CPU", CPU_HELP) * 1000, value, "CPU", CPU_HELP)


def parse_memory(value: object) -> int:
    """Bytes in a memory quantity: `"128Mi"` -> 134217728, `"1G"` -> 10**9, `"1e3"` -> 1000."""
    return _whole(_amount(value, "memory", MEMORY_HELP), value, "memory", MEMORY_HELP)
