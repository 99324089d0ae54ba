"""bracketgate: one namespace for the daemon's rooms, so an installed bracketgate never shadows
another project's `config`, `bus` or `core`.

Installed (`pip install .`), the rooms are real subpackages (bracketgate.adapters, …, see
pyproject.toml's package-dir). Run from a checkout, they are the repository's own top-level
folders: this package's path is extended with the checkout's root, so `bracketgate.adapters` is
`<checkout>/adapters` and the repository keeps its shape.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.2.0"

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "run.py").is_file() and (_checkout / "adapters" / "ib.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821
