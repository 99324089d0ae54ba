"""The journal survives SIGKILL at any point: whatever a writer was told is written, is there.

A writer subprocess records intents (and other events, and intent moves) from concurrent tasks
and prints each acknowledgement the moment the awaited call returns. The test kills it with
SIGKILL at random moments, reopens the file and checks every acknowledged write is present and
the file is consistent. All runs append to one file, so recovery from a hot WAL left by the
previous kill is exercised too.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bracketgate.adapters.journal import SCHEMA_VERSION, IntentState, Journal
from bracketgate.core.clock import SystemClock

REPO = Path(__file__).resolve().parents[2]
KILLS = 10

WRITER = r"""
import asyncio, sys
from pathlib import Path
from bracketgate.adapters.journal import Journal
from bracketgate.core.clock import SystemClock
from bracketgate.core.logs import configure_logging

configure_logging("json", "WARNING", stream=sys.stderr)
path, run = Path(sys.argv[1]), sys.argv[2]

def ack(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

async def worker(j, w):
    n = 0
    while True:
        pid = f"{run}-{w}-{n}"
        seq = await j.record_intent({"proposal_id": pid, "agent_id": "crash"}, [n, n + 1, n + 2])
        ack(f"I {seq} {pid}")
        seq = await j.record("order_status", proposal_id=pid, payload={"status": "Submitted"})
        ack(f"E {seq} {pid}")
        await j.mark_intent(pid, "sent")
        ack(f"M 0 {pid}")
        n += 1

async def main():
    j = await Journal.open(path, SystemClock())
    ack("OPEN 0 -")
    await asyncio.gather(*(worker(j, w) for w in range(4)))

asyncio.run(main())
"""


def start_writer(path: Path, run: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), run], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_and_collect(proc: subprocess.Popen[str], after_lines: int, rng: random.Random
                     ) -> list[tuple[str, int, str]]:
    """Let the writer acknowledge `after_lines` lines (0: kill during start-up), kill it at a
    random moment shortly after, return every complete acknowledgement it printed."""
    assert proc.stdout is not None
    text = ""
    if after_lines == 0:
        time.sleep(rng.uniform(0.0, 0.4))
    else:
        for _ in range(after_lines):
            line = proc.stdout.readline()
            assert line, f"writer died by itself: {proc.stderr.read() if proc.stderr else ''}"
            text += line
        time.sleep(rng.uniform(0.0, 0.01))
    proc.send_signal(signal.SIGKILL)
    rest, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL, err
    text += rest
    acks = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):  # a torn last line was never fully acknowledged
            tag, seq, pid = line.split()
            acks.append((tag, int(seq), pid))
    return acks


def check_file(path: Path, acks: list[tuple[str, int, str]]) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        opened = any(tag == "OPEN" for tag, _, _ in acks)
        assert version == SCHEMA_VERSION or (version == 0 and not opened)
        if version == 0:
            return
        events = {seq: (kind, pid) for seq, kind, pid in conn.execute(
            "SELECT seq, kind, proposal_id FROM events")}
        states = dict(conn.execute("SELECT proposal_id, state FROM intents"))
    finally:
        conn.close()
    for tag, seq, pid in acks:
        if tag == "I":
            assert events.get(seq) == ("intent", pid), f"acknowledged intent {seq} {pid} lost"
            assert pid in states
        elif tag == "E":
            assert events.get(seq) == ("order_status", pid), f"acknowledged event {seq} lost"
        elif tag == "M":
            assert states.get(pid) == IntentState.SENT.value, f"acknowledged move of {pid} lost"


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    acknowledged = 0
    for run in range(KILLS):
        after = 0 if run == 0 else rng.choice([1, 2, 5, 20, 60, 150, 300])
        proc = start_writer(path, f"r{run}")
        acks = kill_and_collect(proc, after, rng)
        check_file(path, acks)
        acknowledged += sum(tag == "I" for tag, _, _ in acks)
    assert acknowledged > 0
    # and the daemon's own code opens the crashed file and sees a consistent story
    async with Journal(path, SystemClock()) as j:
        intents = await j.intents()
        assert len(intents) >= acknowledged
        assert {i.state for i in intents} <= {IntentState.PENDING, IntentState.SENT}
        intent_events = await j.events(kinds="intent")
        assert {e["proposal_id"] for e in intent_events} == {i.proposal_id for i in intents}


def test_kill_during_open_leaves_a_usable_file(tmp_path: Path) -> None:
    """A kill while the file is being created or migrated leaves version 0 or the current one."""
    path = tmp_path / "journal.sqlite"
    rng = random.Random()
    for run in range(3):
        proc = start_writer(path, f"o{run}")
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        check_file(path, [])


COMPACTOR = r"""
import asyncio, sys
from datetime import datetime
from pathlib import Path
from bracketgate.adapters.journal import Journal
from bracketgate.core.clock import SystemClock
from bracketgate.core.logs import configure_logging

configure_logging("json", "WARNING", stream=sys.stderr)
path, ids_before, before = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def ack(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

async def main():
    j = await Journal.open(path, SystemClock())
    async def records():
        n = 0
        while True:
            pid = f"new-{n}"
            seq = await j.record("proposal", proposal_id=pid, agent_id="a1",
                                 payload={"proposal_id": pid})
            ack(f"P {seq} {pid}")
            n += 1
    task = asyncio.create_task(records())
    await j.prune_ids(datetime.fromisoformat(ids_before), chunk_rows=20)
    await j.compact(datetime.fromisoformat(before), chunk_rows=20,
                    on_chunk=lambda stage, n: ack(f"C {n} {stage}"))
    ack("DONE 0 -")
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_sigkill_during_a_chunked_compaction_then_the_next_run_finishes_it(
        tmp_path: Path) -> None:
    """Killed between (or inside) chunks, the journal is consistent, every acknowledged record is
    in, and the next compaction leaves exactly what one uninterrupted one-shot run leaves."""
    import shutil
    from datetime import timedelta

    from bracketgate.adapters.journal import _ts
    from tests.unit.test_journal_compaction import NOW, _contents, _fill, _new_file, _one_shot

    base = tmp_path / "base.sqlite"
    await _new_file(base)
    _fill(base, seed=11, n=6000)
    oracle, path = tmp_path / "oracle.sqlite", tmp_path / "journal.sqlite"
    shutil.copy(base, oracle)
    shutil.copy(base, path)
    ids_before, before = NOW - timedelta(days=21), NOW - timedelta(days=14)
    _one_shot(oracle, _ts(ids_before), _ts(before))
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    acks: list[tuple[str, int, str]] = []
    proc = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(path), ids_before.isoformat(),
                             before.isoformat()], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    chunks = 0
    kill_at = rng.randint(3, 40)
    while chunks < kill_at:                 # into the event chunks (the intents take a few)
        line = proc.stdout.readline()
        assert line, f"compactor died by itself: {proc.stderr.read() if proc.stderr else ''}"
        tag, seq, pid = line.split()
        assert tag != "DONE", "the compaction ended before the kill: more old rows needed"
        acks.append((tag, int(seq), pid))
        chunks += tag == "C"
    time.sleep(rng.uniform(0.0, 0.005))
    proc.send_signal(signal.SIGKILL)
    rest, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL, err
    acks += [tuple(x if i != 1 else int(x) for i, x in enumerate(line.split()))  # type: ignore[misc]
             for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    recorded = [(seq, pid) for tag, seq, pid in acks if tag == "P"]
    assert recorded, "records were acknowledged while the compaction ran"
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        events = dict(conn.execute("SELECT seq, proposal_id FROM events WHERE kind = 'proposal'"))
        left = conn.execute("SELECT count(*) FROM events WHERE ts < ?", (_ts(before),)).fetchone()[0]
    finally:
        conn.close()
    assert all(events.get(seq) == pid for seq, pid in recorded), "an acknowledged record lost"
    o_events, o_intents, o_ids = _contents(oracle)
    assert left > sum(e[1] < _ts(before) for e in o_events), "killed after the compaction ended"
    async with Journal(path, SystemClock()) as j:     # the next hourly run
        await j.prune_ids(ids_before)
        await j.compact(before)
    events_after, intents, ids = _contents(path)
    last_base = max(e[0] for e in _contents(base)[0])
    assert [e for e in events_after if e[0] <= last_base] == o_events
    assert {pid for _, pid in recorded} <= {e[3] for e in events_after if e[0] > last_base}
    assert intents == o_intents
    assert [r for r in ids if not r[0].startswith("new-")] == o_ids
