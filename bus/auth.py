"""Message authentication in the daemon: an HMAC over what an agent (or the operator) sent, so a
shared or misconfigured broker cannot be used to trade or to halt / resume (docs/AUTH.md).

A signed message is a JSON object with exactly these four keys:

    {"body": "<the proposal or control JSON, as a string>",
     "ts": 1764633600123,                  # the signer's clock, integer milliseconds since 1970
     "nonce": "4f1c…",                     # 8..64 characters [A-Za-z0-9_-], fresh per message
     "sig": "<hex HMAC-SHA256>"}           # lowercase hex of HMAC(key, signed string)

    signed string = topic + "\\n" + str(ts) + "\\n" + nonce + "\\n" + body    (UTF-8)

The topic (`{prefix}/proposals/{agent_id}` or `{prefix}/control`) is part of what is signed, so
a message cannot be moved to another agent's topic. Keys come from the agents file
(config/agents.py): each agent's own, the operator's for control. A message is accepted when
the signature verifies, `ts` is within `window_s` (60 s) of the daemon's clock and its nonce was
not seen within the window (nonces are remembered for twice the window) — except that the very
same signed proposal again (a broker's redelivery) is accepted: the gate answers a repeated
proposal_id with its first decision. An agent with a key must
sign; without one, its messages go unsigned (a signed one is refused: nothing to verify with).
Control is signed once an operator key is configured.

`Authenticator.open()` returns the body's bytes (what the bridge parses next, as if unsigned)
or a `Refusal` with a DenialCode: AUTH_REQUIRED, BAD_SIGNATURE, SIGNATURE_REPLAYED.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bracketgate.bus.messages import DENIAL_MESSAGES, DenialCode

ENVELOPE_KEYS = frozenset({"body", "ts", "nonce", "sig"})
NONCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
DEFAULT_WINDOW_S = 60.0   # as the limits file's max_proposal_age_s: older is refused anyway
NONCES_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class Refusal:
    code: DenialCode
    detail: str

    @property
    def message(self) -> str:
        return f"{DENIAL_MESSAGES[self.code]}: {self.detail}"


def signed_string(topic: str, ts: int, nonce: str, body: str) -> bytes:
    return f"{topic}\n{ts}\n{nonce}\n{body}".encode("utf-8")


def sign(key: bytes, topic: str, body: str, *, ts: int | None = None,
         nonce: str | None = None) -> bytes:
    """The signed message for `body` on `topic` (what the operator CLI and an agent publish)."""
    import secrets

    ts = int(time.time() * 1000) if ts is None else ts
    nonce = nonce or secrets.token_hex(16)
    sig = hmac.new(key, signed_string(topic, ts, nonce, body), hashlib.sha256).hexdigest()
    return json.dumps({"body": body, "ts": ts, "nonce": nonce, "sig": sig},
                      separators=(",", ":")).encode("utf-8")


def envelope(payload: bytes) -> dict | None:
    """The parsed envelope when `payload` is one (a JSON object with exactly its four keys)."""
    if not payload.lstrip().startswith(b"{") or b'"sig"' not in payload:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and set(data) == ENVELOPE_KEYS:
        return data
    return None


class Authenticator:
    """Verifies signed messages. `keys(agent_id)` and `operator_key()` read the current agents
    file (reloaded on SIGHUP); `now_ms()` is the clock (tests inject one)."""

    def __init__(self, keys: Callable[[str], bytes | None], operator_key: Callable[[], bytes | None],
                 *, window_s: float = DEFAULT_WINDOW_S,
                 now_ms: Callable[[], float] = lambda: time.time() * 1000) -> None:
        self._keys = keys
        self._operator_key = operator_key
        self.window_ms = window_s * 1000
        self._now_ms = now_ms
        # (signer, nonce) -> (expiry, signature): the same signature means the same body
        self._nonces: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()

    def open_proposal(self, topic: str, agent_id: str, payload: bytes) -> bytes | Refusal:
        """A redelivery of the very same signed proposal (same nonce, same body: the broker's
        DUP, a replay) is accepted: the gate answers it with the id's first decision. The same
        nonce with another body is a replay attempt."""
        return self._open(topic, agent_id, self._keys(agent_id), payload, who=f"agent {agent_id}",
                          same_again_ok=True)

    def open_command(self, topic: str, agent_id: str, payload: bytes) -> bytes | Refusal:
        """A bracket lifecycle command ({prefix}/commands/{agent_id}): signed as a proposal is;
        a redelivery of the very same message is accepted (the desk answers its command_id
        once)."""
        return self._open(topic, agent_id, self._keys(agent_id), payload, who=f"agent {agent_id}",
                          same_again_ok=True)

    def open_control(self, topic: str, payload: bytes) -> bytes | Refusal:
        """A control command is applied once: its nonce seen again is refused."""
        return self._open(topic, "*operator*", self._operator_key(), payload, who="the operator",
                          same_again_ok=False)

    def _open(self, topic: str, signer: str, key: bytes | None, payload: bytes,
              who: str, *, same_again_ok: bool) -> bytes | Refusal:
        env = envelope(payload)
        if env is None:
            if key is None:
                return payload   # unsigned, and nobody requires a signature here
            return Refusal(DenialCode.AUTH_REQUIRED, f"{who} has a key: sign with it")
        if key is None:
            return Refusal(DenialCode.BAD_SIGNATURE, f"{who} has no key to verify with")
        body, ts, nonce, sig = env["body"], env["ts"], env["nonce"], env["sig"]
        if (not isinstance(body, str) or not isinstance(ts, int) or isinstance(ts, bool)
                or not isinstance(nonce, str) or not NONCE.fullmatch(nonce)
                or not isinstance(sig, str)):
            return Refusal(DenialCode.BAD_SIGNATURE, "malformed envelope (body str, ts int ms, "
                                                     "nonce 8-64 [A-Za-z0-9_-], sig hex)")
        try:
            want = hmac.new(key, signed_string(topic, ts, nonce, body), hashlib.sha256).hexdigest()
        except UnicodeEncodeError:
            return Refusal(DenialCode.BAD_SIGNATURE, "body is not valid UTF-8")
        if not hmac.compare_digest(want, sig.lower()):
            return Refusal(DenialCode.BAD_SIGNATURE, f"does not verify with {who}'s key")
        now = self._now_ms()
        if abs(now - ts) > self.window_ms:
            return Refusal(DenialCode.SIGNATURE_REPLAYED,
                           f"signed {abs(now - ts) / 1000:.1f} s from the daemon's clock "
                           f"(window {self.window_ms / 1000:g} s)")
        self._expire(now)
        seen = (signer, nonce)
        earlier = self._nonces.get(seen)
        if earlier is not None:
            if same_again_ok and earlier[1] == sig.lower():
                return body.encode("utf-8")   # the same message again (a DUP): idempotent
            return Refusal(DenialCode.SIGNATURE_REPLAYED, "this nonce was used before")
        self._nonces[seen] = (now + 2 * self.window_ms, sig.lower())
        if len(self._nonces) > NONCES_MAX:   # a flood of valid signatures: forget the oldest
            self._nonces.popitem(last=False)
        return body.encode("utf-8")

    def _expire(self, now: float) -> None:
        nonces = self._nonces
        while nonces:
            first = next(iter(nonces))
            if nonces[first][0] > now:
                return
            del nonces[first]
