"""What the feed poller remembers between runs: feed health and the items already published.

One SQLite file (``settings.fetch.state_path``) holds, per feed, the
conditional-GET validators and health (:class:`FeedRecord`: etag,
last_modified, last_success, last_error, consecutive_errors, next_poll_at,
items_seen and the rest of :class:`connectors.feeds.FeedState`), and per item
a seen key with a fingerprint of its content. An item is published again only
when its key is new or its content changed (a corrected article). Keys of
items that left the feed long ago are pruned down to a cap per feed, so the
file stays small however long the poller runs.

File sources keep their position (files already read) here too, under a
name, so ``newswatch ingest`` over a folder also resumes after a restart.

One connection serves the poller's loop; a lock makes each call atomic, so
the store may be created in one thread and used in another. Other
processes (``newswatch feeds status``) read it through SQLite's WAL.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from connectors.feeds import FeedState
from core.ids import canonical_url, content_hash, stable_id
from core.records import DeadLetter, RawArticle

log = logging.getLogger(__name__)

# Enough for the largest real feeds (a few hundred items) many times over.
DEFAULT_MAX_SEEN_PER_FEED = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds (
    url TEXT PRIMARY KEY,
    etag TEXT,
    last_modified TEXT,
    last_success TEXT,
    last_error TEXT,
    consecutive_errors INTEGER NOT NULL DEFAULT 0,
    next_poll_at REAL,
    items_seen INTEGER NOT NULL DEFAULT 0,
    ttl_s REAL,
    state_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    feed_url TEXT NOT NULL,
    item_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (feed_url, item_key)
);
CREATE INDEX IF NOT EXISTS seen_by_age ON seen (feed_url, last_seen);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY,
    position_json TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


def _locked(method):
    def inner(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    inner.__name__, inner.__doc__ = method.__name__, method.__doc__
    return inner


def item_key(record: RawArticle | DeadLetter) -> str:
    """The identity of a feed item across polls: guid, else canonical link, else content.

    Dead letters of bad entries get a key too, so that one broken entry is
    reported once, not on every poll.
    """
    if isinstance(record, DeadLetter):
        return "dead:" + record.id
    if record.guid:
        return "guid:" + record.guid.strip()
    link = canonical_url(record.url)
    if link:
        return "url:" + link
    return "hash:" + content_hash(record.title or "", record.body or "")


def item_fingerprint(record: RawArticle | DeadLetter) -> str:
    """Changes when an item's visible content changes (a corrected headline or text)."""
    if isinstance(record, DeadLetter):
        return record.id
    return stable_id(content_hash(record.title or "", record.body or ""), record.url or "", length=16)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


@dataclass
class FeedRecord:
    """One feed's persistent health: the fetch state plus the poller's schedule."""

    url: str
    state: FeedState
    next_poll_at: float | None = None  # epoch seconds; None means poll at once
    items_seen: int = 0
    ttl_s: float | None = None  # the feed's own <ttl> or sy:updatePeriod, in seconds
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def consecutive_errors(self) -> int:
        return self.state.failures

    def status(self, now: float) -> dict[str, Any]:
        """Plain data for ``newswatch feeds status``."""
        s = self.state
        return {
            "url": self.url,
            "last_success": s.last_success,
            "last_checked": s.last_checked,
            "last_status": s.last_status,
            "consecutive_errors": s.failures,
            "last_error": s.last_error,
            "next_poll_at": _iso(self.next_poll_at),
            "next_poll_in_s": None if self.next_poll_at is None else round(max(0.0, self.next_poll_at - now), 1),
            "items_seen": self.items_seen,
            "entries_last_poll": s.entries,
            "ttl_s": self.ttl_s,
            "etag": s.etag,
            "last_modified": s.last_modified,
            "publish_errors": self.extra.get("publish_errors", 0),
        }


