"""`pip install .` in a fresh virtualenv gives a `bracketgate` command equal to run.py, and
installs one namespace only: no bare `config`, `bus` or `core` that would shadow another
project's (issue 11). The dependencies are the project's own venv's (--no-deps)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.fixtures.daemon import REPO

pytestmark = [pytest.mark.e2e]


def test_pip_install_gives_the_bracketgate_command_and_one_namespace(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    build = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(REPO), str(build)], check=True, timeout=60)
    # built as pip builds it (setuptools from the registry); the deps are the project venv's
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(build)], check=True, timeout=240,
                   cwd=tmp_path)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    assert (site / "bracketgate" / "adapters" / "ib.py").is_file()
    assert (site / "bracketgate" / "config" / "limits.default.toml").is_file()
    for page in ("index.html", "app.js", "app.css"):   # the dashboard, served by the daemon
        assert (site / "bracketgate" / "core" / "dashboard" / page).is_file(), page
    for bare in ("config", "bus", "core", "agents", "adapters", "sim"):
        assert not (site / bare).exists(), f"{bare} installed at the top level"
    # the command, run away from the checkout, with the project's dependencies on the path
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": deps}
    out = subprocess.run([str(env_dir / "bin" / "bracketgate"), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: bracketgate")
    for command in ("daemon", "sim", "submit", "orders", "status", "dump", "smoke", "journal"):
        assert command in out.stdout
    schema = subprocess.run([str(env_dir / "bin" / "bracketgate"), "schema"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env=env)
    assert schema.returncode == 0 and '"TradeProposal"' in schema.stdout, schema.stderr[-2000:]
    same = subprocess.run([sys.executable, str(REPO / "run.py"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert same.stdout.split("\n", 1)[1] == out.stdout.split("\n", 1)[1]   # the same commands
