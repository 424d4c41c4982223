"""SQLite cache in front of any judge, keyed by (judge id, prompt, response).

Identical pairs recur often (vanilla seeds, refusals, eval re-runs); a cache hit costs a
lookup instead of a classifier call. Parse errors are not cached, so a retry can succeed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

from selfredteam.judges.base import Judge, Judgement


def _key(judge_id: str, prompt: str, response: str | None) -> str:
    payload = json.dumps([judge_id, prompt, response], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class CachedJudge:
    def __init__(self, inner: Judge, path: str | Path) -> None:
        self.inner = inner
        self.judge_id = inner.judge_id
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, labels TEXT NOT NULL)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def judge(self, pairs: list[tuple[str, str | None]]) -> list[Judgement]:
        keys = [_key(self.judge_id, p, r) for p, r in pairs]
        found: dict[str, Judgement] = {}
        with self._lock:
            for k in set(keys):
                row = self._db.execute("SELECT labels FROM judgements WHERE key = ?", (k,)).fetchone()
                if row:
                    found[k] = Judgement(**json.loads(row[0]))
        todo = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(pairs) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = self.inner.judge([pairs[i] for i in todo])
            with self._lock:
                for i, j in zip(todo, fresh):
                    found[keys[i]] = j  # a parse error is returned for this call, never stored
                    if not j.parse_error:
                        self._db.execute("INSERT OR REPLACE INTO judgements VALUES (?, ?)",
                                         (keys[i], json.dumps(j.to_dict())))
                self._db.commit()
        return [found[k] for k in keys]
