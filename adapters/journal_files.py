"""The journal's file on disk: owner-only modes, and the checks made before SQLite opens it.

Nothing here knows the schema: it looks at the file as bytes and as an inode, so that a
corrupt, truncated, unreadable or unwritable journal is refused at open with one sentence
naming the file and the cause (adapters/journal.py turns it into a JournalOpenError).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm")
_MAGIC = b"SQLite format 3\x00"


def prepare(path: Path) -> list[str]:
    """Create the directory (0700) and the file (0600) when missing; bring the journal files we
    own to 0600. Returns warnings (e.g. a directory others can read that we did not create).
    Raises OSError when the directory or the file cannot be created or opened."""
    warnings: list[str] = []
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(parent, DIR_MODE)   # mkdir's mode is masked by the umask
    elif stat.S_IMODE(parent.stat().st_mode) & 0o077:
        warnings.append(f"directory {parent} is accessible to group/others "
                        f"(mode {stat.S_IMODE(parent.stat().st_mode):o}); chmod 700 it")
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, FILE_MODE))
    for file in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            try:
                os.chmod(file, FILE_MODE)
            except OSError as exc:  # e.g. immutable: the open below says what is wrong
                warnings.append(f"cannot chmod {file} to 600: {exc.strerror}")
    return warnings


def usable(path: Path) -> str | None:
    """None when the file can be a journal, else why not (one clause, no path).

    Readable and writable by this process (an existing one), and either empty (a new journal)
    or an SQLite file whose header size fits in the file (a cut-off copy is refused here:
    SQLite itself would only fail later, on the first read of a missing page).
    """
    if path.is_dir():
        return "it is a directory"
    if not os.access(path, os.R_OK):
        return "not readable by this user (permission denied)"
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return "not writable (read-only file or directory)"
    try:
        with path.open("rb") as f:
            header = f.read(100)
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if size == 0:
        return None
    if len(header) < 100 or not header.startswith(_MAGIC):
        return "not an SQLite database (corrupt or another kind of file)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid_for = header[24:28] == header[92:96]
    if page_size < 512 or page_size & (page_size - 1):
        return "not an SQLite database (bad page size: corrupt header)"
    if size % page_size:
        return f"truncated ({size} bytes is not a whole number of {page_size}-byte pages)"
    if valid_for and pages and pages * page_size > size:
        return f"truncated ({size} bytes, the header says {pages * page_size})"
    return None
