"""Message authentication (bus/auth.py): an HMAC-SHA256 over topic, ts, nonce and body, with a
replay window; what each refusal is, and what a broker's redelivery is."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from bracketgate.bus.auth import Authenticator, Refusal, sign, signed_string
from bracketgate.bus.messages import DenialCode as D

KEY = b"alpha-key-0123456789"
OPKEY = b"operator-key-0123456789"
TOPIC = "bg/proposals/alpha"
BODY = json.dumps({"proposal_id": "p-1", "symbol": "AAPL"})


class Clock:
    def __init__(self) -> None:
        self.ms = 1_764_633_600_000.0

    def __call__(self) -> float:
        return self.ms


def auth(clock: Clock, *, keys: dict[str, bytes] | None = None,
         operator: bytes | None = OPKEY) -> Authenticator:
    k = {"alpha": KEY} if keys is None else keys
    return Authenticator(k.get, lambda: operator, window_s=60, now_ms=clock)


def test_a_signed_proposal_opens_to_its_body_and_the_scheme_is_the_documented_one() -> None:
    clock = Clock()
    msg = sign(KEY, TOPIC, BODY, ts=int(clock.ms), nonce="n0nce-0001")
    env = json.loads(msg)
    # docs/AUTH.md: hex HMAC-SHA256 of "topic\nts\nnonce\nbody"
    want = hmac.new(KEY, f"{TOPIC}\n{env['ts']}\nn0nce-0001\n{BODY}".encode(), hashlib.sha256)
    assert env["sig"] == want.hexdigest() and signed_string(TOPIC, env["ts"], "n0nce-0001", BODY)
    assert auth(clock).open_proposal(TOPIC, "alpha", msg) == BODY.encode()


def code(result: bytes | Refusal) -> D | None:
    return result.code if isinstance(result, Refusal) else None


def test_every_way_to_fail_is_typed() -> None:
    clock = Clock()
    a = auth(clock)
    good = sign(KEY, TOPIC, BODY, ts=int(clock.ms))
    assert code(a.open_proposal(TOPIC, "alpha", BODY.encode())) is D.AUTH_REQUIRED
    assert code(a.open_proposal(TOPIC, "alpha", sign(b"x" * 20, TOPIC, BODY))) is D.BAD_SIGNATURE
    # moved to another agent's topic: the topic is signed
    moved = sign(KEY, "bg/proposals/beta", BODY, ts=int(clock.ms))
    assert code(a.open_proposal(TOPIC, "alpha", moved)) is D.BAD_SIGNATURE
    tampered = json.loads(good)
    tampered["body"] = tampered["body"].replace("AAPL", "TSLA")
    assert code(a.open_proposal(TOPIC, "alpha", json.dumps(tampered).encode())) is D.BAD_SIGNATURE
    stale = sign(KEY, TOPIC, BODY, ts=int(clock.ms - 61_000))
    assert code(a.open_proposal(TOPIC, "alpha", stale)) is D.SIGNATURE_REPLAYED
    ahead = sign(KEY, TOPIC, BODY, ts=int(clock.ms + 61_000))
    assert code(a.open_proposal(TOPIC, "alpha", ahead)) is D.SIGNATURE_REPLAYED
    for bad in ({"body": 1, "ts": 1, "nonce": "abcdefgh", "sig": "00"},
                {"body": BODY, "ts": "1", "nonce": "abcdefgh", "sig": "00"},
                {"body": BODY, "ts": 1, "nonce": "short", "sig": "00"}):
        assert code(a.open_proposal(TOPIC, "alpha", json.dumps(bad).encode())) is D.BAD_SIGNATURE
    # an agent without a key: unsigned is fine, signed cannot be verified
    assert a.open_proposal("bg/proposals/gamma", "gamma", BODY.encode()) == BODY.encode()
    assert code(a.open_proposal("bg/proposals/gamma", "gamma", good)) is D.BAD_SIGNATURE


def test_a_redelivery_is_accepted_a_reused_nonce_with_another_body_is_not() -> None:
    clock = Clock()
    a = auth(clock)
    msg = sign(KEY, TOPIC, BODY, ts=int(clock.ms), nonce="nonce-aaaa")
    assert a.open_proposal(TOPIC, "alpha", msg) == BODY.encode()
    assert a.open_proposal(TOPIC, "alpha", msg) == BODY.encode()        # the broker's DUP
    other = sign(KEY, TOPIC, BODY.replace("p-1", "p-2"), ts=int(clock.ms), nonce="nonce-aaaa")
    assert code(a.open_proposal(TOPIC, "alpha", other)) is D.SIGNATURE_REPLAYED
    clock.ms += 121_000                                                  # nonces expire ...
    assert code(a.open_proposal(TOPIC, "alpha", msg)) is D.SIGNATURE_REPLAYED   # ... ts too


def test_control_is_signed_once_an_operator_key_exists_and_applied_once() -> None:
    clock = Clock()
    topic = "bg/control"
    body = json.dumps({"action": "resume", "reason": "ok"})
    a = auth(clock)
    assert code(a.open_control(topic, body.encode())) is D.AUTH_REQUIRED
    assert code(a.open_control(topic, sign(KEY, topic, body, ts=int(clock.ms)))) is D.BAD_SIGNATURE
    msg = sign(OPKEY, topic, body, ts=int(clock.ms))
    assert a.open_control(topic, msg) == body.encode()
    assert code(a.open_control(topic, msg)) is D.SIGNATURE_REPLAYED      # never twice
    assert auth(clock, operator=None).open_control(topic, body.encode()) == body.encode()


@pytest.mark.parametrize("payload", [b"", b"[]", b"{", b'{"sig": 1}', b"\xff\xfe",
                                     b'{"body":"x","ts":1,"nonce":"abcdefgh","sig":"00","x":1}'])
def test_payloads_that_are_not_envelopes_are_unsigned(payload: bytes) -> None:
    clock = Clock()
    assert code(auth(clock).open_proposal(TOPIC, "alpha", payload)) is D.AUTH_REQUIRED
    assert auth(clock, keys={}).open_proposal(TOPIC, "alpha", payload) == payload
