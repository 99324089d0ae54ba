"""What deploy/systemd/bracketgate.service expects of the daemon, on real processes: it tells
a Type=notify supervisor READY=1 once it trades and STOPPING=1 on SIGTERM, and a SIGTERM ends
it with exit 0 promptly (far inside TimeoutStopSec), status `offline` retained, the working
bracket left at IB. The supervisor's notify socket is a real AF_UNIX datagram socket."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from tests.fixtures.daemon import DaemonProcess, MqttProbe
from tests.unit.test_deploy_files import UNIT, one, parse_unit, seconds

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket collecting what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[str] = []

    async def wait_for(self, word: str, timeout: float) -> list[str]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not any(word in m.split("\n") for m in self.received):
                data = await loop.sock_recv(self.sock, 4096)
                self.received.append(data.decode())
        return self.received

    def close(self) -> None:
        self.sock.close()


async def test_sigterm_is_a_prompt_clean_stop_with_sd_notify(mosquitto, paper_tws_process,
                                                           tmp_path: Path) -> None:
    unit = parse_unit(UNIT.read_text())
    stop_timeout = seconds(one(unit, "Service", "TimeoutStopSec"))
    notify = NotifySocket(tmp_path / "notify.sock")
    await paper_tws_process.set_price("AAPL", 230.0)
    d = await DaemonProcess.spawn(ib_host=paper_tws_process.host, ib_port=paper_tws_process.port,
                                  mqtt_url=mosquitto.url, tmp=tmp_path, wait_ready=False,
                                  extra_env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        await notify.wait_for("READY=1", timeout=30)
        ready = await d.wait_log(lambda e: e.get("event") == "ready", timeout=5)
        assert ready["prefix"] == d.prefix
        async with MqttProbe(mosquitto.url, d.prefix) as agent:
            await agent.propose("svc", {
                "proposal_id": "svc-1", "symbol": "AAPL", "side": "BUY", "quantity": 1,
                "limit_price": 228.0, "take_profit": 232.0, "stop_loss": 226.0})
            decision = await agent.decision("svc", "svc-1", timeout=20)
            assert decision["verdict"] == "approved", decision

            started = time.monotonic()
            d.proc.send_signal(15)   # SIGTERM, what systemctl stop sends (KillSignal)
            await notify.wait_for("STOPPING=1", timeout=10)
            rc = await d.wait_exit(timeout=stop_timeout)
            took = time.monotonic() - started
            assert rc == 0, "\n".join(d.raw[-30:])
            assert took < 15.0, f"SIGTERM to exit took {took:.1f}s"
            print(f"SIGTERM -> exit 0 in {took:.2f} s")
            status = await agent.wait_topic("status", lambda s: s.get("state") == "offline",
                                            timeout=10)
            assert status["detail"] == "clean shutdown"
        events = [e.get("event") for e in d.logs]
        assert "stopped" in events and events.index("signal_received") < events.index("stopped")
        # the bracket stays at IB: a clean stop cancels nothing
        state = await paper_tws_process.state()
        legs = [o for o in state["orders"] if o["orderRef"] == "svc-1"]
        assert len(legs) == 3 and all(o["status"] in ("Submitted", "PreSubmitted") for o in legs)
    finally:
        await d.kill()
        notify.close()
