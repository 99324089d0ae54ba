"""SIGUSR2 tells an operator where the daemon's memory is (core/memdump.py), on a real daemon
process: with tracemalloc on, a snapshot file two of which compare by allocation site; without
it, the live objects counted by type; either way the size of every id-keyed book
(core/bounds.py). The daemon keeps deciding proposals throughout."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from tests.fixtures.daemon import REPO, DaemonProcess, MqttProbe

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


def _proposal(pid: str) -> dict:
    return {"proposal_id": pid, "symbol": "AAPL", "side": "BUY", "quantity": 1,
            "limit_price": 228.0, "take_profit": 232.0, "stop_loss": 226.0}


async def _dump(d: DaemonProcess, last: str) -> list[dict]:
    mark = len(d.logs)
    d.proc.send_signal(signal.SIGUSR2)
    await d.wait_log(lambda e: e.get("event") == last and d.logs.index(e) >= mark, timeout=60)
    return d.logs[mark:]


async def test_sigusr2_snapshots_with_tracemalloc_and_compares(mosquitto, paper_tws_process,
                                                               tmp_path: Path) -> None:
    d = await DaemonProcess.spawn(ib_host=paper_tws_process.host, ib_port=paper_tws_process.port,
                                  mqtt_url=mosquitto.url, tmp=tmp_path,
                                  extra_env={"PYTHONTRACEMALLOC": "1"}, timeout=60)
    try:
        async with MqttProbe(mosquitto.url, d.prefix) as agent:
            first = await _dump(d, "memory_snapshot")
            for i in range(20):
                await agent.propose("mem", _proposal(f"mem-{i}"))
            for i in range(20):
                assert (await agent.decision("mem", f"mem-{i}", timeout=30))["verdict"]
            second = await _dump(d, "memory_snapshot")
        head = next(e for e in first if e["event"] == "memory_dump")
        assert head["rss_kib"] > 0 and head["traced_kib"] > 0
        tops = [e for e in second if e["event"] == "memory_top"]
        assert len(tops) >= 10 and all(":" in e["site"] and e["size_kib"] >= 0 for e in tops)
        paths = [Path(next(e for e in logs if e["event"] == "memory_snapshot")["path"])
                 for logs in (first, second)]
        assert all(p.is_file() and p.parent == tmp_path / "memory" for p in paths)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bracketgate.core.memdump", str(paths[0]), str(paths[1]),
            cwd=str(REPO), stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        lines = out.decode().splitlines()
        assert lines and all("size=" in ln for ln in lines), lines[:3]
    finally:
        assert await d.terminate() == 0


async def test_sigusr2_counts_types_without_tracemalloc(mosquitto, paper_tws_process,
                                                        tmp_path: Path) -> None:
    d = await DaemonProcess.spawn(ib_host=paper_tws_process.host, ib_port=paper_tws_process.port,
                                  mqtt_url=mosquitto.url, tmp=tmp_path)
    try:
        logs = await _dump(d, "memory_types")
        await d.wait_log(lambda e: e.get("event") == "memory_types"
                         and sum(1 for x in d.logs if x.get("event") == "memory_types") >= 5,
                         timeout=30)
        head = next(e for e in logs if e["event"] == "memory_dump")
        assert head["traced_kib"] is None and head["gc_objects"] > 100
        assert head["gc_frozen"] > 10_000   # start-up's objects, frozen at ready, apart
        types = [e for e in d.logs if e.get("event") == "memory_types"]
        assert len(types) >= 5 and all(e["count"] > 0 for e in types)
        books = next(e for e in logs if e["event"] == "memory_books")["sizes"]
        from bracketgate.core.bounds import BOUNDS   # every id-keyed book, each bound named
        assert {"ib.trades", "ib._results", "execution._brackets", "risk.decisions"} <= set(books)
        assert set(books) <= set(BOUNDS) and all(n >= 0 for n in books.values())
        assert not (tmp_path / "memory").exists()
        async with MqttProbe(mosquitto.url, d.prefix) as agent:   # still deciding
            await agent.propose("mem", _proposal("mem-after"))
            assert (await agent.decision("mem", "mem-after", timeout=30))["verdict"]
    finally:
        assert await d.terminate() == 0
