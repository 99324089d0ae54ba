"""The broker's own speed, for bench/bench_latency.py: a raw client (the same IB library as the
daemon, imported as is: not
through adapters/ib.py, whose adapters/ib_repr.py shortens Trade's str; no daemon, no MQTT, no journal) against the same paper TWS
process doing what the daemon's approved path does at IB, open loop.

For bracket i, due at t0 + i / rate: an IB what-if on the entry (awaited), then the same three
legs as IBBroker._bracket_orders (LMT entry + LMT take-profit + STP stop, one named OCA group,
transmit chain, orderRef on every leg), then the wait until IB acknowledged all three (each
leg's status past PendingSubmit, read in the statusEvent callback as adapters/ib.py does).
Stamps (perf_counter, the bench's and the paper TWS's clock):
  due, whatif_sent, whatif_answered, leg0_sent, leg2_sent, acks_read (all three)
and the paper TWS's arrivals of the entry and of the stop (matched by orderRef afterwards).

Its own client id, so its orders count against its own pacing budget (50 messages per second
per client, like the daemon's): at 5 brackets per second, 20 messages per second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

try:   # the library itself, as a user has it (not through adapters/ib.py: its ib_repr patch)
    import ib_async as ibl
except ImportError:  # pragma: no cover - the ib_insync virtualenv
    import ib_insync as ibl  # type: ignore[no-redef]

from bench.ticks import ticks  # noqa: E402

CLIENT_ID = 913


async def raw_brackets(host: str, port: int, prices: dict[str, float], n: int, rate: float,
                       run: str) -> dict[str, dict[str, float]]:
    """n what-if + bracket rounds at `rate`/s (open loop, each its own task); returns
    {orderRef: {stage: perf_counter time}}. Every bracket's entry rests under the market (the
    prices given); they are cancelled at the end (a global cancel of this client's orders)."""
    if "__str__" in ibl.Trade.__dict__:
        raise RuntimeError("the raw client's library is patched (adapters/ib_repr.py imported "
                           "in this process): it would not be the library as is")
    ib = ibl.IB()
    await ib.connectAsync(host, port, clientId=CLIENT_ID, timeout=15)
    try:
        account = ib.managedAccounts()[0] if ib.managedAccounts() else ""
        contracts = {s: ibl.Stock(s, "SMART", "USD") for s in prices}
        await ib.qualifyContractsAsync(*contracts.values())
        syms = list(prices)
        out: dict[str, dict[str, float]] = {}
        tasks = []
        # warm-up: one round per symbol, not measured
        for i, s in enumerate(syms):
            await _one(ib, account, contracts[s], prices[s], f"rawwarm-{run}-{i}", {})
        async for i, at in ticks(time.perf_counter() + 0.05, n, rate):   # bench/ticks.py
            ref = f"raw-{run}-{i}"
            st = out[ref] = {"due": at}
            s = syms[i % len(syms)]
            tasks.append(asyncio.ensure_future(_one(ib, account, contracts[s], prices[s], ref, st)))
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        ib.client.reqGlobalCancel()
        await asyncio.sleep(0.5)
        return out
    finally:
        ib.disconnect()


async def _one(ib: Any, account: str, contract: Any, px: float, ref: str,
               st: dict[str, float]) -> None:
    common = {"tif": "DAY", "orderRef": ref, "account": account}
    wi = ibl.Order(action="BUY", totalQuantity=1, orderType="LMT", lmtPrice=px, tif="DAY",
                   account=account)
    st["whatif_sent"] = time.perf_counter()
    await asyncio.wait_for(ib.whatIfOrderAsync(contract, wi), 10)
    st["whatif_answered"] = time.perf_counter()
    ids = [ib.client.getReqId() for _ in range(3)]
    oca = {"ocaGroup": f"raw-oca-{ref}", "ocaType": 3}
    legs = [
        ibl.Order(orderId=ids[0], action="BUY", totalQuantity=1, orderType="LMT", lmtPrice=px,
                  transmit=False, **common),
        ibl.Order(orderId=ids[1], action="SELL", totalQuantity=1, orderType="LMT",
                  lmtPrice=round(px * 1.04, 2), parentId=ids[0], transmit=False, **common, **oca),
        ibl.Order(orderId=ids[2], action="SELL", totalQuantity=1, orderType="STP",
                  auxPrice=round(px * 0.97, 2), parentId=ids[0], transmit=True, **common, **oca),
    ]
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    trades: list[Any] = []

    def check(*_: Any) -> None:
        if not done.done() and len(trades) == 3 and all(
                t.orderStatus.status not in ("PendingSubmit", "") for t in trades):
            st["acks_read"] = time.perf_counter()
            done.set_result(None)

    for k, o in enumerate(legs):
        t = ib.placeOrder(contract, o)
        t.statusEvent += check
        trades.append(t)
        st[f"leg{k}_sent"] = time.perf_counter()
    check()
    await asyncio.wait_for(done, 10)
    for t in trades:
        t.statusEvent -= check
