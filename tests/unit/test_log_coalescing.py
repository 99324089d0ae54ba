"""core/logs.py's writer: the lines of one event-loop step go out as one write, in order.

On a real file (a file descriptor, as stdout is), lines logged inside a running loop wait for
the end of the step; a line from a thread without a loop, or from the stdlib handler, first
writes out what waits, so the file's order is the order the lines were logged in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

from bracketgate.core.logs import _LockedWriter, configure_logging, get_logger


def _events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_a_steps_lines_wait_for_its_end_then_go_out_in_order(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with path.open("w") as f:
        configure_logging("json", "INFO", stream=f)
        log = get_logger("bracketgate.test")

        async def main() -> list[list[str]]:
            seen = []
            log.info("one")
            log.info("two")
            seen.append(_events(path) if path.stat().st_size else [])   # still in this step
            await asyncio.sleep(0)          # the step ends: its drain runs
            await asyncio.sleep(0)
            seen.append(_events(path))
            log.info("three")
            logging.getLogger("thirdparty").warning("stdlib")   # drains "three" first
            seen.append(_events(path))
            t = threading.Thread(target=lambda: log.info("from a thread"))
            log.info("four")
            t.start()
            t.join()
            seen.append(_events(path))
            log.info("five")
            return seen

        seen = asyncio.run(main())
        assert seen[0] == []
        assert seen[1] == ["one", "two"]
        assert seen[2] == ["one", "two", "three", "stdlib"]
        assert seen[3] == ["one", "two", "three", "stdlib", "four", "from a thread"]
        log.info("after the loop")           # no loop: at once, after what waited
        assert _events(path)[-2:] == ["five", "after the loop"]
    configure_logging("json", "INFO")


def test_at_most_pending_max_lines_wait(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    with path.open("w") as f:
        w = _LockedWriter(f, threading.RLock())

        async def main() -> int:
            for i in range(_LockedWriter.PENDING_MAX + 1):
                w.msg(f"line {i}")
            return len(path.read_text().splitlines())

        assert asyncio.run(main()) == _LockedWriter.PENDING_MAX   # the last one still waits
        w.drain()
        assert len(path.read_text().splitlines()) == _LockedWriter.PENDING_MAX + 1


def test_an_in_memory_stream_gets_each_line_at_once() -> None:
    import io

    buf = io.StringIO()
    w = _LockedWriter(buf, threading.RLock())

    async def main() -> str:
        w.msg("x")
        return buf.getvalue()

    assert asyncio.run(main()) == "x\n"
