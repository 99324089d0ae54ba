"""Two accounts, one broker (docs/DEPLOY.md): two paper TWS processes (accounts DU1111111 and
DU2222222), two daemons with their own MQTT prefix, journal, IB client id and MQTT client id, on
ONE mosquitto, agents on both. No crosstalk: each prefix's proposals are decided by its own
daemon only, orders land at its own paper TWS only, status and portfolio topics carry only
their own account, a halt on one leaves the other trading, and the journals hold only their own
proposals. A sniffer subscribed to `#` sees every message on the broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bracketgate.adapters.journal import read_events
from tests.fixtures.daemon import MqttProbe, run_cli
from tests.fixtures.two_daemons import Side, TwoAccounts

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

PRICE = {"a": 230.0, "b": 240.0}   # AAPL at each paper TWS: different, to tell them apart


def resting(pid: str, px: float) -> dict[str, Any]:
    """A bracket whose entry rests 1.00 under the market (approved, nothing fills)."""
    e = round(px - 1.0, 2)
    return {"proposal_id": pid, "symbol": "AAPL", "side": "BUY", "quantity": 1,
            "order_type": "LMT", "limit_price": e, "take_profit": round(e + 4, 2),
            "stop_loss": round(e - 2, 2)}


def market(pid: str, px: float) -> dict[str, Any]:
    return {"proposal_id": pid, "symbol": "AAPL", "side": "BUY", "quantity": 1,
            "order_type": "MKT", "take_profit": round(px + 4, 2), "stop_loss": round(px - 3, 2)}


class Sniffer:
    """Every message on the broker (`#`), as (topic, payload)."""

    def __init__(self, url: str) -> None:
        port = int(url.rsplit(":", 1)[1])
        self.client = aiomqtt.Client("127.0.0.1", port, identifier="sniffer")
        self.seen: list[tuple[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sniffer:
        await self.client.__aenter__()
        await self.client.subscribe("#", qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for m in self.client.messages:
            raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            self.seen.append((str(m.topic), payload))

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)


async def decide(probe: MqttProbe, agent: str, proposal: dict[str, Any]) -> dict[str, Any]:
    await probe.propose(agent, proposal)
    return await probe.decision(agent, proposal["proposal_id"], timeout=30)


def refs(state: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in state["orders"]:
        out[o["orderRef"]] = out.get(o["orderRef"], 0) + 1
    return out


async def test_two_daemons_one_broker_no_crosstalk(mosquitto, tmp_path: Path) -> None:
    async with Sniffer(mosquitto.url) as sniffer, TwoAccounts(mosquitto.url, tmp_path) as two:
        a, b = two.sides
        for s in two.sides:
            await s.tws.set_price("AAPL", PRICE[s.name])
        async with MqttProbe(mosquitto.url, a.prefix) as pa, MqttProbe(mosquitto.url, b.prefix) as pb:
            probes = {"a": pa, "b": pb}
            for s in two.sides:
                await probes[s.name].wait_topic("status", lambda m: m.get("state") == "online", 30)
                await probes[s.name].wait_topic(
                    "portfolio", lambda m: m.get("connection") == "ready" and m.get("reconciled"), 30)

            # the same agent id AND the same proposal_id on both prefixes: two independent
            # gates, two brackets, one at each account
            sent = {"a": ["a-1", "a-2", "same-1"], "b": ["b-1", "same-1"]}
            results = await asyncio.gather(
                decide(pa, "alpha", resting("a-1", PRICE["a"])),
                decide(pa, "shared", resting("same-1", PRICE["a"])),
                decide(pb, "beta", resting("b-1", PRICE["b"])),
                decide(pb, "shared", resting("same-1", PRICE["b"])))
            # the MKT entry once A has AAPL's quote (a MKT proposal racing the contract's very
            # first one may find the quote subscribed but still empty: QUOTE_UNAVAILABLE)
            results.append(await decide(pa, "alpha", market("a-2", PRICE["a"])))
            assert [r["verdict"] for r in results] == ["approved"] * 5, \
                [(r["proposal_id"], r["reasons"]) for r in results if r["verdict"] != "approved"]

            # ---- orders at their own paper TWS only, under their own account
            state = {s.name: await s.tws.state() for s in two.sides}
            assert refs(state["a"]) == {"a-1": 3, "a-2": 3, "same-1": 3}, refs(state["a"])
            assert refs(state["b"]) == {"b-1": 3, "same-1": 3}, refs(state["b"])
            for s in two.sides:
                assert {o["account"] for o in state[s.name]["orders"]} == {s.account}
            assert [e["orderRef"] for e in state["a"]["executions"]] == ["a-2"]
            assert state["b"]["executions"] == []
            # the MKT entry's fill reaches A's agent, and only A's
            await pa.wait_topic("orders/alpha", lambda m: m.get("type") == "fill", 20)
            assert not [m for m in pb.messages if m[0].startswith("orders/alpha")]

            # ---- each portfolio carries its own account; the position only at A
            await pa.wait_topic("portfolio", lambda m: any(
                p["symbol"] == "AAPL" and p["quantity"] == 1 for p in m.get("positions", [])), 20)
            for s in two.sides:
                snaps = probes[s.name].on("portfolio")
                assert snaps and {m["account"] for m in snaps} == {s.account}
            assert not any(p.get("quantity") for m in pb.on("portfolio")
                           for p in m.get("positions", []))

            # ---- a halt on A leaves B trading
            rc, out, err = await run_cli(a.d, "halt", "--reason", "crosstalk test")
            assert rc == 0, out + err
            await pa.wait_topic("status", lambda m: m.get("trading_state") == "HALTED", 20)
            halted = await decide(pa, "alpha", resting("a-3", PRICE["a"]))
            assert [r["code"] for r in halted["reasons"]] == ["TRADING_HALTED"]
            still = await decide(pb, "beta", resting("b-2", PRICE["b"]))
            assert still["verdict"] == "approved", still
            sent["a"].append("a-3")
            sent["b"].append("b-2")
            assert all(m.get("trading_state") != "HALTED" for m in pb.on("status"))
            assert not [e for e in b.d.logs if e.get("event") == "control_received"]
            assert [e for e in a.d.logs if e.get("event") == "control_received"]

            # ---- decisions only for what was sent on that prefix
            for s in two.sides:
                got = {m["proposal_id"] for t, m, _ in probes[s.name].messages
                       if t.startswith("decisions/")}
                assert got == set(sent[s.name]), (s.name, got)

        # ---- every message on the broker belongs to one prefix; logs and journals apart
        prefixes = (a.prefix + "/", b.prefix + "/")
        assert all(t.startswith(prefixes) for t, _ in sniffer.seen), \
            {t for t, _ in sniffer.seen if not t.startswith(prefixes)}
        for s, other in ((a, b), (b, a)):
            own = set(sent[s.name])
            foreign = set(sent[other.name]) - own
            logged = {e.get("proposal_id") for e in s.d.logs if e.get("proposal_id")}
            assert logged <= own and not logged & foreign, (s.name, logged)
            journaled = {e["proposal_id"] for e in read_events(s.data_dir / "journal.sqlite",
                                                               kinds=["proposal"])}
            assert journaled == own, (s.name, journaled)
            portfolio_accounts = {m.get("account") for t, m in sniffer.seen
                                  if t == f"{s.prefix}/portfolio" and isinstance(m, dict)}
            assert portfolio_accounts == {s.account}, portfolio_accounts
        _check_journal_claims(a, b)


def _check_journal_claims(*sides: Side) -> None:
    """Each journal was claimed for its own account (adapters/journal.py `claim`): a daemon
    pointed at the other account's journal would refuse to start (exit 5)."""
    import sqlite3

    for s in sides:
        conn = sqlite3.connect(f"{(s.data_dir / 'journal.sqlite').as_uri()}?mode=ro", uri=True)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        finally:
            conn.close()
        assert s.account in json.dumps(meta), meta
