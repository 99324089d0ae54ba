"""The daemon (`python run.py`, a subprocess) refuses a journal it cannot trust: one line on
stderr naming the file and the cause, one JSON log line, exit 5 (EXIT_JOURNAL), no traceback.

The journal is opened before IB and MQTT are contacted, so most cases need neither: IB_HOST /
MQTT_URL point at closed loopback ports (paper mode). The account check needs the paper TWS.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bracketgate.adapters.journal import Journal
from bracketgate.core.app import EXIT_JOURNAL
from tests.fixtures.ports import free_port

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534

pytestmark = [pytest.mark.e2e]


async def run_daemon(tmp: Path, journal: Path | None, *, ib_port: int | None = None,
                     user: int | None = None, timeout: float = 30.0, **env: str
                     ) -> tuple[int, str, list[dict[str, Any]]]:
    """Run the daemon to its exit: (exit code, stderr, JSON log lines)."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "LOG_FORMAT": "json", "DATA_DIR": str(tmp),
            "IB_HOST": "127.0.0.1", "IB_PORT": str(ib_port or free_port()),
            "MQTT_URL": f"mqtt://127.0.0.1:{free_port()}", "IB_CONNECT_TIMEOUT": "5",
            "MQTT_PREFIX": f"bgj{os.getpid()}", **env}
    if journal is not None:
        full["JOURNAL_PATH"] = str(journal)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "run.py"), cwd=str(tmp), env=full, user=user,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    logs = []
    for line in out.decode(errors="replace").splitlines():
        try:
            logs.append(json.loads(line))
        except ValueError:
            logs.append({"event": "_non_json", "text": line})
    return proc.returncode or 0, err.decode(errors="replace"), logs


