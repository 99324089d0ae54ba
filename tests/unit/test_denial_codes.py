"""docs/DENIAL_CODES.md is generated from DenialCode + DENIAL_MESSAGES + bus/denial_codes.py:
every code has its prose and its place, and the committed file is what the generator writes
(regenerate: `python run.py codes --markdown > docs/DENIAL_CODES.md`)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from bracketgate.bus.denial_codes import CODE_DOCS, GROUPS, render_markdown
from bracketgate.bus.messages import DENIAL_MESSAGES, DenialCode

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "DENIAL_CODES.md"
REGENERATE = "python run.py codes --markdown > docs/DENIAL_CODES.md"


def test_every_code_has_its_prose() -> None:
    assert set(CODE_DOCS) == set(DenialCode), set(DenialCode) ^ set(CODE_DOCS)
    for code, doc in CODE_DOCS.items():
        assert doc.verdict in ("invalid", "rejected"), code
        assert doc.check.strip() and doc.action.strip(), code
        assert code in DENIAL_MESSAGES, code


def test_every_code_is_in_exactly_one_group_in_enum_order() -> None:
    listed = [code for _, codes in GROUPS for code in codes]
    assert Counter(listed) == Counter(set(DenialCode)), Counter(listed) - Counter(set(DenialCode))
    assert listed == list(DenialCode)     # the reference reads like the enum


def test_input_codes_are_the_invalid_ones() -> None:
    invalid = {c for c, d in CODE_DOCS.items() if d.verdict == "invalid"}
    assert invalid == {DenialCode.MALFORMED_JSON, DenialCode.PAYLOAD_TOO_LARGE,
                       DenialCode.VALIDATION_ERROR}


def test_committed_reference_is_what_the_generator_writes() -> None:
    want = render_markdown()
    assert DOC.exists(), f"docs/DENIAL_CODES.md missing: {REGENERATE}"
    assert DOC.read_text() == want, f"docs/DENIAL_CODES.md is stale: {REGENERATE}"
    for code in DenialCode:   # each code one row, with its message
        rows = [line for line in want.splitlines() if line.startswith(f"| `{code.value}` |")]
        assert len(rows) == 1 and DENIAL_MESSAGES[code].replace("|", "\\|") in rows[0], code


def test_cli_prints_the_reference() -> None:
    done = subprocess.run([sys.executable, str(REPO / "run.py"), "codes", "--markdown"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == DOC.read_text()
    plain = subprocess.run([sys.executable, str(REPO / "run.py"), "codes"], capture_output=True,
                           text=True, timeout=60, cwd=REPO)
    assert plain.returncode == 0 and len(plain.stdout.splitlines()) == len(DenialCode)
