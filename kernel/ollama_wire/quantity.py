"""Kubernetes resource quantities (``24Gi``, ``80G``, ``8e9``, ``1024``) as whole numbers (pure).

Shared by the balancer's pod discovery and the operator (pod VRAM annotations,
``defaultVramBytes``), so both read ``ollamafleet.io/vram-bytes`` the same way.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["parse_quantity"]

_SUFFIX = {
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
    "m": Decimal(1) / 1000,
}
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[kMGTPEm])?)$"
)


def parse_quantity(value: str | int) -> int:
    """A quantity as a whole number, rounded up as Kubernetes does for byte quantities.

    Accepts a string or an int (YAML may give either).  Raises ``ValueError``.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        number = Decimal(value)
    else:
        text = str(value)
        match = _QUANTITY.match(text.strip())
        if match is None:
            raise ValueError(f"not a quantity: {text!r}")
        digits, exponent, suffix = match.groups()
        try:
            number = Decimal(digits + (exponent or "")) * _SUFFIX[suffix or ""]
        except InvalidOperation as e:  # pragma: no cover - the regex admits only numbers
            raise ValueError(f"not a quantity: {text!r}") from e
    if number < 0:
        raise ValueError(f"negative quantity: {value!r}")
    return int(number.to_integral_value(rounding="ROUND_CEILING"))