def assert_refused(rc: int, err: str, logs: list[dict[str, Any]], path: Path, cause: str) -> None:
    text = err + json.dumps(logs)
    assert "Traceback" not in text, err + "\n".join(map(str, logs[-10:]))
    assert rc == EXIT_JOURNAL, (rc, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and cause in lines[0], err
    refused = [e for e in logs if e.get("event") == "journal_unusable"]
    assert len(refused) == 1 and refused[0]["code"] == "JOURNAL" and refused[0]["path"] == str(path)


async def a_journal(path: Path, **claim: str) -> Path:
    async with Journal(path) as j:
        await j.record("note", payload={"x": 1})
        if claim:
            await j.claim(mode=claim["mode"], account=claim.get("account"))
    return path


def _can_exec() -> bool:
    try:
        subprocess.run([sys.executable, "-c", "pass"], user=NOBODY, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def chattr(flag: str, path: Path) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", flag, str(path)], capture_output=True).returncode == 0


async def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    path.write_bytes(os.urandom(20_000))
    assert_refused(*await run_daemon(tmp_path, path), path, "not an SQLite database")


async def test_truncated(tmp_path: Path) -> None:
    path = await a_journal(tmp_path / "full.sqlite")
    async with Journal(path) as j:
        for i in range(2000):
            await j.record("note", payload={"pad": "x" * 300, "i": i})
    cut = tmp_path / "journal.sqlite"
    cut.write_bytes(path.read_bytes()[: (path.stat().st_size // 2) // 4096 * 4096])
    assert_refused(*await run_daemon(tmp_path, cut), cut, "truncated")


async def test_unwritable_immutable_file(tmp_path: Path) -> None:
    path = await a_journal(tmp_path / "journal.sqlite")
    if not chattr("+i", path):
        pytest.skip("chattr +i not available here")
    try:
        assert_refused(*await run_daemon(tmp_path, path), path, "not writable")
    finally:
        chattr("-i", path)


async def test_unwritable_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    path = await a_journal(ro / "journal.sqlite")
    if os.geteuid() == 0:
        if not chattr("+i", ro):
            pytest.skip("chattr +i not available here")
    else:
        ro.chmod(0o500)
    try:
        assert_refused(*await run_daemon(tmp_path, path), path, "not writable")
    finally:
        chattr("-i", ro) if os.geteuid() == 0 else ro.chmod(0o700)


async def test_unreadable(tmp_path: Path) -> None:
    """chmod 000; as root (who reads anything) the daemon runs as nobody, in a directory of
    its own under the system temp dir (pytest's tmp_path is root's only)."""
    import tempfile

    user = NOBODY if os.geteuid() == 0 else None
    work = Path(tempfile.mkdtemp(prefix="bg-unreadable-")) if user else tmp_path
    try:
        if user:
            work.chmod(0o777)
            probe = subprocess.run([sys.executable, "-c", f"import os; os.listdir({str(REPO)!r})"],
                                   user=NOBODY, capture_output=True) if _can_exec() else None
            if probe is None or probe.returncode != 0:
                pytest.skip("root cannot be denied a read, and nobody cannot run this Python")
        path = await a_journal(work / "journal.sqlite")
        path.chmod(0)
        assert_refused(*await run_daemon(work, path, user=user), path, "not readable")
    finally:
        if user:
            shutil.rmtree(work, ignore_errors=True)


async def test_made_for_another_mode(tmp_path: Path) -> None:
    path = await a_journal(tmp_path / "journal.sqlite", mode="live", account="U1234567")
    rc, err, logs = await run_daemon(tmp_path, path)
    assert_refused(rc, err, logs, path, "mode=live account=U1234567")
    assert "mode=paper" in err


async def test_made_for_another_account(tmp_path: Path, paper_tws_process: Any) -> None:
    tws = paper_tws_process
    path = await a_journal(tmp_path / "journal.sqlite", mode="paper", account="U7654321")
    rc, err, logs = await run_daemon(tmp_path, path, ib_port=tws.port)
    assert_refused(rc, err, logs, path, "account=U7654321")
    assert not [o for o in (await tws.state())["orders"]]   # nothing was sent


async def test_legacy_shared_journal_is_not_silently_replaced(tmp_path: Path) -> None:
    legacy = await a_journal(tmp_path / "journal.sqlite")
    rc, err, logs = await run_daemon(tmp_path, None)
    assert_refused(rc, err, logs, legacy, "JOURNAL_PATH=")
    assert not (tmp_path / "paper" / "journal.sqlite").exists()


async def test_a_write_failure_while_running_stops_the_daemon(tmp_path: Path, mosquitto: Any,
                                                              paper_tws_process: Any) -> None:
    """Failure injection: a trigger (written by another connection) makes the journal refuse
    every proposal event. The first proposal is not acknowledged, the daemon stops, exit 5."""
    from tests.fixtures.daemon import DaemonProcess, MqttProbe

    import sqlite3

    path = await a_journal(tmp_path / "journal.sqlite")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TRIGGER no_proposals BEFORE INSERT ON events WHEN NEW.kind = 'proposal'"
                 " BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END")
    conn.commit()
    conn.close()
    tws = paper_tws_process
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, mqtt_url=mosquitto.url,
                                  tmp=tmp_path, extra_env={"JOURNAL_PATH": str(path)})
    try:
        async with MqttProbe(mosquitto.url, d.prefix) as agent:
            await agent.propose("alpha", {
                "proposal_id": "wf-1", "symbol": "AAPL", "side": "BUY", "quantity": 1,
                "limit_price": 100.0, "take_profit": 102.0, "stop_loss": 99.0})
            rc = await d.wait_exit(30)
    finally:
        await d.terminate()
    assert rc == EXIT_JOURNAL
    assert "Traceback" not in "\n".join(d.raw)
    failed = [e for e in d.logs if e.get("event") == "journal_write_failed"]
    assert failed and failed[0]["path"] == str(path)
    assert not [o for o in (await tws.state())["orders"]]


async def test_fresh_data_dir_and_journal_files_are_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rc, err, logs = await run_daemon(tmp_path, None, DATA_DIR=str(data))
    assert rc == 3, err   # IB unreachable: the journal was opened first
    path = data / "paper" / "journal.sqlite"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for f in path.parent.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
