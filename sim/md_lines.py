"""The paper TWS's market-data lines: TWS's cap on concurrent reqMktData subscriptions.

An account may stream `limit` quotes at once (TWS's default is 100 lines, counted over the
account's API clients together); the next reqMktData is answered error 101 "Max number of
tickers has been reached" and opens nothing. cancelMktData frees a line; a snapshot
(snapshot=True) holds one only until its tickSnapshotEnd, so it needs a free line but keeps
none. A combo (BAG) quote holds one line. `limit` 0 = no cap.
"""

from __future__ import annotations

from typing import Any

DEFAULT_LINES = 100
MAX_TICKERS = 101
MSG_MAX_TICKERS = "Max number of tickers has been reached"


def in_use(tws: Any) -> int:
    """Lines held by every API client of this TWS (streaming stock, option, future and combo
    quotes)."""
    return sum(len(s.mkt_data) + len(s.combo_quotes) for s in tws._sessions.values())


def refused(tws: Any, s: Any, req_id: int) -> bool:
    """True (and error 101 sent to `s`) when every line is held: the request opens nothing."""
    limit = tws.max_market_data_lines
    if limit <= 0 or in_use(tws) < limit:
        return False
    from bracketgate.sim import codec

    tws.md_line_refusals += 1
    s.send(codec.error(req_id, MAX_TICKERS, MSG_MAX_TICKERS, s.version))
    return True


def view(tws: Any) -> dict[str, int]:
    """For the control port: the cap, the lines held now, the 101s sent so far."""
    return {"limit": tws.max_market_data_lines, "in_use": in_use(tws),
            "refusals": tws.md_line_refusals}
