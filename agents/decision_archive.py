"""The governor's archived decisions as compact bytes: JSON text deflated against a shared
dictionary of what every decision and proposal repeats (field names, denial messages).

A rejected decision with five reasons is ~900 characters of JSON, its proposal ~340: archived
as text they cost ~1.5 KB each in the DecisionMemory (agents/risk.py); deflated with this
preset dictionary, ~110 and ~30 bytes. `unpack(pack(text)) == text` exactly (deflate is
lossless), so a repeat answered from the archive is the decision first published, byte for byte
(tests/unit/test_decision_archive.py). Packing costs ~9 us a text, unpacking ~1 us; the
dictionary is built once per process from bus/messages.py (nothing packed here is stored on
disk, so it may change between versions).
"""

from __future__ import annotations

import zlib

from bracketgate.bus.messages import DENIAL_MESSAGES

_LEVEL, _WBITS = 6, -15   # raw deflate: no header or checksum to store per entry


def _dictionary() -> bytes:
    """What decisions and proposals repeat; the most frequent last (deflate reaches back from
    the end of the dictionary most cheaply)."""
    reasons = "".join(f'{{"code":"{code.value}","message":"{msg}","limit":'
                      for code, msg in sorted(DENIAL_MESSAGES.items(), key=lambda kv: kv[0].value))
    proposal = ('{"proposal_id":"","agent_id":"","symbol":"","sec_type":"STK","exchange":"SMART",'
                '"currency":"USD","side":"BUY","quantity":,"order_type":"LMT","limit_price":,'
                '"take_profit":,"stop_loss":,"tif":"DAY","expiry":null,"strike":null,"right":null,'
                '"cancel_entry_after_s":null,"created_at":null,"legs":null}')
    decision = ('"order_ids":{"entry":,"take_profit":,"stop_loss":},"worst_case":{"loss":,'
                '"bound":"stop"},"value":,"field":null,"bound":null},'
                '{"proposal_id":"","agent_id":"","verdict":"approved","reasons":[],'
                '"verdict":"rejected","reasons":[{"code":"'
                '"order_ids":null,"trading_state":"ACTIVE","ts":"","worst_case":null}')
    return (reasons + proposal + decision).encode()


_ZDICT = _dictionary()
_PACKER = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, 8, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
_UNPACKER = zlib.decompressobj(_WBITS, _ZDICT)


def pack(text: str) -> bytes:
    """JSON text (as pydantic's model_dump_json writes it) as compact bytes (UTF-8 inside)."""
    c = _PACKER.copy()
    return c.compress(text.encode()) + c.flush()


def unpack(data: bytes) -> str:
    """The text `pack` was given, exactly."""
    d = _UNPACKER.copy()
    return (d.decompress(data) + d.flush()).decode()
