"""What the benchmarks share: a limits file wide open but for what a bench is about."""

from __future__ import annotations

from typing import Any

# every limit out of the way (a bench measures the path, not a rule), the agent's too
WIDE: dict[str, Any] = {
    "max_snapshot_age_s": 10.0, "max_quote_age_s": 15.0, "daily_loss_limit": 1e12,
    "per_trade_loss_limit": 1e12, "per_trade_loss_pct": 100.0, "max_drawdown_pct": 99.0,
    "max_open_brackets": 1000000, "max_position_units": 1e12, "max_position_notional": 1e15,
    "max_order_notional": 1e15, "max_gross_exposure_pct": 1e9, "max_net_exposure_pct": 1e9,
    "max_proposals_per_s": 100000.0, "proposal_burst": 100000, "max_remembered_decisions": 200000,
}
WIDE_AGENT: dict[str, Any] = {
    "loss_limit": 1e12, "exposure_limit": 1e15, "max_open_brackets": 1000000,
    "max_proposals_per_s": 100000.0, "proposal_burst": 100000,
}


def wide_limits(**over: Any) -> str:
    """The limits file (TOML) of WIDE with `over` applied (a key set to None is left out)."""
    top = {**WIDE, **over}
    lines = [f"{k} = {_toml(v)}" for k, v in top.items() if v is not None]
    lines += ["", "[agent]"] + [f"{k} = {_toml(v)}" for k, v in WIDE_AGENT.items()]
    return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)
