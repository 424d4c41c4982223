"""Where files go and how they are written: the user cache dir, and atomic writes (a crash or kill -9
never leaves a half-written dir or file)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
