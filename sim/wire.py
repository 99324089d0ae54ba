"""TWS API wire format: length-prefixed frames of NUL-terminated ASCII fields, and field values.

Outgoing values are formatted the way the real TWS formats them (Java `Double.toString` for
doubles, `1.7976931348623157E308` for an unset double, `2147483647` for an unset int, plain
digits for Decimal quantities). Incoming values are read leniently the way the clients write
them (empty string = unset, `Infinite`, `1`/`0` booleans). No sockets here.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bracketgate.sim.model import UNSET_DOUBLE, UNSET_INTEGER

UNSET_DOUBLE_STR = "1.7976931348623157E308"
UNSET_INTEGER_STR = str(UNSET_INTEGER)
UNSET_LONG_STR = "9223372036854775807"

API_PREFIX = b"API\0"
MIN_CLIENT_VERSION = 157     # oldest protocol version the clients offer (and we accept)
MAX_SERVER_VERSION = 178     # newest layout this paper TWS encodes (ib_async 2.1 offers 178)
MAX_FRAME = 16 * 1024 * 1024  # a client frame larger than this is a protocol error


class WireError(Exception):
    """The peer broke the framing or the handshake; the connection must be dropped."""


# ---------------------------------------------------------------- framing


def pack(fields: Sequence[object]) -> bytes:
    """One frame: 4-byte big-endian length, then every field followed by NUL."""
    payload = "".join(f"{f}\0" for f in fields).encode("utf-8", errors="backslashreplace")
    return struct.pack(">I", len(payload)) + payload


def pack_raw(text: str) -> bytes:
    """A frame whose payload is `text` as is (the handshake's `v157..178` carries no NUL)."""
    payload = text.encode()
    return struct.pack(">I", len(payload)) + payload


def split_fields(payload: bytes) -> list[str]:
    """The fields of one frame's payload (the trailing NUL's empty remainder dropped)."""
    fields = payload.decode("utf-8", errors="backslashreplace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


class FrameDecoder:
    """Incremental frame splitter: `feed(bytes)` returns the complete frames' payloads."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 4:
            (size,) = struct.unpack(">I", self._buf[:4])
            if size > self._max:
                raise WireError(f"frame of {size} bytes exceeds {self._max}")
            if len(self._buf) < 4 + size:
                break
            out.append(bytes(self._buf[4:4 + size]))
            del self._buf[:4 + size]
        return out


@dataclass(frozen=True)
class VersionOffer:
    """What the client offered in its handshake: `v157..178 +PACEAPI`."""

    min_version: int
    max_version: int
    options: str = ""

    def negotiate(self, server_max: int = MAX_SERVER_VERSION) -> int:
        """min(server max, client max); WireError if the ranges do not meet."""
        version = min(server_max, self.max_version)
        if version < max(self.min_version, MIN_CLIENT_VERSION):
            raise WireError(
                f"no common version: client v{self.min_version}..{self.max_version}, "
                f"server v{MIN_CLIENT_VERSION}..{server_max}")
        return version


def parse_version_offer(payload: bytes) -> VersionOffer:
    """Parse the first frame after `API\\0`: `v157..178` or `v176`, then optional options."""
    text = payload.decode("ascii", errors="replace").rstrip("\0")
    head, _, options = text.partition(" ")
    if not head.startswith("v"):
        raise WireError(f"bad version offer {text!r}")
    lo_s, sep, hi_s = head[1:].partition("..")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError as e:
        raise WireError(f"bad version offer {text!r}") from e
    return VersionOffer(lo, hi, options.strip())


# ---------------------------------------------------------------- outgoing values


def java_double(v: float) -> str:
    """Java's Double.toString: `0.0`, `100.0`, `2.61`, `1.2E7`, `1.0E-4`, `1.79...E308`."""
    if v >= UNSET_DOUBLE:
        return UNSET_DOUBLE_STR
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if v == 0:
        return "-0.0" if math.copysign(1.0, v) < 0 else "0.0"
    if 1e-3 <= abs(v) < 1e7:
        return repr(float(v))  # shortest round-trip digits, always with a '.'
    # computerized scientific notation with the shortest round-trip digits
    sign, digits, exp = Decimal(repr(float(v))).normalize().as_tuple()
    text = "".join(map(str, digits))
    exponent = len(text) - 1 + int(exp)
    mantissa = text[0] + "." + (text[1:] or "0")
    return f"{'-' if sign else ''}{mantissa}E{exponent}"


def f_double(v: float | None) -> str:
    """A double as TWS sends it; None = unset (`1.7976931348623157E308`)."""
    return UNSET_DOUBLE_STR if v is None else java_double(float(v))


def f_double_or_empty(v: float | None) -> str:
    """A double that TWS leaves empty when unset (whatIf commission, minQty, percentOffset...)."""
    if v is None or v >= UNSET_DOUBLE:
        return ""
    return java_double(float(v))


def f_int(v: int | None) -> str:
    return UNSET_INTEGER_STR if v is None else str(int(v))


def f_bool(v: bool) -> str:
    return "1" if v else "0"


def f_decimal(v: float | None) -> str:
    """A Decimal quantity (position, shares, filled): `100`, `1.5`, `0`; None = empty."""
    if v is None:
        return ""
    fv = float(v)
    if fv.is_integer():
        return str(int(fv))
    return repr(fv)


def f_price_field(v: float | None) -> str:
    """Prices on openOrder: lmtPrice/auxPrice are `0.0` when the order has none."""
    return java_double(0.0 if v is None else float(v))


def f_strike(v: float) -> str:
    """Strike in openOrder/completedOrder/contractDetails: `0`, `100`, `257.5` (no `.0`)."""
    fv = float(v)
    return str(int(fv)) if fv.is_integer() else repr(fv)


def f_multiplier(v: float) -> str:
    """Multiplier as TWS prints it: empty for 1 (stocks), `100`, `50`, `20`."""
    fv = float(v)
    if fv in (0.0, 1.0):
        return ""
    return str(int(fv)) if fv.is_integer() else repr(fv)


def f_money(v: float) -> str:
    """Account values: two decimals, as in `6|2|NetLiquidation|1040992.61|USD|DU…`."""
    return f"{float(v):.2f}"


# ---------------------------------------------------------------- incoming values


class FieldReader:
    """Sequential reader over a client message's fields (after the message id)."""

    def __init__(self, fields: Iterable[str]) -> None:
        self._fields = list(fields)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._fields) - self._pos

    def str(self) -> str:
        if self._pos >= len(self._fields):
            raise WireError(f"message too short: wanted field {self._pos + 1}")
        s = self._fields[self._pos]
        self._pos += 1
        return s

    def opt_str(self, default: str = "") -> str:
        """A field that may be absent at the end of the message."""
        return self.str() if self._pos < len(self._fields) else default

    def int(self, default: int = 0) -> int:
        s = self.str().strip()
        if not s:
            return default
        try:
            return int(s)
        except ValueError:
            try:
                return int(float(s))
            except ValueError as e:
                raise WireError(f"field {self._pos}: {s!r} is not an int") from e

    def opt_int(self) -> int | None:
        """An int where empty (or 2147483647) means unset."""
        s = self.str().strip()
        if not s:
            return None
        v = int(float(s))
        return None if v == UNSET_INTEGER else v

    def float(self, default: float = 0.0) -> float:
        s = self.str().strip()
        if not s:
            return default
        return _parse_float(s, self._pos)

    def opt_float(self) -> float | None:
        """A double where empty (or 1.7976931348623157E308) means unset."""
        s = self.str().strip()
        if not s:
            return None
        v = _parse_float(s, self._pos)
        return None if v >= UNSET_DOUBLE else v

    def bool(self) -> bool:
        s = self.str().strip()
        if not s:
            return False
        if s.lower() in ("true", "false"):
            return s.lower() == "true"
        return bool(int(float(s)))

    def skip(self, n: int = 1) -> None:
        for _ in range(n):
            self.str()


def _parse_float(s: str, pos: int) -> float:
    if s == "Infinite":
        return math.inf
    try:
        return float(s)
    except ValueError as e:
        raise WireError(f"field {pos}: {s!r} is not a number") from e
