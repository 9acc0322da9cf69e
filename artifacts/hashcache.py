"""What a machine remembers between pushes, in one SQLite file (safe for several processes at once):

- the digest of each file it hashed, under the stat fields that say the file is unchanged (git's index does
  the same), so an unchanged file is not read again;
- the blobs and manifests each store is known to hold (keyed by the store's identity, trusted for
  TreeLimits.known_ttl), so an unchanged tree needs no request per blob.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from incl.artifacts.snapshot import StatKey

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ino INTEGER,
                                  ctime_ns INTEGER, digest TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS known (store TEXT, digest TEXT, seen REAL, PRIMARY KEY (store, digest)) WITHOUT ROWID;
"""
_BUSY_TIMEOUT = 30.0  # seconds another process may hold the write lock (a write here takes milliseconds)


class HashCache:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"HashCache({str(self.path)!r})"

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last write to a power cut is fine
            db.executescript(_SCHEMA)
            with db:  # one transaction
                yield db

    def digests(self, root: str) -> dict[str, tuple[StatKey, str]]:
        """Every remembered file under the folder `root` (an absolute path): path → (stat, digest)."""
        with self._db() as db:
            rows = db.execute("SELECT path, size, mtime_ns, ino, ctime_ns, digest FROM files "
                              "WHERE path > ? AND path < ?", (root + "/", root + "0"))
            return {r[0]: (StatKey(*r[1:5]), r[5]) for r in rows}

    def known(self, store: str, ttl: float) -> set[str]:
        """Digests of the blobs and manifests `store` was seen to hold within the last `ttl` seconds."""
        with self._db() as db:
            rows = db.execute("SELECT digest FROM known WHERE store = ? AND seen > ?", (store, time.time() - ttl))
            return {r[0] for r in rows}

    def update(self, *, put: Iterable[tuple[str, StatKey, str]] = (), drop: Iterable[str] = (),
               store: str = "", seen: Iterable[str] = ()) -> None:
        """Remember files' digests, forget files that are gone, record digests the store holds now."""
        put, drop, seen = list(put), list(drop), list(seen)
        if not (put or drop or seen):
            return
        now = time.time()
        with self._db() as db:
            db.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in drop))
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                           ((p, *key, d) for p, key, d in put))
            db.executemany("INSERT OR REPLACE INTO known VALUES (?, ?, ?)", ((store, d, now) for d in seen))