class FeedStateStore:
    """SQLite-backed feed health and seen items (see the module docstring)."""

    def __init__(self, path: str | Path, *, max_seen_per_feed: int = DEFAULT_MAX_SEEN_PER_FEED,
                 clock: Callable[[], float] = time.time, readonly: bool = False):
        self.path = Path(path)
        self.max_seen_per_feed = max_seen_per_feed
        self._clock = clock
        self._lock = threading.RLock()
        if readonly:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            # WAL lets `newswatch feeds status` read while the poller writes.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._db.commit()

    def __enter__(self) -> "FeedStateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @_locked
    def close(self) -> None:
        self._db.close()

    # --- feeds ---------------------------------------------------------------

    @_locked
    def load(self, url: str) -> FeedRecord | None:
        row = self._db.execute(
            "SELECT state_json, next_poll_at, items_seen, ttl_s FROM feeds WHERE url = ?", (url,)
        ).fetchone()
        return self._record(url, *row) if row else None

    def load_or_new(self, url: str) -> FeedRecord:
        return self.load(url) or FeedRecord(url=url, state=FeedState(url=url))

    @_locked
    def all(self) -> list[FeedRecord]:
        rows = self._db.execute("SELECT url, state_json, next_poll_at, items_seen, ttl_s FROM feeds ORDER BY url").fetchall()
        return [self._record(*row) for row in rows]

    @staticmethod
    def _record(url: str, state_json: str, next_poll_at: float | None, items_seen: int, ttl_s: float | None) -> FeedRecord:
        data = json.loads(state_json)
        extra = data.pop("_extra", {})
        return FeedRecord(url=url, state=FeedState.from_dict(data), next_poll_at=next_poll_at,
                          items_seen=items_seen, ttl_s=ttl_s, extra=extra)

    @_locked
    def save(self, record: FeedRecord) -> None:
        s = record.state
        data = {**s.to_dict(), "_extra": record.extra}
        self._db.execute(
            """INSERT INTO feeds (url, etag, last_modified, last_success, last_error, consecutive_errors,
                                  next_poll_at, items_seen, ttl_s, state_json)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(url) DO UPDATE SET etag=excluded.etag, last_modified=excluded.last_modified,
                   last_success=excluded.last_success, last_error=excluded.last_error,
                   consecutive_errors=excluded.consecutive_errors, next_poll_at=excluded.next_poll_at,
                   items_seen=excluded.items_seen, ttl_s=excluded.ttl_s, state_json=excluded.state_json""",
            (record.url, s.etag, s.last_modified, s.last_success, s.last_error, s.failures,
             record.next_poll_at, record.items_seen, record.ttl_s, json.dumps(data, ensure_ascii=False)),
        )
        self._db.commit()

    # --- seen items ----------------------------------------------------------

    @_locked
    def unseen(self, feed_url: str, records: Iterable[RawArticle | DeadLetter]) -> tuple[list, list]:
        """Split records into (new or changed, already seen unchanged), keeping their order.

        Duplicates inside one poll (a feed listing an item twice) count once.
        """
        keyed = [(item_key(r), item_fingerprint(r), r) for r in records]
        known = self._fingerprints(feed_url, [k for k, _, _ in keyed])
        fresh, stale, batch = [], [], set()
        for key, fp, record in keyed:
            if known.get(key) == fp or (key, fp) in batch:
                stale.append(record)
            else:
                fresh.append(record)
                batch.add((key, fp))
        return fresh, stale

    def _fingerprints(self, feed_url: str, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        # SQLite limits bound parameters; 500 per query stays well below it.
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for key, fp in self._db.execute(
                f"SELECT item_key, fingerprint FROM seen WHERE feed_url = ? AND item_key IN ({marks})", (feed_url, *chunk)
            ):
                found[key] = fp
        return found

    @_locked
    def mark_seen(self, feed_url: str, records: Iterable[RawArticle | DeadLetter], now: float | None = None) -> int:
        """Remember records as published (or as still listed); returns how many keys were new."""
        now = self._clock() if now is None else now
        rows = [(feed_url, item_key(r), item_fingerprint(r), now, now) for r in records]
        if not rows:
            return 0
        before = self.seen_count(feed_url)
        self._db.executemany(
            """INSERT INTO seen (feed_url, item_key, fingerprint, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT(feed_url, item_key) DO UPDATE SET fingerprint=excluded.fingerprint, last_seen=excluded.last_seen""",
            rows,
        )
        self._db.commit()
        self.prune(feed_url)
        return max(0, self.seen_count(feed_url) - before)

    @_locked
    def seen_count(self, feed_url: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM seen WHERE feed_url = ?", (feed_url,)).fetchone()[0]

    @_locked
    def prune(self, feed_url: str, keep: int | None = None) -> int:
        """Forget the least recently listed keys beyond ``keep`` (default: the store's cap)."""
        keep = self.max_seen_per_feed if keep is None else keep
        cur = self._db.execute(
            """DELETE FROM seen WHERE feed_url = ? AND item_key IN (
                   SELECT item_key FROM seen WHERE feed_url = ? ORDER BY last_seen DESC, first_seen DESC
                   LIMIT -1 OFFSET ?)""",
            (feed_url, feed_url, keep),
        )
        self._db.commit()
        if cur.rowcount:
            log.debug("seen pruned feed=%s removed=%d keep=%d", feed_url, cur.rowcount, keep)
        return cur.rowcount

    # --- file sources ----------------------------------------------------------

    @_locked
    def load_position(self, name: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT position_json FROM sources WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    @_locked
    def save_position(self, name: str, position: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO sources (name, position_json, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET position_json=excluded.position_json, updated=excluded.updated",
            (name, json.dumps(position, ensure_ascii=False), self._clock()),
        )
        self._db.commit()
