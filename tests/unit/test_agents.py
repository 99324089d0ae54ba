"""The agents file (config/agents.py) and what the governor does with it (issue 10):
validation, limits precedence, UNKNOWN_AGENT / AGENT_DISABLED refusals, one shared budget for
unregistered agent ids without a file, and fair share of the proposal rate and the IB pacer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bracketgate.adapters.pacer import Pacer
from bracketgate.agents.risk import SHARED_BUDGET
from bracketgate.bus.errors import ConfigError
from bracketgate.bus.messages import DenialCode, Leg, Verdict
from bracketgate.config.agents import AgentsFile, load_agents, parse_agents
from bracketgate.config.limits import RiskLimits
from tests.unit.riskkit import fill, governor, open_limits, proposal, snapshot

D = DenialCode
REPO = Path(__file__).resolve().parents[2]
KEY = "k" * 24


def agents(**entries: dict) -> AgentsFile:
    return parse_agents({"agents": entries})


# ------------------------------------------------------------------ the file


def test_example_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "config" / "agents.example.toml", tmp_path / "agents.toml")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "momentum-1.key").write_text("m" * 32 + "\n")
    monkeypatch.setenv("BRACKETGATE_OPERATOR_KEY", "o" * 32)
    monkeypatch.setenv("BRACKETGATE_KEY_MEAN_REV_2", "r" * 32)
    a = load_agents(tmp_path / "agents.toml")
    assert a.key_for("momentum-1") == b"m" * 32          # the file's newline stripped
    assert a.key_for("mean-rev-2") == b"r" * 32
    assert a.operator_key == b"o" * 32
    assert a.key_for("retired-3") is None and a.key_for("nobody") is None
    assert a.is_enabled("momentum-1") and not a.is_enabled("retired-3")
    assert not a.is_known("nobody")


@pytest.mark.parametrize("data,needle", [
    ({"agents": {"a1": {"max_open_bracket": 3}}}, "max_open_bracket"),        # typo
    ({"agent": {"a1": {}}}, "agent"),                                         # unknown top key
    ({"agents": {"a1": {"enabled": "maybe"}}}, "enabled"),
    ({"agents": {"a1": {"loss_limit": -1}}}, "loss_limit"),
    ({"agents": {"a1": {"max_order_share_pct": 0}}}, "max_order_share_pct"),
    ({"agents": {"bad id!": {}}}, "agent ids"),
    ({"agents": {"a1": {"key": KEY, "key_env": "X"}}}, "at most one"),
    ({"agents": {"a1": {"key": "short"}}}, "shorter than 16"),
    ({"agents": {"a1": {"key_env": "BG_TEST_SURELY_UNSET"}}}, "is not set"),
    ({"agents": {"a1": {"key_file": "/nonexistent/k"}}}, "cannot read key_file"),
    ({"operator": {"key": KEY, "extra": 1}}, "extra"),
])
def test_invalid_files_are_errors(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_agents(data)
    assert needle in str(e.value)


def test_secrets_never_shown() -> None:
    secret = "s3cr3t-" * 4
    a = parse_agents({"operator": {"key": secret}, "agents": {"a1": {"key": secret}}})
    assert secret not in repr(a) and secret not in str(a.model_dump())
    with pytest.raises(ConfigError) as e:   # an invalid file's message never carries the key
        parse_agents({"agents": {"a1": {"key": secret, "key_env": "X"}}})
    assert secret not in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_agents({"agents": {"a1": {"key": 12345678901234567890}}})
    assert "12345678901234567890" not in str(e.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[agents.a1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_agents(tmp_path / "a.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_agents(tmp_path / "missing.toml")


def test_key_file_relative_to_the_agents_file(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("  " + "z" * 20 + "  \n")
    (tmp_path / "agents.toml").write_text('[agents.a1]\nkey_file = "k"\n')
    assert load_agents(tmp_path / "agents.toml").key_for("a1") == b"z" * 20


# ------------------------------------------------------------------ precedence


def test_limits_precedence() -> None:
    lim = open_limits(agent={"max_open_brackets": 10, "loss_limit": 100.0},
                      agents={"a1": {"max_open_brackets": 5, "loss_limit": 50.0}})
    file = agents(a1={"max_open_brackets": 3}, a2={})
    gov, _ = governor(lim, agents=file)
    a1 = gov._agent(gov.budget_of("a1"))
    assert a1.max_open_brackets == 3        # the agents file wins ...
    assert a1.loss_limit == 50.0            # ... over [agents.a1], which wins over [agent]
    assert gov._agent(gov.budget_of("a2")).max_open_brackets == 10   # [agent] alone


# ------------------------------------------------------------------ refusals


def test_unknown_and_disabled_agents_refused_before_any_check() -> None:
    gov, clock = governor(open_limits(), agents=agents(a1={}, off={"enabled": False}))
    # no snapshot at all: every other check would fail closed, the agent gate answers first
    d = gov.evaluate(proposal("u1", agent="stranger"), None)
    assert [r.code for r in d.reasons] == [D.UNKNOWN_AGENT] and d.reasons[0].value == "stranger"
    d = gov.evaluate(proposal("d1", agent="off"), snapshot(clock))
    assert [r.code for r in d.reasons] == [D.AGENT_DISABLED]
    assert len(gov.ledger) == 0
    assert gov.evaluate(proposal("ok", agent="a1"), snapshot(clock)).verdict is Verdict.APPROVED
    # a re-send gets the same answer; no token of any bucket was spent by the refusals
    assert gov.evaluate(proposal("u1", agent="stranger"), None).reasons[0].code is D.UNKNOWN_AGENT
    assert "stranger" not in gov._agent_buckets and "off" not in gov._agent_buckets


def test_unknown_agents_spend_no_global_tokens() -> None:
    gov, clock = governor(open_limits(max_proposals_per_s=1.0, proposal_burst=1),
                          agents=agents(a1={}))
    snap = snapshot(clock)
    for i in range(50):
        assert gov.evaluate(proposal(f"x{i}", agent=f"inv{i}"), snap).reasons[0].code \
            is D.UNKNOWN_AGENT
    assert gov.evaluate(proposal("ok", agent="a1"), snap).verdict is Verdict.APPROVED


def test_reload_enables_and_disables(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text("[agents.a1]\nenabled = false\n")
    gov, clock = governor(open_limits(), agents=load_agents(path))
    snap = snapshot(clock)
    assert gov.evaluate(proposal("p1"), snap).reasons[0].code is D.AGENT_DISABLED
    path.write_text(f'[agents.a1]\nenabled = true\nkey = "{KEY}"\n')
    changes = gov.reload_agents(path)
    assert "agents.a1.enabled: False -> True" in changes and "agents.a1.key: changed" in changes
    assert KEY not in " ".join(changes)
    assert gov.evaluate(proposal("p2"), snap).verdict is Verdict.APPROVED
    path.write_text("[agents.a1]\nenabled = nope\n")          # invalid: the old file stays
    with pytest.raises(ConfigError):
        gov.reload_agents(path)
    assert gov.evaluate(proposal("p3"), snap).verdict is Verdict.APPROVED
    gov.set_agents(None)       # no file: a1 unregistered, shares the one budget
    assert gov.budget_of("a1") == SHARED_BUDGET


# ------------------------------------------------------------------ one shared budget


def test_unregistered_ids_share_one_budget_for_everything() -> None:
    lim = open_limits(agent={"max_open_brackets": 10, "loss_limit": 100.0,
                             "max_proposals_per_s": 1.0, "proposal_burst": 10},
                      agents={"named": {}})
    gov, clock = governor(lim)
    snap = snapshot(clock)
    # open brackets: bud1..bud10 fill the one budget, bud11 is refused like bud1 would be
    for i in range(10):
        assert gov.evaluate(proposal(f"b{i}", agent=f"bud{i}", qty=1), snap).verdict \
            is Verdict.APPROVED
    d = gov.evaluate(proposal("b10", agent="bud-new", qty=1), snap)
    assert D.MAX_OPEN_BRACKETS_AGENT in [r.code for r in d.reasons]
    assert D.RATE_LIMITED in [r.code for r in d.reasons]   # and the shared bucket is empty
    assert "unregistered" in next(r.value for r in d.reasons if r.code is D.RATE_LIMITED)
    # an agent named in the limits file is not touched by any of it
    assert gov.evaluate(proposal("n1", agent="named", qty=1), snap).verdict is Verdict.APPROVED


def test_shared_budget_loss_counts_every_unregistered_id() -> None:
    gov, clock = governor(open_limits(agent={"loss_limit": 100.0}))
    gov.on_fill(fill(proposal("old", agent="bud1"), clock, leg=Leg.STOP_LOSS, realized=-95.0))
    # 10 x (100 - 99) = 10 worst case; 95 lost by bud1 leaves 5 for every unregistered id
    d = gov.evaluate(proposal("p", agent="bud2"), snapshot(clock))
    assert [r.code for r in d.reasons] == [D.AGENT_LOSS_LIMIT]
    assert gov.summary()["agent_realized"] == {"bud1": -95.0}   # attribution stays per id


def test_with_agents_file_registered_agents_have_own_budgets() -> None:
    gov, clock = governor(open_limits(agent={"max_open_brackets": 1}),
                          agents=agents(bud1={}, bud2={}))
    snap = snapshot(clock)
    assert gov.evaluate(proposal("1", agent="bud1"), snap).verdict is Verdict.APPROVED
    assert gov.evaluate(proposal("2", agent="bud1"), snap).reasons[0].code \
        is D.MAX_OPEN_BRACKETS_AGENT
    assert gov.evaluate(proposal("3", agent="bud2"), snap).verdict is Verdict.APPROVED


# ------------------------------------------------------------------ fair share


def test_flooding_agent_cannot_starve_a_quiet_one() -> None:
    # global 50/s burst 100; each agent 5/s burst 10: a flood at 250/s for 10 s spends only
    # its own bucket, the quiet agent's 1/s proposals are all approved
    lim = open_limits(max_proposals_per_s=50.0, proposal_burst=100,
                      agent={"max_proposals_per_s": 5.0, "proposal_burst": 10})
    gov, clock = governor(lim, agents=agents(flood={}, quiet={}))
    flood: dict[str, int] = {}
    quiet: list[Verdict] = []
    for tick in range(2500):                   # 4 ms apart: 250/s
        snap = snapshot(clock)
        d = gov.evaluate(proposal(f"f{tick}", agent="flood", qty=1), snap)
        key = d.verdict.value if d.verdict is Verdict.APPROVED else d.reasons[0].code.value
        flood[key] = flood.get(key, 0) + 1
        if tick % 250 == 0:
            quiet.append(gov.evaluate(proposal(f"q{tick}", agent="quiet", qty=1), snap).verdict)
        clock.advance(0.004)
    assert quiet == [Verdict.APPROVED] * 10
    assert flood["RATE_LIMITED"] > 2000 and flood["approved"] <= 10 + 5 * 10 + 1


def test_global_bucket_denial_refunds_the_agents_token() -> None:
    gov, clock = governor(open_limits(max_proposals_per_s=1.0, proposal_burst=1,
                                      agent={"max_proposals_per_s": 1.0, "proposal_burst": 1}),
                          agents=agents(a={}, b={}))
    snap = snapshot(clock)
    assert gov.evaluate(proposal("a1", agent="a"), snap).verdict is Verdict.APPROVED
    d = gov.evaluate(proposal("b1", agent="b"), snap)
    assert d.reasons[0].value == "global"
    assert gov._agent_buckets["b"].tokens == 1.0     # b keeps its token for the next second


def test_pacer_share_per_agent() -> None:
    gov, clock = governor(open_limits(agent={"max_order_share_pct": 50.0}),
                          agents=agents(hog={}, other={}))
    pacer = Pacer(40, burst=4, time=clock.monotonic)
    gov.use_order_budget(pacer)
    snap = snapshot(clock)
    # idle headroom: 4 + 40 x 5 s (half the placement timeout) = 204 messages; the hog's share
    # is half of it: 102 / 3 = 34 brackets, then RATE_LIMITED agent_order_share
    got = [gov.evaluate(proposal(f"h{i}", agent="hog", qty=1), snap) for i in range(40)]
    approved = [d for d in got if d.verdict is Verdict.APPROVED]
    assert len(approved) == 34
    assert {r.field for d in got[34:] for r in d.reasons} == {"agent_order_share"}
    # the other agent still finds headroom at the pacer
    assert gov.evaluate(proposal("o1", agent="other", qty=1), snap).verdict is Verdict.APPROVED
    clock.advance(1.0)    # the hog's share refills at 20 messages/s
    assert gov.evaluate(proposal("h-later", agent="hog", qty=1), snap).verdict \
        is Verdict.APPROVED


def test_no_pacer_no_share() -> None:
    gov, clock = governor(open_limits(max_order_msgs_per_s=6.0))
    snap = snapshot(clock)
    assert all(gov.evaluate(proposal(f"o{i}"), snap).verdict is Verdict.APPROVED for i in range(2))


def test_limits_model_default_share() -> None:
    assert RiskLimits().agent.max_order_share_pct == 50.0
