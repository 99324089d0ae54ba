"""The mosquitto layout docs/DEPLOY.md installs on Debian, run by real mosquitto: the shipped
config/mosquitto.conf as the MAIN file (+ include_dir), config/mosquitto/secure.conf in conf.d
without its loopback listener. It loads, refuses anonymous clients, admits the daemon's login
(plain on loopback, TLS on the second listener). And what the doc warns about: the shipped
file dropped into conf.d next to Debian's main file does not load (persistence_location twice)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.mosquitto import SHIPPED_CONF, binary_or_skip
from tests.fixtures.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

SECURE = SHIPPED_CONF.parent / "mosquitto" / "secure.conf"
ACL = SHIPPED_CONF.parent / "mosquitto" / "acl"
MAKE_CA = SHIPPED_CONF.parent / "mosquitto" / "make-ca.sh"
DEBIAN_MAIN = """user {user}
pid_file {run}/mosquitto.pid
persistence true
persistence_location {data}/
log_dest stderr
include_dir {confd}
"""


def _start(conf: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([binary_or_skip(), "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _pub(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("mosquitto_pub")
    if tool is None:
        pytest.skip("mosquitto_pub not installed")
    return subprocess.run([tool, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t",
                           "bracketgate/status", "-m", "x", *args],
                          capture_output=True, text=True, timeout=20)


def test_debian_layout_of_deploy_md_loads_and_requires_logins(tmp_path: Path) -> None:
    data, confd, etc = tmp_path / "data", tmp_path / "conf.d", tmp_path / "bracketgate"
    for d in (data, confd, etc):
        d.mkdir()
    port, tls_port = free_port(), free_port()
    # the main file: the shipped one, Debian's paths replaced by this test's
    main = SHIPPED_CONF.read_text()
    main = re.sub(r"(?m)^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1", main)
    main = main.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {data}/")
    main += f"\npid_file {tmp_path}/mosquitto.pid\nlog_dest stderr\ninclude_dir {confd}\n"
    main += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"   # as root it would drop to `mosquitto`
    (tmp_path / "mosquitto.conf").write_text(main)
    # conf.d: secure.conf without its loopback listener (DEPLOY.md's grep -v)
    secure = "\n".join(line for line in SECURE.read_text().splitlines()
                       if line != "listener 1883 127.0.0.1")
    assert secure != SECURE.read_text()
    secure = secure.replace("/etc/mosquitto/bracketgate", str(etc))
    secure = re.sub(r"(?m)^listener 8883$", f"listener {tls_port} 127.0.0.1", secure)
    (confd / "bracketgate.conf").write_text(secure + "\n")
    shutil.copy(ACL, etc / "acl")
    subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-c", "-b",
                    str(etc / "passwd"), "bracketgate", "pw"], check=True, capture_output=True)
    subprocess.run(["bash", str(MAKE_CA), str(etc)], check=True, capture_output=True, timeout=60)

    proc = _start(tmp_path / "mosquitto.conf")
    try:
        deadline = time.monotonic() + 10
        while True:   # the broker is up once the daemon's login publishes
            ok = _pub(port, "-u", "bracketgate", "-P", "pw")
            if ok.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.2)   # polling another process's readiness
        assert proc.poll() is None and ok.returncode == 0, ok.stderr
        anonymous = _pub(port)
        assert anonymous.returncode != 0 and "not authori" in anonymous.stderr.lower()
        tls = _pub(tls_port, "-u", "bracketgate", "-P", "pw", "--cafile", str(etc / "ca.crt"))
        assert tls.returncode == 0, tls.stderr
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "Error" not in out, out


def test_shipped_file_in_debian_conf_d_does_not_load(tmp_path: Path) -> None:
    data, confd = tmp_path / "data", tmp_path / "conf.d"
    data.mkdir()
    confd.mkdir()
    (tmp_path / "mosquitto.conf").write_text(DEBIAN_MAIN.format(user=pwd.getpwuid(os.getuid()).pw_name, run=tmp_path, data=data, confd=confd))
    shipped = SHIPPED_CONF.read_text().replace("listener 1883 127.0.0.1",
                                               f"listener {free_port()} 127.0.0.1")
    (confd / "bracketgate.conf").write_text(shipped.replace("/var/lib/mosquitto/", f"{data}/"))
    proc = _start(tmp_path / "mosquitto.conf")
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("mosquitto started with the shipped file in conf.d: " + out) from None
    assert proc.returncode != 0 and "Duplicate persistence_location" in out, out
