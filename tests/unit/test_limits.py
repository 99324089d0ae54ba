"""config/limits.py: the limits file is validated whole; a typo is an error, never a default."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from bracketgate.bus.errors import ConfigError
from bracketgate.bus.messages import SecType
from bracketgate.config.limits import DEFAULT_LIMITS_PATH, RiskLimits, diff_limits, load_limits, parse_limits


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "limits.toml"
    path.write_text(text)
    return path


def test_default_file_loads_and_is_sane_for_a_million_dollar_account() -> None:
    lim = load_limits(DEFAULT_LIMITS_PATH)
    assert lim.daily_loss_limit == 20_000.0
    assert lim.per_trade_loss_limit <= lim.daily_loss_limit
    assert lim.max_order_msgs_per_s < 50          # IB disconnects past 50 messages/s
    assert lim.max_order_notional <= lim.max_position_notional
    assert lim.agent.loss_limit <= lim.daily_loss_limit
    assert set(lim.allowed_sec_types) == set(SecType)
    es = lim.for_symbol("ES")
    assert es.multiplier == 50.0 and es.min_tick == 0.25


def test_default_file_keys_match_the_model_defaults_except_documented_overrides() -> None:
    changed = diff_limits(RiskLimits(), load_limits(DEFAULT_LIMITS_PATH))
    assert all(line.startswith("symbols.ES.") for line in changed), changed


@pytest.mark.parametrize("text,where", [
    ("daily_los_limit = 1000.0\n", "daily_los_limit"),
    ("[agent]\nloss_limt = 5.0\n", "agent.loss_limt"),
    ("[agents.bot-1]\nexposure = 5.0\n", "agents.bot-1.exposure"),
    ("[symbols.AAPL]\nmax_qty = 5\n", "symbols.AAPL.max_qty"),
    ("[trading_hours]\nstart = 09:30:00\nend = 16:00:00\ntz = 'UTC'\n", "trading_hours.tz"),
])
def test_unknown_keys_are_errors(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_limits(write(tmp_path, text))
    assert where in str(e.value)


@pytest.mark.parametrize("text", [
    "daily_loss_limit = -1.0\n",
    "daily_loss_limit = nan\n",
    "per_trade_loss_limit = inf\n",
    "max_order_quantity = 1.5\n",
    "max_snapshot_age_s = 0\n",
    "min_stop_distance_pct = 5.0\nmax_stop_distance_pct = 1.0\n",
    "max_order_msgs_per_s = 2.0\n",
    "timezone = 'Mars/Olympus'\n",
    "allowed_symbols = ['aapl']\n",
    "allowed_sec_types = ['CRYPTO']\n",
    "[trading_hours]\nstart = 16:00:00\nend = 09:30:00\n",
    "[trading_hours]\nweekdays = [7]\n",
    "[symbols.es]\nmultiplier = 50.0\n",
    "margin_cushion_pct = 100.0\n",
])
def test_invalid_values_are_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_limits(write(tmp_path, text))


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_limits(write(tmp_path, "daily_loss_limit = \n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_limits(tmp_path / "absent.toml")


def test_limits_are_frozen() -> None:
    lim = RiskLimits()
    with pytest.raises(ValueError):
        lim.daily_loss_limit = 1.0  # type: ignore[misc]


def test_agent_overrides_apply_over_the_agent_defaults(tmp_path: Path) -> None:
    lim = load_limits(write(tmp_path, """
[agent]
loss_limit = 1000.0
max_open_brackets = 3

[agents.scalper]
loss_limit = 250.0
"""))
    assert lim.for_agent("scalper").loss_limit == 250.0
    assert lim.for_agent("scalper").max_open_brackets == 3       # inherited
    assert lim.for_agent("anyone").loss_limit == 1000.0


def test_symbol_overrides_apply_over_the_global_limits(tmp_path: Path) -> None:
    lim = load_limits(write(tmp_path, """
max_order_quantity = 100
max_position_units = 500.0

[symbols.TSLA]
max_order_quantity = 10
"""))
    tsla, aapl = lim.for_symbol("TSLA"), lim.for_symbol("AAPL")
    assert (tsla.max_order_quantity, tsla.max_position_units) == (10, 500.0)
    assert (aapl.max_order_quantity, aapl.multiplier, aapl.min_tick) == (100, None, None)


def test_trading_hours_parse() -> None:
    lim = parse_limits({"trading_hours": {"start": "09:30:00", "end": "16:00:00"}})
    assert lim.trading_hours is not None
    assert (lim.trading_hours.start, lim.trading_hours.end) == (time(9, 30), time(16, 0))
    assert lim.trading_hours.weekdays == [0, 1, 2, 3, 4]
    assert RiskLimits().trading_hours is None


def test_diff_lists_every_changed_leaf() -> None:
    old = RiskLimits()
    new = parse_limits({"daily_loss_limit": 1000.0, "agents": {"x": {"loss_limit": 5.0}}})
    changes = diff_limits(old, new)
    assert "daily_loss_limit: 20000.0 -> 1000.0" in changes
    assert any(c.startswith("agents.x.loss_limit:") for c in changes)
    assert diff_limits(old, RiskLimits()) == []
