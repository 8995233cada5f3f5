"""Sizes as users write them ('8GiB', '6GB', '500M', '75%'), for every setting that is an amount of bytes.

Standard library only, below both `slp.settings` (which checks such settings) and `slp.engine.budget` (which
turns the memory budget into bytes), so neither imports the other for it.
"""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


class SizeError(ValueError):
    """A size that cannot be read (one line for the user, naming the setting)."""


def parse_size(value: object, total: int, what: str) -> int:
    """Bytes from '8GiB', '6GB', '500M', a plain number of bytes, or '75%' of `total`. `what` names the
    setting in the error."""
    text = str(value).strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            raise SizeError(f"{what} {value!r}: expected a share such as '75%'") from None
        if not 0 < share <= 100:
            raise SizeError(f"{what} {value!r}: a share must be above 0% and at most 100%")
        return int(total * share / 100)
    match = _SIZE_RE.match(text)
    if not match:
        raise SizeError(f"{what} {value!r}: expected bytes, a size such as '8GiB', or a share such as '75%'")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _UNITS[unit])
