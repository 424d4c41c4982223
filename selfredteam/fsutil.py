"""Where files go and how they are written: the user cache dir, and atomic writes (a crash or kill -9
never leaves a half-written dir or file)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp dir beside `target`; on success it replaces `target` by one rename.

    An existing `target` is first renamed aside (to a dot-named dir), never deleted in place: a kill
    during a recursive delete would leave a `target` with some of its files, which a reader could take
    for whole. At any moment `target` is the old dir, the new one, or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    old = None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-old-"))
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def cache_dir() -> Path:
    """User cache for models and judge caches: $SELFREDTEAM_CACHE or ~/.cache/selfredteam."""
    root = os.environ.get("SELFREDTEAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "selfredteam"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a UTF-8 JSONL file, one per non-blank line (the first `limit`)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]], append: bool = False) -> None:
    """`rows` as UTF-8 JSONL, non-ASCII kept as is. A new file is written atomically (a reader sees
    the old file or the whole new one); `append=True` adds to it in place (a log kept row by row,
    where a kill loses at most the row being written)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if append:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    else:
        write_text_atomic(path, text)
