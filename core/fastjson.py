"""One JSON encoder built once (json.dumps builds a JSONEncoder, and each call a C encoder:
most of the cost of a small payload). Same output as json.dumps with the same options; no
circular-reference check (what is encoded here is a tree: a cycle ends in RecursionError)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

try:
    from json.encoder import c_make_encoder, encode_basestring_ascii
except ImportError:  # pragma: no cover - a Python without the C accelerator
    c_make_encoder = None


def encoder(default: Callable[[Any], Any], *, separators: tuple[str, str],
            allow_nan: bool) -> Callable[[Any], str]:
    """`json.dumps(obj, default=default, separators=separators, allow_nan=allow_nan)`, faster."""
    item_sep, key_sep = separators
    if c_make_encoder is None:  # pragma: no cover
        return json.JSONEncoder(default=default, separators=separators, allow_nan=allow_nan,
                                check_circular=False).encode
    c_encode = c_make_encoder(None, default, encode_basestring_ascii, None, key_sep, item_sep,
                              False, False, allow_nan)

    def encode(obj: Any) -> str:
        if isinstance(obj, str):   # json.dumps' own special case of a bare string
            return encode_basestring_ascii(obj)
        return "".join(c_encode(obj, 0))

    return encode
