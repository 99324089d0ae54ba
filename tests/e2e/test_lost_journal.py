"""Issue 8, replays after a lost journal: the daemon restarts on an EMPTY journal while IB still
knows the brackets an earlier run placed (by orderRef = proposal_id). An agent re-sending such a
proposal gets what IB has — the live bracket's own ids (adopted and followed), or a typed
rejection for a bracket IB has finished or cancelled — never a second bracket, never ids 0/0/0.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.e2e.test_recovery_chaos import AGENT, WORKING, Rig, _through_entry, _through_exit

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


def _legs(state, pid):
    return [o for o in state["orders"] if o.get("orderRef") == pid and not o.get("whatIf")]


async def test_resent_proposals_after_journal_loss_get_what_ib_has(mosquitto, paper_tws_process,
                                                                   tmp_path):
    async with asyncio.timeout(90):
        async with Rig(paper_tws_process, mosquitto.url, tmp_path, random.Random(3)) as rig:
            await rig.start_daemon()
            finished = await rig.propose("BUY")
            d_fin = await rig.a.decision(AGENT, finished, timeout=15)
            assert d_fin["verdict"] == "approved", d_fin
            await _through_entry(rig, finished)
            await rig.d.wait_log(lambda e: e.get("event") == "fill"
                                 and e.get("proposal_id") == finished, timeout=15)
            rng = random.Random(0)              # 0 -> the take-profit side
            await _through_exit(rig, finished, rng)
            await rig.d.wait_log(lambda e: e.get("event") == "bracket_closed"
                                 and e.get("proposal_id") == finished, timeout=15)
            await rig.move(230.0)
            live = await rig.propose("BUY")
            d_live = await rig.a.decision(AGENT, live, timeout=15)
            assert d_live["verdict"] == "approved", d_live
            cancelled = await rig.propose("SELL", cancel_after=0.5)
            assert (await rig.a.decision(AGENT, cancelled, timeout=15))["verdict"] == "approved"
            await rig.d.wait_log(lambda e: e.get("event") == "order_event"
                                 and e.get("proposal_id") == cancelled
                                 and e.get("status") == "Cancelled", timeout=15)
            assert await rig.d.terminate() == 0
            before = {pid: _legs(await rig.tws.state(), pid) for pid in (finished, live, cancelled)}

            # the journal is gone; the MQTT session too (a new client id): a clean slate
            rig.extra_env["JOURNAL_PATH"] = str(tmp_path / "journal-after-loss.sqlite")
            rig.extra_env["MQTT_CLIENT_ID"] = "bg-after-loss"
            await rig.start_daemon()
            mark = rig.a.mark()
            for pid in (finished, live, cancelled):
                await rig.a.propose(AGENT, rig.proposals[pid])
            got = {}
            for pid in (finished, live, cancelled):
                got[pid] = await rig.a.wait_topic(
                    f"decisions/{AGENT}", lambda m, pid=pid: m.get("proposal_id") == pid,
                    timeout=15, since=mark)

            assert got[finished]["verdict"] == "rejected", got[finished]
            assert [r["code"] for r in got[finished]["reasons"]] == ["BRACKET_FINISHED_AT_IB"]
            assert got[finished]["order_ids"] is None
            assert got[live]["verdict"] == "approved"
            assert got[live]["order_ids"] == d_live["order_ids"]   # the same bracket, adopted
            assert [r["code"] for r in got[cancelled]["reasons"]] == ["BRACKET_CANCELLED_AT_IB"]
            await asyncio.sleep(0.5)   # anything wrongly sent would reach the paper TWS by now
            after = {pid: _legs(await rig.tws.state(), pid) for pid in (finished, live, cancelled)}
            for pid in before:   # no second bracket for any of them
                assert len(after[pid]) == len(before[pid]), (pid, before[pid], after[pid])
            assert sum(o["status"] in WORKING for o in after[live]) == 3

            # the adopted bracket is followed: its entry fill reaches the agent
            await _through_entry(rig, live)
            await rig.a.wait_topic(f"orders/{AGENT}", lambda m: m.get("type") == "fill"
                                   and m.get("proposal_id") == live, timeout=15, since=mark)
            assert await rig.d.terminate() == 0
