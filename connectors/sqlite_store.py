"""The embedded store: one SQLite file with full-text search, and its Beam sink.

Tables: ``articles`` (the full JSON plus the columns filters need),
``entities`` and ``article_topics`` (one row per mention / topic, for
filters), ``alerts``, ``dead_letters``, and ``articles_fts``, an FTS5 index
over title and body.

The index holds *folded* text (``core.query.fold``: case, Latin accents,
ß = ss, ё = е, ł = l, hyphens and quotes as separators) tokenized by
``unicode61``, and query words are folded the same way, so "Пётр" finds
"Петр", "aussenminister" finds "Außenminister" and "Lodz" finds "Łódź".
The index is contentless (the text lives once, in ``articles``) and is kept
in sync by the upsert code itself; snippets and highlights are computed from
the original text with the query's words, so they show the article as
written. A change of the folding rules is detected on open and the index is
rebuilt.

Upserts are idempotent: a record whose content hash (everything except
volatile times such as ``fetched`` and ``fired_at``) is unchanged writes
nothing. The file runs in WAL mode; writes are batched in one ``BEGIN
IMMEDIATE`` transaction each and retried through ``core.retry`` when another
writer holds the lock, so several Beam workers can share one file.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import unicodedata
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from connectors.store import (
    DEFAULT_HIGHLIGHT,
    ArticleStore,
    EntityRef,
    Hit,
    SearchResult,
    Snippet,
    StoreError,
    UpsertStats,
)
from core.ids import sha256_hex
from core.query import Node, QueryError, SearchQuery, Term, fold, leaves, parse_time, to_fts5
from core.records import Alert, Article, DeadLetter
from core.retry import Backoff, retry_call

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Bump when core.query.fold changes: the index is then rebuilt on open, because a
# contentless index can only delete a row given exactly the text it indexed. The
# Unicode database version is part of it since case mapping and NFC follow it.
FOLD_VERSION = f"1/unicode-{unicodedata.unidata_version}"
# SQLite's default cap on bound parameters is far above this; chunks keep statements small.
_CHUNK = 400
_SNIPPET_CHARS = 240
_HIT_ENTITIES = 15

_SCHEMA = """
CREATE TABLE IF NOT EXISTS articles (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    url TEXT,
    canonical_url TEXT,
    source TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    language TEXT,
    published TEXT,
    sort_ts REAL,
    fetched TEXT,
    content_hash TEXT,
    doc_hash TEXT NOT NULL,
    doc TEXT NOT NULL,
    stored_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS articles_sort ON articles(sort_ts);
CREATE INDEX IF NOT EXISTS articles_language ON articles(language);
CREATE INDEX IF NOT EXISTS articles_source ON articles(source);

CREATE TABLE IF NOT EXISTS entities (
    article_id TEXT NOT NULL,
    canonical_id TEXT,
    key TEXT,
    label TEXT,
    name TEXT,
    text TEXT NOT NULL,
    field TEXT,
    start INTEGER,
    "end" INTEGER,
    source TEXT
);
CREATE INDEX IF NOT EXISTS entities_article ON entities(article_id);
CREATE INDEX IF NOT EXISTS entities_canonical ON entities(canonical_id, article_id);
CREATE INDEX IF NOT EXISTS entities_key ON entities(key, article_id);

CREATE TABLE IF NOT EXISTS article_topics (
    article_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    PRIMARY KEY (article_id, topic)
);
CREATE INDEX IF NOT EXISTS article_topics_topic ON article_topics(topic, article_id);

CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    article_id TEXT NOT NULL,
    severity TEXT,
    fired_at TEXT NOT NULL,
    fired_ts REAL,
    doc_hash TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_rule ON alerts(rule_id, fired_ts);
CREATE INDEX IF NOT EXISTS alerts_fired ON alerts(fired_ts);
CREATE INDEX IF NOT EXISTS alerts_article ON alerts(article_id);

CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    stage TEXT,
    reason TEXT,
    origin TEXT,
    at TEXT,
    stored_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_stored ON dead_letters(stored_at);

CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE VIRTUAL TABLE IF NOT EXISTS articles_fts USING fts5(
    title, body,
    content='',
    tokenize='unicode61 remove_diacritics 2'
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _timestamp(value: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 or RFC 2822 time; None when it is missing or unreadable."""
    if not value:
        return None
    try:
        dt = parse_time(value)
    except QueryError:
        try:
            dt = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp() if dt else None


def _article_hash(article: Article) -> str:
    d = article.to_dict()
    d.pop("fetched", None)  # a re-fetch of the same article is not a change
    return sha256_hex(json.dumps(d, ensure_ascii=False, sort_keys=True))


def _alert_hash(alert: Alert) -> str:
    d = alert.to_dict()
    d.pop("fired_at", None)  # a replay fires again at a new time; the alert is the same
    return sha256_hex(json.dumps(d, ensure_ascii=False, sort_keys=True))


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def _chunks(seq: Sequence, size: int = _CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _last_wins(records: Iterable, key) -> list:
    by_id: dict[str, Any] = {}
    for r in records:
        by_id[key(r)] = r
    return list(by_id.values())


class SqliteStore(ArticleStore):
    """An :class:`ArticleStore` in one SQLite file (or ``":memory:"`` for tests).

    ``dead_letter_path``: newly stored dead letters are also appended there as
    JSON lines. ``highlight``: the (open, close) markers around matches in
    snippets, « and » by default so that output stays readable without a
    terminal's colours.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        dead_letter_path: str | Path | None = None,
        highlight: tuple[str, str] = DEFAULT_HIGHLIGHT,
        timeout_s: float = 30.0,
        write_attempts: int = 6,
    ):
        self.path = str(path)
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path else None
        self.highlight = highlight
        self._attempts = write_attempts
        self._lock = threading.RLock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE,
            # so that a writer takes the lock up front instead of failing on upgrade.
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            if self.path != ":memory:":
                retry_call(lambda: self._db.execute("PRAGMA journal_mode = WAL"), is_transient=_is_busy, what="sqlite.wal")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._write(self._create_schema, what="sqlite.schema")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the SQLite store at {self.path}: {exc}",
                hint="check that the folder exists and is writable (settings: store.path, NEWSWATCH_STORE__PATH)",
            ) from exc
        log.debug("sqlite_store opened path=%s", self.path)

    # --- plumbing ---------------------------------------------------------

    def _create_schema(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer newswatch (schema {version} > {SCHEMA_VERSION})")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        row = db.execute("SELECT value FROM meta WHERE key = 'fold_version'").fetchone()
        if row is None or row[0] != FOLD_VERSION:
            self._rebuild_index(db)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fold_version', ?)", (FOLD_VERSION,))

    @staticmethod
    def _rebuild_index(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO articles_fts (articles_fts) VALUES ('delete-all')")
        n = 0
        for row in db.execute("SELECT n, title, body FROM articles").fetchall():
            db.execute("INSERT INTO articles_fts (rowid, title, body) VALUES (?, ?, ?)", (row[0], fold(row[1]), fold(row[2])))
            n += 1
        if n:
            log.info("sqlite_store.reindex articles=%d fold_version=%s", n, FOLD_VERSION)

    def rebuild_index(self) -> None:
        """Re-create the full-text index from the stored articles."""
        self._write(self._rebuild_index, what="sqlite.rebuild_index")

    def _write(self, work, *, what: str):
        """Run ``work(db)`` in one immediate transaction, retrying while another writer holds the lock."""

        def attempt():
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                return result

        return retry_call(
            attempt, attempts=self._attempts, backoff=Backoff(base_s=0.05, cap_s=2.0), is_transient=_is_busy, what=what
        )

    def _read(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _existing(self, db: sqlite3.Connection, table: str, ids: Sequence[str], cols: str = "id, doc_hash") -> dict[str, sqlite3.Row]:
        found: dict[str, sqlite3.Row] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for row in db.execute(f"SELECT {cols} FROM {table} WHERE id IN ({marks})", chunk):
                found[row["id"]] = row
        return found

    # --- writes -----------------------------------------------------------

    def upsert_articles(self, articles: Iterable[Article]) -> UpsertStats:
        batch = _last_wins(articles, lambda a: a.id)
        if not batch:
            return UpsertStats()

        def work(db: sqlite3.Connection) -> UpsertStats:
            stats = UpsertStats()
            existing = self._existing(db, "articles", [a.id for a in batch], "id, doc_hash, n, title, body")
            now = _now()
            for art in batch:
                digest = _article_hash(art)
                old = existing.get(art.id)
                if old is not None and old["doc_hash"] == digest:
                    stats.unchanged += 1
                    continue
                cols = (
                    art.url, art.canonical_url, art.source, art.title, art.body, art.language, art.published,
                    _timestamp(art.published) or _timestamp(art.fetched), art.fetched, art.content_hash, digest, art.to_json(),
                )
                if old is None:
                    cur = db.execute(
                        "INSERT INTO articles (url, canonical_url, source, title, body, language, published, sort_ts,"
                        " fetched, content_hash, doc_hash, doc, stored_at, updated_at, id)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (*cols, now, now, art.id),
                    )
                    rowid = cur.lastrowid
                    stats.inserted += 1
                else:
                    rowid = old["n"]
                    db.execute(
                        "UPDATE articles SET url=?, canonical_url=?, source=?, title=?, body=?, language=?, published=?,"
                        " sort_ts=?, fetched=?, content_hash=?, doc_hash=?, doc=?, updated_at=? WHERE id=?",
                        (*cols, now, art.id),
                    )
                    # A contentless index deletes a row given exactly the text it indexed.
                    db.execute(
                        "INSERT INTO articles_fts (articles_fts, rowid, title, body) VALUES ('delete', ?, ?, ?)",
                        (rowid, fold(old["title"]), fold(old["body"])),
                    )
                    db.execute("DELETE FROM entities WHERE article_id = ?", (art.id,))
                    db.execute("DELETE FROM article_topics WHERE article_id = ?", (art.id,))
                    stats.updated += 1
                db.execute(
                    "INSERT INTO articles_fts (rowid, title, body) VALUES (?, ?, ?)", (rowid, fold(art.title), fold(art.body))
                )
                db.executemany(
                    'INSERT INTO entities (article_id, canonical_id, key, label, name, text, field, start, "end", source)'
                    " VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [
                        (art.id, e.canonical_id, e.key or e.canonical_id or e.text.casefold(), e.label,
                         e.canonical_name or e.text, e.text, e.field, e.start, e.end, e.source)
                        for e in art.entities
                    ],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO article_topics (article_id, topic) VALUES (?, ?)",
                    [(art.id, t) for t in art.topics],
                )
            return stats

        stats = self._write(work, what="sqlite.upsert_articles")
        log.debug("sqlite_store articles inserted=%d updated=%d unchanged=%d", stats.inserted, stats.updated, stats.unchanged)
        return stats

    def upsert_alerts(self, alerts: Iterable[Alert]) -> UpsertStats:
        batch = _last_wins(alerts, lambda a: a.id)
        if not batch:
            return UpsertStats()

        def work(db: sqlite3.Connection) -> UpsertStats:
            stats = UpsertStats()
            existing = self._existing(db, "alerts", [a.id for a in batch], "id, doc_hash, fired_at")
            for alert in batch:
                digest = _alert_hash(alert)
                old = existing.get(alert.id)
                if old is not None and old["doc_hash"] == digest:
                    stats.unchanged += 1
                    continue
                if old is None:
                    db.execute(
                        "INSERT INTO alerts (id, rule_id, article_id, severity, fired_at, fired_ts, doc_hash, doc)"
                        " VALUES (?,?,?,?,?,?,?,?)",
                        (alert.id, alert.rule_id, alert.article_id, alert.severity, alert.fired_at,
                         _timestamp(alert.fired_at), digest, alert.to_json()),
                    )
                    stats.inserted += 1
                else:
                    # The first firing time is what an analyst needs; a replay must not move it.
                    d = alert.to_dict()
                    d["fired_at"] = old["fired_at"]
                    db.execute(
                        "UPDATE alerts SET rule_id=?, article_id=?, severity=?, doc_hash=?, doc=? WHERE id=?",
                        (alert.rule_id, alert.article_id, alert.severity, digest,
                         json.dumps(d, ensure_ascii=False, sort_keys=True), alert.id),
                    )
                    stats.updated += 1
            return stats

        return self._write(work, what="sqlite.upsert_alerts")

    def add_dead_letters(self, letters: Iterable[DeadLetter]) -> int:
        batch = _last_wins(letters, lambda d: d.id)
        if not batch:
            return 0

        def work(db: sqlite3.Connection) -> list[DeadLetter]:
            existing = self._existing(db, "dead_letters", [d.id for d in batch], "id")
            new = [d for d in batch if d.id not in existing]
            now = _now()
            db.executemany(
                "INSERT INTO dead_letters (id, stage, reason, origin, at, stored_at, doc) VALUES (?,?,?,?,?,?,?)",
                [(d.id, d.stage, d.reason, d.origin, d.at, now, d.to_json()) for d in new],
            )
            return new

        new = self._write(work, what="sqlite.add_dead_letters")
        if new and self.dead_letter_path is not None:
            self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            # One write per batch, so concurrent appenders do not interleave lines.
            with self.dead_letter_path.open("a", encoding="utf-8") as fh:
                fh.write("".join(d.to_json() + "\n" for d in new))
        return len(new)

    # --- reads ------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchResult:
        started = time.perf_counter()
        where: list[str] = []
        params: list[Any] = []
        match = to_fts5(query.ast, fold=fold) if query.ast is not None else None
        if match is not None:
            where.append("articles_fts MATCH ?")
            params.append(match)
        for ent in query.entities:
            where.append(
                "EXISTS (SELECT 1 FROM entities e WHERE e.article_id = a.id AND (e.canonical_id = ? OR e.key = ?))"
            )
            params += [ent, ent]
        for name, values in (("a.language", query.languages), ("a.source", query.sources)):
            if values:
                where.append(f"{name} IN ({','.join('?' * len(values))})")
                params += values
        if query.topics:
            where.append(
                "EXISTS (SELECT 1 FROM article_topics t WHERE t.article_id = a.id"
                f" AND t.topic IN ({','.join('?' * len(query.topics))}))"
            )
            params += query.topics
        if query.since_dt:
            where.append("a.sort_ts >= ?")
            params.append(query.since_dt.timestamp())
        if query.until_dt:
            where.append("a.sort_ts <= ?")
            params.append(query.until_dt.timestamp())
        where_sql = (" WHERE " + " AND ".join(where)) if where else ""
        if match is not None:
            source_sql = "FROM articles_fts JOIN articles a ON a.n = articles_fts.rowid"
        else:
            source_sql = "FROM articles a"

        select = "SELECT a.id, a.title, a.body, a.url, a.language, a.published, a.source, a.doc"
        if match is not None:
            # Title matches weigh more than body matches; bm25 is lower-is-better.
            select += ", bm25(articles_fts, 3.0, 1.0) AS rank"
            order = "rank, a.sort_ts DESC" if query.sort == "relevance" else "a.sort_ts DESC, rank"
        else:
            select += ", NULL AS rank"
            order = "a.sort_ts DESC"
        sql = f"{select} {source_sql}{where_sql} ORDER BY {order}, a.id LIMIT ? OFFSET ?"
        try:
            with self._lock:
                total = self._db.execute(f"SELECT count(*) {source_sql}{where_sql}", params).fetchone()[0]
                rows = self._db.execute(sql, [*params, query.limit, query.offset]).fetchall()
        except sqlite3.OperationalError as exc:
            # Rendering quotes every word, so this is a bug rather than user input; say so clearly.
            raise QueryError(f"the store rejected the query {match!r}: {exc}") from exc
        highlighter = Highlighter(query.ast, self.highlight)
        hits = [self._hit(row, highlighter) for row in rows]
        self._attach_entities(hits)
        return SearchResult(total=total, hits=hits, query=query.to_dict(), took_ms=(time.perf_counter() - started) * 1000)

    def _hit(self, row: sqlite3.Row, highlighter: "Highlighter") -> Hit:
        snippets = []
        title = highlighter.mark(row["title"], "title")
        if title is not None:
            snippets.append(Snippet("title", title))
        body = highlighter.snippet(row["body"], "body")
        if body:
            snippets.append(Snippet("body", body))
        doc = json.loads(row["doc"])
        return Hit(
            article_id=row["id"],
            title=row["title"],
            url=row["url"],
            language=row["language"],
            published=row["published"],
            source=row["source"],
            score=round(-row["rank"], 4) if row["rank"] is not None else None,
            snippets=snippets,
            topics=list(doc.get("topics") or []),
        )

    def _attach_entities(self, hits: list[Hit]) -> None:
        if not hits:
            return
        by_id = {h.article_id: h for h in hits}
        marks = ",".join("?" * len(by_id))
        rows = self._read(
            "SELECT article_id, key, max(name) AS name, max(label) AS label, max(canonical_id) AS canonical_id,"
            f" count(*) AS n FROM entities WHERE article_id IN ({marks})"
            " GROUP BY article_id, key ORDER BY article_id, canonical_id IS NULL, n DESC, key",
            list(by_id),
        )
        for row in rows:
            hit = by_id[row["article_id"]]
            if len(hit.entities) < _HIT_ENTITIES:
                hit.entities.append(
                    EntityRef(key=row["key"], name=row["name"], label=row["label"], canonical_id=row["canonical_id"], count=row["n"])
                )

    def list_alerts(self, rule_id=None, since=None, *, article_id=None, limit=100) -> list[Alert]:
        where, params = [], []
        if rule_id:
            where.append("rule_id = ?")
            params.append(rule_id)
        if article_id:
            where.append("article_id = ?")
            params.append(article_id)
        since_dt = parse_time(since)
        if since_dt:
            where.append("fired_ts >= ?")
            params.append(since_dt.timestamp())
        where_sql = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self._read(f"SELECT doc FROM alerts{where_sql} ORDER BY fired_ts DESC, id LIMIT ?", [*params, int(limit)])
        return [Alert.from_dict(json.loads(r["doc"])) for r in rows]

    def list_dead_letters(self, *, stage=None, limit=100) -> list[DeadLetter]:
        where_sql, params = ("", []) if not stage else (" WHERE stage = ?", [stage])
        rows = self._read(f"SELECT doc FROM dead_letters{where_sql} ORDER BY stored_at DESC, id LIMIT ?", [*params, int(limit)])
        return [DeadLetter.from_dict(json.loads(r["doc"])) for r in rows]

    def get_article(self, article_id: str) -> Article | None:
        rows = self._read("SELECT doc FROM articles WHERE id = ?", (article_id,))
        return Article.from_json(rows[0]["doc"]) if rows else None

    def count_articles(self) -> int:
        return self._read("SELECT count(*) FROM articles")[0][0]

    def count_alerts(self) -> int:
        return self._read("SELECT count(*) FROM alerts")[0][0]

    def count_dead_letters(self) -> int:
        return self._read("SELECT count(*) FROM dead_letters")[0][0]

    def stats(self) -> dict[str, Any]:
        def breakdown(sql: str) -> dict[str, int]:
            return {str(r[0]): r[1] for r in self._read(sql)}

        return {
            "path": self.path,
            "articles": self.count_articles(),
            "alerts": self.count_alerts(),
            "dead_letters": self.count_dead_letters(),
            "entity_mentions": self._read("SELECT count(*) FROM entities")[0][0],
            "by_language": breakdown("SELECT coalesce(language, 'und'), count(*) FROM articles GROUP BY 1 ORDER BY 2 DESC"),
            "by_source": breakdown("SELECT source, count(*) FROM articles GROUP BY 1 ORDER BY 2 DESC"),
            "by_topic": breakdown("SELECT topic, count(*) FROM article_topics GROUP BY 1 ORDER BY 2 DESC"),
            "alerts_by_rule": breakdown("SELECT rule_id, count(*) FROM alerts GROUP BY 1 ORDER BY 2 DESC"),
            "dead_letters_by_reason": breakdown("SELECT reason, count(*) FROM dead_letters GROUP BY 1 ORDER BY 2 DESC"),
        }

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# --- snippets -----------------------------------------------------------------

_WORD = re.compile(r"\w+")


class Highlighter:
    """Finds a query's words in original text the way the index does (folded), and marks them.

    Only positive words count (a NOT-ed word is never highlighted); a word
    with a field restriction is highlighted only in that field.
    """

    def __init__(self, ast: Node | None, marks: tuple[str, str] = DEFAULT_HIGHLIGHT, *, width: int = _SNIPPET_CHARS):
        self.marks = marks
        self.width = width
        self._leaves: list[tuple[tuple[str, ...], bool, str | None]] = []
        for leaf in leaves(ast) if ast is not None else ():
            words = tuple(_WORD.findall(fold(leaf.text)))
            if words:
                self._leaves.append((words, isinstance(leaf, Term) and leaf.prefix, leaf.field))

    def spans(self, text: str, field: str) -> list[tuple[int, int]]:
        """Non-overlapping (start, end) of query matches in ``text``, in order."""
        if not text or not self._leaves:
            return []
        tokens = [(m.start(), m.end(), fold(m.group())) for m in _WORD.finditer(text)]
        words = [t[2] for t in tokens]
        found = []
        for qwords, prefix, only in self._leaves:
            if only and only != field:
                continue
            k = len(qwords)
            for i in range(len(words) - k + 1):
                if words[i : i + k - 1] != list(qwords[:-1]):
                    continue
                last = words[i + k - 1]
                if last == qwords[-1] or (prefix and last.startswith(qwords[-1])):
                    found.append((tokens[i][0], tokens[i + k - 1][1]))
        found.sort(key=lambda s: (s[0], -s[1]))
        merged: list[tuple[int, int]] = []
        for start, end in found:
            if merged and start < merged[-1][1]:
                continue
            merged.append((start, end))
        return merged

    def _marked(self, text: str, spans: list[tuple[int, int]], a: int, b: int) -> str:
        out, pos = [], a
        for start, end in spans:
            if start < a or end > b:
                continue
            out += [text[pos:start], self.marks[0], text[start:end], self.marks[1]]
            pos = end
        out.append(text[pos:b])
        return " ".join("".join(out).split())

    def mark(self, text: str, field: str) -> str | None:
        """The whole text with matches marked, or None when nothing matched."""
        spans = self.spans(text, field)
        return self._marked(text, spans, 0, len(text)) if spans else None

    def snippet(self, text: str, field: str) -> str:
        """About ``width`` characters around the densest cluster of matches (the start when none)."""
        if not text:
            return ""
        spans = self.spans(text, field)
        if spans:
            # The window that holds the most matches, starting a little before one of them.
            best_a, best_count = 0, -1
            for start, _ in spans:
                a = max(0, start - self.width // 5)
                count = sum(1 for s, e in spans if s >= a and e <= a + self.width)
                if count > best_count:
                    best_a, best_count = a, count
            a = best_a
        else:
            a = 0
        b = min(len(text), a + self.width)
        if a > 0:
            space = text.find(" ", a, a + 40)
            a = space + 1 if space != -1 else a
        if b < len(text):
            space = text.rfind(" ", max(a, b - 40), b)
            b = space if space != -1 else b
        return ("…" if a > 0 else "") + self._marked(text, spans, a, b) + ("…" if b < len(text) else "")


# --- Beam sink ---------------------------------------------------------------

KINDS = ("articles", "alerts", "dead_letters")
_TYPES = {"articles": Article, "alerts": Alert, "dead_letters": DeadLetter}


def _kind_of(record) -> str:
    for kind, cls in _TYPES.items():
        if isinstance(record, cls):
            return kind
    raise TypeError(f"WriteToStore takes Article, Alert or DeadLetter records, not {type(record).__name__}")


class _WriteFn(beam.DoFn):
    """Buffers records and writes them in batches; one store connection per DoFn instance."""

    def __init__(self, path: str, dead_letter_path: str | None, batch_size: int, kind: str | None):
        self._path = path
        self._dead_path = dead_letter_path
        self._batch_size = batch_size
        self._kind = kind
        self._store: SqliteStore | None = None
        self._buffers: dict[str, list] = {k: [] for k in KINDS}
        self._counters = {
            (kind, what): Metrics.counter("newswatch", f"store.{kind}.{what}")
            for kind in KINDS
            for what in ("inserted", "updated", "unchanged")
        }

    def setup(self):
        self._store = SqliteStore(self._path, dead_letter_path=self._dead_path)

    def start_bundle(self):
        self._buffers = {k: [] for k in KINDS}

    def process(self, record):
        kind = _kind_of(record)
        if self._kind is not None and kind != self._kind:
            raise TypeError(f"WriteToStore(kind={self._kind!r}) got a {type(record).__name__}")
        self._buffers[kind].append(record)
        if sum(len(b) for b in self._buffers.values()) >= self._batch_size:
            self._flush()

    def finish_bundle(self):
        self._flush()

    def teardown(self):
        if self._store is not None:
            self._store.close()
            self._store = None

    def _flush(self):
        articles, alerts, dead = (self._buffers[k] for k in KINDS)
        self._buffers = {k: [] for k in KINDS}
        for kind, stats in (
            ("articles", self._store.upsert_articles(articles) if articles else None),
            ("alerts", self._store.upsert_alerts(alerts) if alerts else None),
        ):
            if stats is not None:
                for what in ("inserted", "updated", "unchanged"):
                    self._counters[(kind, what)].inc(getattr(stats, what))
        if dead:
            new = self._store.add_dead_letters(dead)
            self._counters[("dead_letters", "inserted")].inc(new)
            self._counters[("dead_letters", "unchanged")].inc(len(dead) - new)
        if articles or alerts or dead:
            log.info(
                "store.write path=%s articles=%d alerts=%d dead_letters=%d", self._path, len(articles), len(alerts), len(dead)
            )


class WriteToStore(beam.PTransform):
    """Write articles, alerts and/or dead letters to the SQLite store at ``settings.store.path``.

    One sink takes any mix of the three record types (a flattened PCollection
    works); ``kind`` ("articles", "alerts", "dead_letters") makes it insist on
    one type. Records are reshuffled (so a retried write does not recompute
    the upstream stages), buffered per DoFn and written in batches of
    ``settings.store.batch_size`` and at the end of every bundle. Dead letters
    are also appended to ``settings.store.dead_letter_path``. A write that still
    fails after the lock retries fails the bundle, so Beam retries it instead
    of dropping records. Counters: ``store.<kind>.inserted|updated|unchanged``.
    The output PCollection is empty; the store is the result.
    """

    def __init__(self, settings, *, kind: str | None = None, reshuffle: bool = True):
        super().__init__()
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self._path = str(settings.store.path)
        self._dead_path = str(settings.store.dead_letter_path) if settings.store.dead_letter_path else None
        self._batch_size = settings.store.batch_size
        self._kind = kind
        self._reshuffle = reshuffle

    def expand(self, pcoll):
        if self._reshuffle:
            pcoll = pcoll | "Reshuffle" >> beam.Reshuffle()
        return pcoll | "Write" >> beam.ParDo(_WriteFn(self._path, self._dead_path, self._batch_size, self._kind))
