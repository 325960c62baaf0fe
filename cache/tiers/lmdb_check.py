"""Checks an LMDB environment before it is memory-mapped, and moves damaged ones aside.

Mapping a damaged ``data.mdb`` is not safe: a file truncated below the last page its
meta page records makes the first read of a missing page raise SIGBUS, which kills the
whole process with no message; a damaged header makes ``mdb_env_open`` fail with
``MDB_INVALID``. `check_environment` reads the two meta pages with plain file I/O and
compares them with the file, so neither reaches LMDB. The meta pages are read before the
file's size, so a writer in another process committing during the check (a shared flash)
is never taken for truncation.

Meta page layout (LMDB 0.9, 64-bit, both meta pages): a 16-byte page header, then
``mm_magic`` (u32, 0xBEEFC0DE) at 16, ``mm_version`` (u32, 1) at 20, ``mm_mapsize`` at 32,
the free DB's ``md_pad`` holding the page size (u32) at 40, ``mm_last_pg`` at 136 and
``mm_txnid`` at 144. Meta page 0 starts at byte 0, meta page 1 one page later.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

DATA_FILE = "data.mdb"
_MAGIC = 0xBEEFC0DE
_VERSION = 1
_META_BYTES = 152


def check_environment(path: Path) -> str | None:
    """None if the environment at ``path`` looks sound (or does not exist yet), else why not.

    Only structure LMDB would trust blindly is checked (the meta pages, the file size);
    the blocks inside carry their own checksums.
    """
    data = Path(path) / DATA_FILE
    if not data.exists():
        return None
    try:
        with open(data, "rb") as f:
            head = f.read(_META_BYTES)
            if len(head) < _META_BYTES:
                size = os.fstat(f.fileno()).st_size
                return f"{data} is {size} bytes, shorter than an LMDB meta page"
            page_size = struct.unpack_from("<I", head, 40)[0]
            if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
                return f"{data}: meta page 0 records an impossible page size {page_size}"
            f.seek(page_size)
            metas = [head, f.read(_META_BYTES)]
            # The size after the meta pages: another process (a shared flash's writer)
            # may commit meanwhile, growing the file and then writing a newer meta page.
            # LMDB never shrinks the file, so a size read later covers the pages read.
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        return f"cannot read {data}: {exc}"
    newest: tuple[int, int] | None = None  # (txnid, last page)
    for i, meta in enumerate(metas):
        if len(meta) < _META_BYTES:
            return f"{data} is {size} bytes, too short for meta page {i}"
        magic, version = struct.unpack_from("<II", meta, 16)
        if magic != _MAGIC or version != _VERSION:
            return f"{data}: meta page {i} is not an LMDB meta page (magic {magic:#x})"
        last_page, txnid = struct.unpack_from("<QQ", meta, 136)
        if newest is None or txnid > newest[0]:
            newest = (txnid, last_page)
    assert newest is not None
    needed = (newest[1] + 1) * page_size
    if size < needed:
        return f"{data} is truncated: {size} bytes, but its last page ends at byte {needed}"
    return None


def move_aside(path: Path) -> Path:
    """Rename the environment directory to ``<name>.quarantined-<UTC timestamp>``; return it.

    Nothing is deleted: the damaged files stay for inspection.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.quarantined-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.quarantined-{stamp}-{n}")
    path.rename(target)
    return target
