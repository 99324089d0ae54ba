"""The account guard (adapters/ib.py `account_guard`): IB_ACCOUNT must be among the managed
accounts, and a paper-mode daemon refuses a non-paper account (IB paper ids start with D) —
against the paper TWS started with `--account U1234567`: one clear line, exit 3, nothing placed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bracketgate.adapters.ib import account_guard
from bracketgate.bus.errors import BrokerConnectError
from bracketgate.core.app import EXIT_IB
from tests.e2e.test_journal_integrity import run_daemon
from tests.fixtures.paper_tws import PaperTWSHandle, spawn_paper_tws, stop_process

pytestmark = [pytest.mark.e2e]


@pytest.fixture
async def live_account_tws() -> AsyncIterator[PaperTWSHandle]:
    proc, handle = await spawn_paper_tws("--account", "U1234567")
    try:
        yield handle
    finally:
        await stop_process(proc, handle)


def _one_clear_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bracketgate: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err


async def test_paper_mode_refuses_a_live_account(tmp_path: Path, live_account_tws: PaperTWSHandle) -> None:
    tws = live_account_tws
    assert (await tws.state())["executions"] == []
    rc, err, logs = await run_daemon(tmp_path, None, ib_port=tws.port)
    assert rc == EXIT_IB
    _one_clear_line(err, "U1234567", "not a paper account", "start with D")
    assert (await tws.state())["orders"] == []
    assert not [e for e in logs if e.get("event") == "ready"]


async def test_ib_account_must_be_managed(tmp_path: Path, live_account_tws: PaperTWSHandle) -> None:
    rc, err, _ = await run_daemon(tmp_path, None, ib_port=live_account_tws.port, IB_ACCOUNT="DU7777777")
    assert rc == EXIT_IB
    _one_clear_line(err, "IB_ACCOUNT=DU7777777", "U1234567", "not among")


def test_account_guard_cases() -> None:
    assert account_guard("", ["DU1", "DU2"], paper=True) == "DU1"
    assert account_guard("DU2", ["DU1", "DU2"], paper=True) == "DU2"
    assert account_guard("U9", ["U8", "U9"], paper=False) == "U9"       # live mode: any managed one
    assert account_guard("", ["U8"], paper=False) == "U8"
    for configured, managed, paper in (("U9", ["U8"], False), ("", ["U8"], True),
                                       ("U8", ["U8", "DU1"], True), ("DU3", ["DU1"], True)):
        with pytest.raises(BrokerConnectError) as info:
            account_guard(configured, managed, paper=paper)
        assert info.value.code == "ACCOUNT_GUARD"
