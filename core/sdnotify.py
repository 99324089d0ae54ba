"""systemd's readiness protocol (sd_notify) without libsystemd: one datagram to $NOTIFY_SOCKET.

The unit (deploy/systemd/bracketgate.service, Type=notify) learns READY=1 once the daemon
trades and STOPPING=1 when its graceful stop begins. Outside systemd (no NOTIFY_SOCKET) every
call is a no-op; a socket that fails is logged, never raised: readiness is a courtesy to the
supervisor, not a reason to stop trading.
"""

from __future__ import annotations

import os
import socket

from bracketgate.core.logs import get_logger

log = get_logger("bracketgate.sdnotify")


def sd_notify(state: str) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", "STATUS=...", newline-separated) to systemd.
    True when a datagram went out; False without NOTIFY_SOCKET or on an error (logged)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):          # an abstract socket
        addr = "\0" + addr[1:]
    elif not addr.startswith("/"):
        log.warning("sd_notify_failed", error=f"NOTIFY_SOCKET is not a unix socket: {addr!r}")
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify_failed", error=str(e), state=state.split("\n", 1)[0])
        return False
    return True
