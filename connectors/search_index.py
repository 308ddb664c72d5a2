"""The search-server store: one ArticleStore over OpenSearch or Elasticsearch, and its Beam sink.

Everything both servers share lives here: the versioned index mappings, the
documents written for articles, alerts and dead letters, the rendering of
:mod:`core.query` ASTs into ``bool`` queries, the reading of hits, the error
classification, and :class:`IndexStore`, which implements
:class:`connectors.store.ArticleStore` over a small :class:`Backend`. The two
backends (``connectors/opensearch_backend.py`` and
``connectors/elasticsearch_backend.py``) only translate calls and errors of
their client library. :func:`open_index` picks one from ``IndexSettings``.

Indices, for ``index_prefix: newswatch``::

    newswatch-articles-v1      alias newswatch-articles
    newswatch-alerts-v1        alias newswatch-alerts
    newswatch-dead-letters-v1  alias newswatch-dead-letters

Reads and writes go through the aliases (writes with ``require_alias`` so a
missing alias never auto-creates an unmapped index), so a later mapping
version can be built next to the old one and switched over atomically.

Results match the SQLite store's: the same query syntax, the same filters
(every entity, any language/topic/source, since/until on published-or-fetched),
the same result shape with «» highlights. Matching differs where the server
is better: each text field also has per-language subfields (``title.de`` with
the German analyzer, …), so "Gesprächen" finds "Gespräche"; ranking is BM25
over several fields and is not the same order as SQLite's.

Writes are idempotent and report inserted/updated/unchanged like SQLite: the
stored ``doc_hash`` of each id is fetched (``mget``, real-time) and only new or
changed records are sent, new ones with ``op_type=create`` and changed ones
with ``if_seq_no``/``if_primary_term``, so concurrent writers cannot overwrite
each other blindly; a version conflict re-reads and decides again. Throttling
(429), unavailable servers (502/503/504) and connection errors are retried
through :func:`core.retry.retry_call` until ``retry_deadline_s``; in a bulk
response only the failed items are retried. Records the server rejects for
good (mapping errors) come back as ``DeadLetter`` (stage ``index.write``).
"""

from __future__ import annotations

import abc
import json
import logging
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

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
from core.query import And, Node, Not, Or, Phrase, QueryError, SearchQuery, Term, parse_time
from core.records import Alert, Article, DeadLetter
from core.retry import Backoff, TransientError, retry_call

log = logging.getLogger(__name__)

MAPPING_VERSION = 1
KINDS = ("articles", "alerts", "dead_letters")
_INDEX_SUFFIX = {"articles": "articles", "alerts": "alerts", "dead_letters": "dead-letters"}

# The built-in analyzers of the analysis-common module (in every OpenSearch and
# Elasticsearch distribution); Polish and Ukrainian need plugins (analysis-stempel,
# analysis-ukrainian) and fall back to "standard" when the server lacks them.
LANGUAGE_ANALYZERS = {"de": "german", "en": "english", "ru": "russian", "fr": "french", "pl": "polish", "uk": "ukrainian"}
PLUGIN_ANALYZERS = frozenset({"polish", "ukrainian"})
FALLBACK_ANALYZER = "standard"
TEXT_FIELDS = ("title", "body")
TITLE_BOOST = 3.0  # the SQLite store weighs title matches 3:1 in bm25 too

# What one hit shows, matching the SQLite store.
_HIT_ENTITIES = 15
_BODY_FRAGMENT_CHARS = 200
_NO_TEXT_BODY_CHARS = 240
_PREFIX_MAX_EXPANSIONS = 200
_MAX_RESULT_WINDOW = 10_000  # the servers' default index.max_result_window
_MAX_BULK_BYTES = 8 * 1024 * 1024  # well under http.max_content_length (100 MB) and kind to the heap
_CONFLICT_ROUNDS = 5
_READ_ATTEMPTS = 3
_WRITE_BACKOFF = Backoff(base_s=0.5, cap_s=15.0)
_READ_BACKOFF = Backoff(base_s=0.2, cap_s=2.0)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


# --- errors --------------------------------------------------------------------


class IndexUnavailable(StoreError):
    """The search server cannot be reached (or stays overloaded) within the deadline."""

    code = "index_unavailable"


class IndexSetupError(StoreError):
    """The server answers but is not usable as configured (wrong product, version, mapping, credentials)."""

    code = "index_setup"


class ServerError(Exception):
    """An HTTP error response from the search server, as a backend reports it."""

    def __init__(self, status: int, error_type: str | None, reason: str | None):
        super().__init__(f"{status} {error_type or 'error'}: {reason or ''}".strip())
        self.status = status
        self.error_type = error_type
        self.reason = reason

    @property
    def transient(self) -> bool:
        return request_verdict(self.status, self.error_type) == "retry"


class Unreachable(TransientError):
    """No HTTP response at all: connection refused or reset, timeout, DNS failure."""


# Statuses worth another try: throttled, or the server (or a proxy) temporarily unavailable.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# 500s that a retry cannot fix: the request itself is wrong (e.g. a query with too many clauses).
_PERMANENT_500 = frozenset({"mapper_parsing_exception", "search_phase_execution_exception", "query_shard_exception"})


def item_verdict(status: int, error_type: str | None = None) -> str:
    """What to do with one bulk item: ok, retry, conflict, missing_index or reject."""
    if 200 <= status < 300:
        return "ok"
    if status in _RETRY_STATUSES:
        return "retry"
    if status == 409 and error_type in (None, "version_conflict_engine_exception"):
        return "conflict"
    if status == 404 and error_type == "index_not_found_exception":
        return "missing_index"
    return "reject"


def request_verdict(status: int, error_type: str | None = None) -> str:
    """What to do when a whole request fails: retry, missing_index, too_large, auth, or reject."""
    if status in _RETRY_STATUSES or (status == 500 and error_type not in _PERMANENT_500):
        # A request-level 500 is a node failure (shard failures, OOM) more often than a bad request.
        return "retry"
    if status == 404 and error_type in (None, "index_not_found_exception"):
        return "missing_index"
    if status == 413:
        return "too_large"
    if status in (401, 403):
        return "auth"
    return "reject"


def is_transient(exc: BaseException) -> bool:
    """The classification :func:`core.retry.retry_call` uses at every call to the server."""
    if isinstance(exc, TransientError):
        return True
    return isinstance(exc, ServerError) and exc.transient


# --- names and mappings --------------------------------------------------------------


@dataclass(frozen=True)
class IndexNames:
    """The alias and the versioned concrete index of each kind, for one prefix."""

    prefix: str
    version: int = MAPPING_VERSION

    def alias(self, kind: str) -> str:
        return f"{self.prefix}-{_INDEX_SUFFIX[kind]}"

    def concrete(self, kind: str) -> str:
        return f"{self.alias(kind)}-v{self.version}"


def check_prefix(prefix: str) -> str:
    if not _NAME.match(prefix or "") or len(prefix) > 200:
        raise IndexSetupError(
            f"index_prefix {prefix!r} is not a valid index name",
            hint="use lower-case letters, digits, '-', '_' or '.', starting with a letter or digit (index.index_prefix)",
        )
    return prefix


def analysis_settings() -> dict[str, Any]:
    """The base text analyzer: Unicode word boundaries, lower case, Latin accents folded (like SQLite's unicode61)."""
    return {
        "analyzer": {
            "nw_text": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase", "asciifolding"]},
        }
    }


def _text_field(analyzers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "text",
        "analyzer": "nw_text",
        "fields": {lang: {"type": "text", "analyzer": name} for lang, name in analyzers.items()},
    }


def resolve_analyzers(available: Callable[[str], bool] | None = None) -> dict[str, str]:
    """Language → analyzer; plugin analyzers are used only when ``available(name)`` says the server has them."""
    out = {}
    for lang, name in LANGUAGE_ANALYZERS.items():
        if name in PLUGIN_ANALYZERS and (available is None or not available(name)):
            name = FALLBACK_ANALYZER
        out[lang] = name
    return out


def _kw(ignore_above: int = 1024) -> dict[str, Any]:
    return {"type": "keyword", "ignore_above": ignore_above}


# Dates arrive from feeds in many shapes; a malformed one must not reject the
# article (the raw value stays in _source, sort_ts carries the parsed time).
_DATE = {"type": "date", "format": "strict_date_optional_time||epoch_millis", "ignore_malformed": True}
_SOURCE_ONLY = {"type": "keyword", "index": False, "doc_values": False}


def article_mapping(analyzers: dict[str, str]) -> dict[str, Any]:
    return {
        "dynamic": "strict",
        "_meta": {"newswatch": {"kind": "articles", "mapping_version": MAPPING_VERSION, "analyzers": analyzers}},
        "properties": {
            "id": _kw(),
            "url": _kw(4096),
            "canonical_url": _kw(4096),
            "source": _kw(),
            "title": _text_field(analyzers),
            "body": _text_field(analyzers),
            "published": _DATE,
            "fetched": _DATE,
            "content_hash": _kw(),
            "language": _kw(64),
            "language_score": {"type": "float"},
            "topics": _kw(),
            "origin": _kw(4096),
            "schema": {"type": "integer"},
            "entities": {
                "type": "nested",
                "dynamic": "strict",
                "properties": {
                    "text": {"type": "keyword", "ignore_above": 512, "fields": {"text": {"type": "text", "analyzer": "nw_text"}}},
                    "label": _kw(64),
                    "start": {"type": "integer"},
                    "end": {"type": "integer"},
                    "field": _kw(16),
                    "canonical_id": _kw(),
                    "canonical_name": _kw(512),
                    "key": _kw(512),
                    "source": _kw(128),
                    "score": {"type": "float"},
                },
            },
            # Derived when written, for filters and sorting.
            "sort_ts": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
            "entity_canonical_ids": _kw(),
            "entity_keys": _kw(512),
            "doc_hash": _SOURCE_ONLY,
            "indexed_at": {"type": "date"},
        },
    }


def alert_mapping() -> dict[str, Any]:
    return {
        "dynamic": "strict",
        "_meta": {"newswatch": {"kind": "alerts", "mapping_version": MAPPING_VERSION}},
        "properties": {
            "id": _kw(),
            "rule_id": _kw(),
            "rule_name": {"type": "keyword", "ignore_above": 1024, "fields": {"text": {"type": "text", "analyzer": "nw_text"}}},
            "article_id": _kw(),
            "title": {"type": "text", "analyzer": "nw_text"},
            "language": _kw(64),
            "url": _kw(4096),
            "matches": {
                "type": "object",
                "dynamic": "strict",
                "properties": {
                    "text": _kw(1024),
                    "field": _kw(16),
                    "start": {"type": "integer"},
                    "end": {"type": "integer"},
                    "term": _kw(1024),
                    "kind": _kw(32),
                },
            },
            "snippet": {"type": "text", "analyzer": "nw_text"},
            "fired_at": _DATE,
            "published": _DATE,
            "severity": _kw(32),
            "fired_ts": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
            "doc_hash": _SOURCE_ONLY,
        },
    }


def dead_letter_mapping() -> dict[str, Any]:
    return {
        "dynamic": "strict",
        "_meta": {"newswatch": {"kind": "dead_letters", "mapping_version": MAPPING_VERSION}},
        "properties": {
            "id": _kw(),
            "stage": _kw(),
            "reason": _kw(),
            "detail": {"type": "text", "analyzer": "nw_text"},
            # The payload can be a whole article; it is kept, not indexed.
            "payload": {"type": "text", "index": False},
            "origin": _kw(4096),
            "at": _DATE,
            "error_class": _kw(),
            "stored_at": {"type": "date"},
        },
    }


def index_body(kind: str, analyzers: dict[str, str], alias: str) -> dict[str, Any]:
    """The create-index request for one kind: settings, strict mapping, and the alias."""
    mapping = {"articles": lambda: article_mapping(analyzers), "alerts": alert_mapping, "dead_letters": dead_letter_mapping}[kind]()
    settings: dict[str, Any] = {
        "number_of_shards": 1,
        "analysis": analysis_settings(),
        # Highlighting re-analyses the stored text; the default 1M-character cap would
        # turn one long article into a failed search for everyone.
        "highlight": {"max_analyzed_offset": 10_000_000},
    }
    return {"settings": {"index": settings}, "mappings": mapping, "aliases": {alias: {}}}


# --- documents ---------------------------------------------------------------------


def timestamp(value: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 or RFC 2822 time; None when missing or unreadable (as the SQLite store)."""
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


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def article_hash(article: Article) -> str:
    """Everything but the fetch time: a re-fetch of the same article is not a change."""
    d = article.to_dict()
    d.pop("fetched", None)
    return sha256_hex(json.dumps(d, ensure_ascii=False, sort_keys=True))


def alert_hash(alert: Alert) -> str:
    """Everything but the firing time: a replay fires again at a new time, the alert is the same."""
    d = alert.to_dict()
    d.pop("fired_at", None)
    return sha256_hex(json.dumps(d, ensure_ascii=False, sort_keys=True))


def entity_key(entity) -> str:
    return entity.key or entity.canonical_id or entity.text.casefold()


def article_doc(article: Article, digest: str | None = None) -> dict[str, Any]:
    """The indexed document: the article's JSON plus the fields filters and sorting need."""
    d = article.to_dict()
    d["sort_ts"] = _iso(timestamp(article.published) or timestamp(article.fetched))
    d["entity_canonical_ids"] = sorted({e.canonical_id for e in article.entities if e.canonical_id})
    d["entity_keys"] = sorted({entity_key(e) for e in article.entities})
    d["doc_hash"] = digest or article_hash(article)
    d["indexed_at"] = _now()
    return d


def alert_doc(alert: Alert, digest: str | None = None, first_fired_at: str | None = None) -> dict[str, Any]:
    d = alert.to_dict()
    if first_fired_at:
        d["fired_at"] = first_fired_at
    d["fired_ts"] = _iso(timestamp(d["fired_at"]))
    d["doc_hash"] = digest or alert_hash(alert)
    return d


def dead_letter_doc(letter: DeadLetter) -> dict[str, Any]:
    d = letter.to_dict()
    d["stored_at"] = _now()
    return d


# --- query rendering -----------------------------------------------------------------


def search_fields(field_name: str | None, languages: Iterable[str] = LANGUAGE_ANALYZERS) -> list[str]:
    """The fields one word or phrase is looked for in: each text field and its language subfields."""
    out = []
    for name in (field_name,) if field_name else TEXT_FIELDS:
        boost = f"^{TITLE_BOOST:g}" if name == "title" else ""
        out.append(name + boost)
        out.extend(f"{name}.{lang}{boost}" for lang in languages)
    return out


_ASCII_EXTRA = str.maketrans({"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"})


def fold(text: str) -> str:
    """Lower case and fold Latin accents the way the ``nw_text`` analyzer does, for prefix queries (which are not analysed)."""
    out = []
    for ch in text.lower():
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        # Only Latin letters fold to ASCII (Lucene's asciifolding); Cyrillic й stays й.
        out.append(base if base and base.isascii() else ch.translate(_ASCII_EXTRA))
    return "".join(out)


_ONE_WORD = re.compile(r"^\w+$")


def render_query(node: Node) -> dict[str, Any]:
    """A query AST as a ``bool`` query (see core/query.py for the mapping of each node)."""
    if isinstance(node, (Term, Phrase)) and not (isinstance(node, Term) and node.prefix):
        # A word is a one-token phrase: "SNV-III" keeps its parts in order, as in FTS5.
        return {"multi_match": {"query": node.text, "type": "phrase", "fields": search_fields(node.field)}}
    if isinstance(node, Term):
        fields = (node.field,) if node.field else TEXT_FIELDS
        if _ONE_WORD.match(node.text):
            # A plain prefix query has no cap on how many words it expands to.
            clauses = [
                {"prefix": {f: {"value": fold(node.text), **({"boost": TITLE_BOOST} if f == "title" else {})}}} for f in fields
            ]
            return clauses[0] if len(clauses) == 1 else {"bool": {"should": clauses, "minimum_should_match": 1}}
        return {
            "multi_match": {
                "query": node.text,
                "type": "phrase_prefix",
                "fields": [f + (f"^{TITLE_BOOST:g}" if f == "title" else "") for f in fields],
                "max_expansions": _PREFIX_MAX_EXPANSIONS,
            }
        }
    if isinstance(node, And):
        must = [render_query(c) for c in node.children if not isinstance(c, Not)]
        must_not = [render_query(c.child) for c in node.children if isinstance(c, Not)]
        body: dict[str, Any] = {"must": must}
        if must_not:
            body["must_not"] = must_not
        return {"bool": body}
    if isinstance(node, Or):
        return {"bool": {"should": [render_query(c) for c in node.children], "minimum_should_match": 1}}
    raise QueryError(f"cannot search for a lone NOT: {node.to_dict()}")


def query_filters(query: SearchQuery) -> list[dict[str, Any]]:
    """Filters of a search: every entity (canonical id or key), any language/topic/source, the time range."""
    out: list[dict[str, Any]] = []
    for ent in query.entities:
        out.append(
            {"bool": {"should": [{"term": {"entity_canonical_ids": ent}}, {"term": {"entity_keys": ent}}], "minimum_should_match": 1}}
        )
    for name, values in (("language", query.languages), ("topics", query.topics), ("source", query.sources)):
        if values:
            out.append({"terms": {name: list(values)}})
    rng = {}
    if query.since_dt:
        rng["gte"] = query.since_dt.isoformat()
    if query.until_dt:
        rng["lte"] = query.until_dt.isoformat()
    if rng:
        out.append({"range": {"sort_ts": rng}})
    return out


_HIT_SOURCE = ["id", "title", "url", "language", "published", "source", "topics", "entities"]
_BY_DATE = {"sort_ts": {"order": "desc", "missing": "_last"}}


def highlight_fields(languages: Iterable[str] = LANGUAGE_ANALYZERS) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for lang in (None, *languages):
        suffix = f".{lang}" if lang else ""
        out["title" + suffix] = {"number_of_fragments": 0}
        # The plain highlighter: the unified one cut phrase matches in German
        # bodies down to a single word ("«START») prüfen.") around paragraph breaks.
        body = {"type": "plain", "fragment_size": _BODY_FRAGMENT_CHARS, "number_of_fragments": 1}
        if lang is None:
            # The start of the body when the match is only in the title, as SQLite's snippet() does.
            body["no_match_size"] = _BODY_FRAGMENT_CHARS
        out["body" + suffix] = body
    return out


def search_body(query: SearchQuery, highlight: tuple[str, str] = DEFAULT_HIGHLIGHT) -> dict[str, Any]:
    """The request body of one search."""
    must = [render_query(query.ast)] if query.ast is not None else []
    body: dict[str, Any] = {
        "query": {"bool": {"must": must, "filter": query_filters(query)}},
        "from": query.offset,
        "size": query.limit,
        "track_total_hits": True,
    }
    if query.ast is None:
        body["sort"] = [_BY_DATE, {"id": "asc"}]
        body["_source"] = [*_HIT_SOURCE, "body"]
        return body
    if query.sort == "date":
        body["sort"] = [_BY_DATE, {"_score": "desc"}, {"id": "asc"}]
        body["track_scores"] = True
    else:
        body["sort"] = [{"_score": "desc"}, _BY_DATE, {"id": "asc"}]
    body["_source"] = _HIT_SOURCE
    # Highlighting re-analyses each hit's text once per subfield, which is most of a
    # search's time; with a language filter only those languages' subfields can matter much.
    languages = [lang for lang in LANGUAGE_ANALYZERS if lang in query.languages] if query.languages else LANGUAGE_ANALYZERS
    body["highlight"] = {
        "pre_tags": [highlight[0]],
        "post_tags": [highlight[1]],
        "order": "score",
        "fields": highlight_fields(languages),
    }
    return body


# --- reading hits --------------------------------------------------------------------


def merge_marks(text: str, highlight: tuple[str, str] = DEFAULT_HIGHLIGHT) -> str:
    """Join marks of adjacent words, so a phrase reads «New START» (as SQLite marks it) rather than «New» «START»."""
    open_, close = (re.escape(m) for m in highlight)
    return re.sub(f"{close}(\\s{{1,3}}|[-\u2010\u2011]){open_}", r"\1", text)


def _best_fragment(hl: dict[str, list[str]], name: str, marker: str) -> str | None:
    """Of a field's highlights (base field first, then subfields) the one with the most marked matches."""
    best, best_n = None, -1
    for key, fragments in hl.items():
        if key != name and not key.startswith(name + "."):
            continue
        text = " … ".join(fragments)
        n = text.count(marker)
        if n > best_n or (n == best_n and key == name):
            best, best_n = text, n
    return best


def entity_refs(entities: Iterable[dict[str, Any]], limit: int = _HIT_ENTITIES) -> list[EntityRef]:
    """Mentions grouped by key, named entities first, then the most frequent (as the SQLite store orders them)."""
    groups: dict[str, dict[str, Any]] = {}
    for e in entities:
        key = e.get("key") or e.get("canonical_id") or (e.get("text") or "").casefold()
        name = e.get("canonical_name") or e.get("text")
        g = groups.setdefault(key, {"name": None, "label": None, "canonical_id": None, "n": 0})
        g["n"] += 1
        for attr, value in (("name", name), ("label", e.get("label")), ("canonical_id", e.get("canonical_id"))):
            if value is not None and (g[attr] is None or value > g[attr]):
                g[attr] = value
    ordered = sorted(groups.items(), key=lambda kv: (kv[1]["canonical_id"] is None, -kv[1]["n"], kv[0]))
    return [
        EntityRef(key=k, name=g["name"], label=g["label"], canonical_id=g["canonical_id"], count=g["n"])
        for k, g in ordered[:limit]
    ]


def _leading_body(body: str) -> str:
    # The same cut as the SQLite store's for a query without text.
    body = " ".join(body[:_NO_TEXT_BODY_CHARS].split())
    return body if len(body) < _NO_TEXT_BODY_CHARS else body[: body.rfind(" ", 0, _NO_TEXT_BODY_CHARS)] + " …"


def hit_from(raw: dict[str, Any], *, ranked: bool, highlight: tuple[str, str] = DEFAULT_HIGHLIGHT) -> Hit:
    """One search hit as the store's :class:`Hit`."""
    src = raw.get("_source") or {}
    snippets = []
    if ranked:
        hl = raw.get("highlight") or {}
        title = _best_fragment(hl, "title", highlight[0])
        if title and highlight[0] in title:
            snippets.append(Snippet("title", merge_marks(title, highlight)))
        body = _best_fragment(hl, "body", highlight[0])
        body = merge_marks(body, highlight) if body else body
    else:
        body = _leading_body(src.get("body") or "")
    if body:
        snippets.append(Snippet("body", " ".join(body.split())))
    score = raw.get("_score")
    return Hit(
        article_id=src.get("id") or raw.get("_id"),
        title=src.get("title") or "",
        url=src.get("url"),
        language=src.get("language"),
        published=src.get("published"),
        source=src.get("source") or "",
        score=round(float(score), 4) if ranked and score is not None else None,
        snippets=snippets,
        entities=entity_refs(src.get("entities") or []),
        topics=list(src.get("topics") or []),
    )


# --- the backend interface ---------------------------------------------------------------


def error_parts(body: Any, fallback: str) -> tuple[str | None, str]:
    """(type, reason) of an error body, whatever shape the server sent; the root cause says what went wrong."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            cause = (err.get("root_cause") or [{}])[0]
            reason = err.get("reason") or cause.get("reason") or fallback
            if cause.get("reason") and cause.get("reason") != reason:
                reason = f"{reason}: {cause.get('type')}: {cause['reason']}"
            return err.get("type") or cause.get("type"), reason
        if isinstance(err, str):
            return None, err
    return None, str(body) if body else fallback


class Backend(abc.ABC):
    """The few server calls the store needs, with each client's errors translated.

    Every method raises :class:`Unreachable` when there is no HTTP response and
    :class:`ServerError` for an error response; nothing client-specific leaks.
    """

    name: str = "search server"
    start_hint: str = ""

    def __init__(self, hosts: Sequence[str]):
        self.hosts = list(hosts)

    @property
    def url(self) -> str:
        """The hosts for messages, without credentials."""
        return ", ".join(re.sub(r"//[^/@]*@", "//", h) for h in self.hosts)

    @abc.abstractmethod
    def check_server(self) -> str:
        """Verify the product and version; return e.g. 'opensearch 2.19.6'. Raises IndexSetupError on a mismatch."""

    @abc.abstractmethod
    def bulk(self, operations: list[dict[str, Any]], *, refresh: bool | str = False) -> dict[str, Any]:
        """Send action/source lines as one _bulk request; returns the response with ``items``."""

    @abc.abstractmethod
    def mget(self, index: str, ids: Sequence[str], source: Sequence[str] | bool = True) -> list[dict[str, Any]]:
        """The ``docs`` of an _mget (real-time), each with found/_source/_seq_no/_primary_term."""

    @abc.abstractmethod
    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]: ...

    @abc.abstractmethod
    def count(self, index: str) -> int: ...

    @abc.abstractmethod
    def get_alias(self, name: str) -> list[str] | None:
        """The indices behind an alias, or None when there is no such alias."""

    @abc.abstractmethod
    def index_exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def get_mapping_meta(self, index: str) -> dict[str, Any]:
        """The ``_meta`` of an index's mapping ({} when it has none)."""

    @abc.abstractmethod
    def create_index(self, name: str, body: dict[str, Any]) -> None:
        """Create an index; raises ServerError 400 resource_already_exists_exception if it is there."""

    # Both clients spell these index calls alike; ``client`` and ``_errors`` come from the backend.

    def put_alias(self, index: str, name: str) -> None:
        with self._errors("put_alias"):
            self.client.indices.put_alias(index=index, name=name)

    def delete_index(self, name: str) -> None:
        with self._errors("delete_index"):
            self.client.indices.delete(index=name)

    def refresh(self, index: str) -> None:
        with self._errors("refresh"):
            self.client.indices.refresh(index=index)

    @abc.abstractmethod
    def has_analyzer(self, name: str) -> bool:
        """Whether the server knows a built-in or plugin analyzer of this name."""

    @abc.abstractmethod
    def close(self) -> None: ...


# --- the store -----------------------------------------------------------------------


@dataclass
class WriteResult:
    """What a write did, and the records the server rejected for good, as dead letters."""

    stats: UpsertStats = field(default_factory=UpsertStats)
    rejected: list[DeadLetter] = field(default_factory=list)
    rejected_ids: list[str] = field(default_factory=list)  # the record id behind each dead letter, in order

    def reject(self, record_id: str, letter: DeadLetter) -> None:
        self.rejected.append(letter)
        self.rejected_ids.append(record_id)


@dataclass(eq=False)
class _Op:
    """One record on its way into a bulk request."""

    id: str
    record: Any
    action: dict[str, Any]
    doc: dict[str, Any]
    outcome: str  # inserted | updated
    size: int = 0


def _last_wins(records: Iterable, key) -> list:
    by_id: dict[str, Any] = {}
    for r in records:
        by_id[key(r)] = r
    return list(by_id.values())


def _chunks(seq: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _origin(record: Any, fallback: str) -> str:
    for attr in ("origin", "url"):
        value = getattr(record, attr, None)
        if value:
            return str(value)
    return fallback


class IndexStore(ArticleStore):
    """An :class:`ArticleStore` in three indices of an OpenSearch or Elasticsearch cluster.

    ``refresh``: passed to every bulk request (False, True or "wait_for"); the
    default False leaves visibility to the index refresh interval (1 s), which
    is what a pipeline wants; mget-based change detection is real-time anyway.
    Use :meth:`refresh` to make writes searchable at once.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        index_prefix: str = "newswatch",
        bulk_size: int = 200,
        retry_deadline_s: float = 300.0,
        highlight: tuple[str, str] = DEFAULT_HIGHLIGHT,
        refresh: bool | str = False,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.backend = backend
        self.names = IndexNames(check_prefix(index_prefix))
        self.bulk_size = bulk_size
        self.retry_deadline_s = retry_deadline_s
        self.highlight = highlight
        self._refresh = refresh
        self._sleep = sleep
        self._server = ""
        self._setup_lock = threading.Lock()

    # --- setup --------------------------------------------------------------

    def _unavailable(self, exc: BaseException, what: str) -> IndexUnavailable:
        return IndexUnavailable(
            f"{self.backend.name} at {self.backend.url} is not available ({what}): {exc}", hint=self.backend.start_hint
        )

    def _call(self, fn: Callable[[], Any], *, what: str, attempts: int = _READ_ATTEMPTS, deadline_s: float | None = None):
        """One server call through core.retry; auth and give-ups become StoreErrors naming the server."""
        backoff = _WRITE_BACKOFF if deadline_s else _READ_BACKOFF
        try:
            return retry_call(
                fn, attempts=attempts, backoff=backoff, is_transient=is_transient, what=what, sleep=self._sleep, deadline_s=deadline_s
            )
        except ServerError as exc:
            if request_verdict(exc.status, exc.error_type) == "auth":
                raise IndexSetupError(
                    f"{self.backend.name} at {self.backend.url} refused the credentials ({what}): {exc}",
                    hint="check index.username and NEWSWATCH_INDEX__PASSWORD / NEWSWATCH_INDEX__API_KEY",
                ) from exc
            if exc.transient:
                raise self._unavailable(exc, what) from exc
            raise
        except TransientError as exc:
            raise self._unavailable(exc, what) from exc

    def ensure_ready(self, *, deadline_s: float | None = None) -> str:
        """The setup check: the server answers, is the configured product, and the indices exist (created if missing).

        Transient failures are retried until ``deadline_s`` (a few quick tries when None).
        Returns a one-line description of the server.
        """
        attempts = 0 if deadline_s else _READ_ATTEMPTS
        self._server = self._call(self.backend.check_server, what="setup", attempts=attempts, deadline_s=deadline_s)
        self._call(self._ensure_indices, what="setup.indices", attempts=attempts, deadline_s=deadline_s)
        log.info("index ready server=%s url=%s prefix=%s", self._server, self.backend.url, self.names.prefix)
        return self._server

    def _ensure_indices(self) -> None:
        with self._setup_lock:
            analyzers: dict[str, str] | None = None
            for kind in KINDS:
                alias, concrete = self.names.alias(kind), self.names.concrete(kind)
                behind = self.backend.get_alias(alias)
                if behind:
                    if concrete not in behind:
                        raise IndexSetupError(
                            f"alias {alias} at {self.backend.url} points to {', '.join(behind)}, not {concrete}",
                            hint="the index was written by another newswatch version; upgrade, or use another index.index_prefix",
                        )
                    meta = (self.backend.get_mapping_meta(concrete).get("newswatch") or {})
                    if meta.get("mapping_version") != MAPPING_VERSION:
                        raise IndexSetupError(
                            f"{concrete} at {self.backend.url} has mapping version {meta.get('mapping_version')!r},"
                            f" expected {MAPPING_VERSION}",
                            hint=f"delete {concrete} (it will be recreated) or use another index.index_prefix",
                        )
                    continue
                if self.backend.index_exists(alias):
                    raise IndexSetupError(
                        f"{alias} at {self.backend.url} is an index, not the alias newswatch expects"
                        " (probably created by a write before the mapping existed)",
                        hint=f"delete the index {alias} or use another index.index_prefix",
                    )
                if self.backend.index_exists(concrete):
                    self.backend.put_alias(concrete, alias)
                    continue
                if analyzers is None:
                    analyzers = resolve_analyzers(self.backend.has_analyzer)
                try:
                    self.backend.create_index(concrete, index_body(kind, analyzers, alias))
                    log.info("index created index=%s alias=%s url=%s", concrete, alias, self.backend.url)
                except ServerError as exc:
                    # Another worker created it a moment ago; that is fine.
                    if exc.error_type != "resource_already_exists_exception":
                        raise IndexSetupError(f"cannot create {concrete} at {self.backend.url}: {exc}") from exc

    def describe(self) -> str:
        counts = ", ".join(f"{k}={self._count(k)}" for k in KINDS)
        return f"{self._server or self.backend.name} at {self.backend.url}, prefix {self.names.prefix}: {counts}"

    # --- writes ---------------------------------------------------------------

    def _fetch_existing(self, kind: str, ids: Sequence[str], source: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored hash (and sequence number) of each id that exists; real-time, so no refresh is needed."""
        alias = self.names.alias(kind)

        def fetch() -> dict[str, dict[str, Any]]:
            found = {}
            for doc in self.backend.mget(alias, ids, source):
                err = doc.get("error")
                if err:
                    err_type = err.get("type") if isinstance(err, dict) else None
                    if err_type == "index_not_found_exception":
                        continue  # the bulk write recreates the index
                    # A shard that cannot answer now: retry rather than guess "new".
                    raise ServerError(503, err_type, str(err))
                if doc.get("found"):
                    found[doc["_id"]] = {
                        **(doc.get("_source") or {}), "_seq_no": doc.get("_seq_no"), "_primary_term": doc.get("_primary_term"),
                    }
            return found

        return self._call(fetch, what=f"index.mget.{kind}", attempts=0, deadline_s=self.retry_deadline_s)

    def _dead(self, op: _Op, kind: str, status: int, error: Any, reason: str = "index_rejected") -> DeadLetter:
        err_type = error.get("type") if isinstance(error, dict) else None
        err_reason = error.get("reason") if isinstance(error, dict) else str(error)
        caused = error.get("caused_by", {}).get("reason") if isinstance(error, dict) and isinstance(error.get("caused_by"), dict) else None
        detail = f"{self.backend.name} rejected {kind[:-1]} {op.id} in {self.names.alias(kind)}: {status} {err_type}: {err_reason}"
        if caused:
            detail += f" (caused by: {caused})"
        return DeadLetter(
            stage="index.write",
            reason=reason,
            detail=detail,
            payload=op.record.to_json(),
            origin=_origin(op.record, f"{self.names.alias(kind)}/{op.id}"),
            at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            error_class=err_type,
        )

    def _bulk(self, kind: str, ops: list[_Op], results: dict[int, Any]) -> None:
        """Send ops in requests under the byte cap; a 413 splits the request in halves."""
        chunk: list[_Op] = []
        size = 0
        batches = []
        for op in ops:
            if chunk and size + op.size > _MAX_BULK_BYTES:
                batches.append(chunk)
                chunk, size = [], 0
            chunk.append(op)
            size += op.size
        if chunk:
            batches.append(chunk)
        for batch in batches:
            try:
                self._bulk_send(kind, batch, results)
            except ServerError as exc:
                verdict = request_verdict(exc.status, exc.error_type)
                pending = [op for op in batch if id(op) not in results]
                if verdict == "too_large" and len(pending) > 1:
                    half = len(pending) // 2
                    self._bulk(kind, pending[:half], results)
                    self._bulk(kind, pending[half:], results)
                elif verdict in ("too_large", "reject"):
                    reason = "too_large" if verdict == "too_large" else "index_rejected"
                    for op in pending:
                        results[id(op)] = self._dead(op, kind, exc.status, {"type": exc.error_type, "reason": exc.reason}, reason)
                else:
                    raise StoreError(f"{self.backend.name} at {self.backend.url} failed a bulk write of {kind}: {exc}") from exc

    def _bulk_send(self, kind: str, batch: list[_Op], results: dict[int, Any]) -> None:
        """One bulk request, retried until every item is done; only throttled or unavailable items are resent."""
        pending = list(batch)
        missing_index = False

        def attempt() -> None:
            nonlocal pending, missing_index
            if missing_index:
                self._ensure_indices()
                missing_index = False
            lines: list[dict[str, Any]] = []
            for op in pending:
                lines += [op.action, op.doc]
            resp = self.backend.bulk(lines, refresh=self._refresh)
            items = resp.get("items") or []
            if len(items) != len(pending):
                raise ServerError(502, "bulk_response_mismatch", f"{len(pending)} items sent, {len(items)} answered")
            retry: list[_Op] = []
            for op, item in zip(pending, items):
                (_, res), = item.items()
                status = int(res.get("status", 500))
                err = res.get("error")
                verdict = item_verdict(status, err.get("type") if isinstance(err, dict) else None)
                if verdict == "ok":
                    results[id(op)] = "ok"
                elif verdict == "conflict":
                    results[id(op)] = "conflict"
                elif verdict in ("retry", "missing_index"):
                    missing_index = missing_index or verdict == "missing_index"
                    retry.append(op)
                else:
                    results[id(op)] = self._dead(op, kind, status, err)
            pending = retry
            if pending:
                raise TransientError(f"{len(pending)} of {len(batch)} bulk items throttled or unavailable")

        self._call(attempt, what=f"index.bulk.{kind}", attempts=0, deadline_s=self.retry_deadline_s)

    def _upsert(self, kind: str, records: list, make_op: Callable[[Any, dict | None], _Op | None]) -> WriteResult:
        result = WriteResult()
        source = ["doc_hash", "fired_at"] if kind == "alerts" else ["doc_hash"]
        for chunk in _chunks(records, self.bulk_size):
            pending = list(chunk)
            for _ in range(_CONFLICT_ROUNDS):
                existing = self._fetch_existing(kind, [r.id for r in pending], source)
                ops = []
                for rec in pending:
                    op = make_op(rec, existing.get(rec.id))
                    if op is None:
                        result.stats.unchanged += 1
                    else:
                        ops.append(op)
                results: dict[int, Any] = {}
                self._bulk(kind, ops, results)
                pending = []
                for op in ops:
                    outcome = results[id(op)]
                    if outcome == "ok":
                        setattr(result.stats, op.outcome, getattr(result.stats, op.outcome) + 1)
                    elif outcome == "conflict":
                        # Another writer stored this id since we looked: look again.
                        pending.append(op.record)
                    else:
                        result.reject(op.id, outcome)
                if not pending:
                    break
            else:
                raise IndexUnavailable(
                    f"{len(pending)} {kind} kept conflicting with concurrent writers at {self.backend.url}",
                    hint="the bundle will be retried",
                )
        return result

    def _op(self, kind: str, rec_id: str, record: Any, doc: dict[str, Any], old: dict | None) -> _Op:
        meta: dict[str, Any] = {"_index": self.names.alias(kind), "_id": rec_id, "require_alias": True}
        if old is None:
            action, outcome = {"create": meta}, "inserted"
        else:
            meta.update(if_seq_no=old["_seq_no"], if_primary_term=old["_primary_term"])
            action, outcome = {"index": meta}, "updated"
        size = len(json.dumps(doc, ensure_ascii=False)) + 200
        return _Op(rec_id, record, action, doc, outcome, size)

    def write_articles(self, articles: Iterable[Article]) -> WriteResult:
        """Upsert articles; rejected ones are returned as dead letters (not stored)."""
        def make(art: Article, old: dict | None) -> _Op | None:
            digest = article_hash(art)
            if old is not None and old.get("doc_hash") == digest:
                return None
            return self._op("articles", art.id, art, article_doc(art, digest), old)

        result = self._upsert("articles", _last_wins(articles, lambda a: a.id), make)
        log.debug("index articles inserted=%d updated=%d unchanged=%d rejected=%d", result.stats.inserted,
                  result.stats.updated, result.stats.unchanged, len(result.rejected))
        return result

    def write_alerts(self, alerts: Iterable[Alert]) -> WriteResult:
        """Upsert alerts, keeping the ``fired_at`` of the first firing; rejected ones come back as dead letters."""
        def make(alert: Alert, old: dict | None) -> _Op | None:
            digest = alert_hash(alert)
            if old is not None and old.get("doc_hash") == digest:
                return None
            first = old.get("fired_at") if old is not None else None
            return self._op("alerts", alert.id, alert, alert_doc(alert, digest, first), old)

        return self._upsert("alerts", _last_wins(alerts, lambda a: a.id), make)

    def write_dead_letters(self, letters: Iterable[DeadLetter]) -> WriteResult:
        """Store dead letters once each (``op_type=create``); ``stats.inserted`` counts the new ones."""
        result = WriteResult()
        batch = _last_wins(letters, lambda d: d.id)
        for chunk in _chunks(batch, self.bulk_size):
            ops = [
                _Op(d.id, d, {"create": {"_index": self.names.alias("dead_letters"), "_id": d.id, "require_alias": True}},
                    dead_letter_doc(d), "inserted", len(d.payload) + len(d.detail) + 400)
                for d in chunk
            ]
            results: dict[int, Any] = {}
            self._bulk("dead_letters", ops, results)
            for op in ops:
                outcome = results[id(op)]
                if outcome == "ok":
                    result.stats.inserted += 1
                elif outcome == "conflict":
                    result.stats.unchanged += 1
                else:
                    result.reject(op.id, outcome)
        return result

    def _keep_rejected(self, kind: str, rejected: list[DeadLetter]) -> None:
        if not rejected:
            return
        log.warning("index rejected kind=%s count=%d first=%s", kind, len(rejected), rejected[0].detail)
        self.add_dead_letters(rejected)

    def upsert_articles(self, articles: Iterable[Article]) -> UpsertStats:
        """As ArticleStore; records the server rejects are stored in the dead-letter index instead."""
        result = self.write_articles(articles)
        self._keep_rejected("articles", result.rejected)
        return result.stats

    def upsert_alerts(self, alerts: Iterable[Alert]) -> UpsertStats:
        result = self.write_alerts(alerts)
        self._keep_rejected("alerts", result.rejected)
        return result.stats

    def add_dead_letters(self, letters: Iterable[DeadLetter]) -> int:
        result = self.write_dead_letters(letters)
        for d in result.rejected:
            # Nowhere left to put it but the log; say everything about it.
            log.error("index rejected a dead letter id=%s detail=%s payload=%s", d.id, d.detail, d.payload[:2000])
        return result.stats.inserted

    # --- reads ------------------------------------------------------------------

    def _search(self, kind: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            return self._call(lambda: self.backend.search(self.names.alias(kind), body), what=what)
        except ServerError as exc:
            if exc.status == 400 or exc.error_type in ("search_phase_execution_exception", "illegal_argument_exception"):
                raise QueryError(f"{self.backend.name} rejected the search: {exc}", hint="narrow the query or lower --offset") from exc
            hint = "the index was deleted while in use; open the store again to recreate it" if exc.status == 404 else None
            raise StoreError(f"{self.backend.name} at {self.backend.url} failed {what}: {exc}", hint=hint) from exc

    def search(self, query: SearchQuery) -> SearchResult:
        started = time.perf_counter()
        if query.offset + query.limit > _MAX_RESULT_WINDOW:
            raise QueryError(f"offset + limit must be at most {_MAX_RESULT_WINDOW} on a search server, got {query.offset + query.limit}")
        resp = self._search("articles", search_body(query, self.highlight), "index.search")
        ranked = query.ast is not None
        hits = [hit_from(h, ranked=ranked, highlight=self.highlight) for h in resp["hits"]["hits"]]
        total = resp["hits"]["total"]
        total = total["value"] if isinstance(total, dict) else int(total)
        return SearchResult(total=total, hits=hits, query=query.to_dict(), took_ms=(time.perf_counter() - started) * 1000)

    def list_alerts(self, rule_id=None, since=None, *, article_id=None, limit=100) -> list[Alert]:
        filters: list[dict[str, Any]] = []
        if rule_id:
            filters.append({"term": {"rule_id": rule_id}})
        if article_id:
            filters.append({"term": {"article_id": article_id}})
        since_dt = parse_time(since)
        if since_dt:
            filters.append({"range": {"fired_ts": {"gte": since_dt.isoformat()}}})
        body = {
            "query": {"bool": {"filter": filters}},
            "sort": [{"fired_ts": {"order": "desc", "missing": "_last"}}, {"id": "asc"}],
            "size": min(int(limit), _MAX_RESULT_WINDOW),
            "_source": {"excludes": ["fired_ts", "doc_hash"]},
        }
        resp = self._search("alerts", body, "index.list_alerts")
        return [Alert.from_dict(h["_source"]) for h in resp["hits"]["hits"]]

    def list_dead_letters(self, *, stage=None, limit=100) -> list[DeadLetter]:
        body = {
            "query": {"bool": {"filter": [{"term": {"stage": stage}}] if stage else []}},
            "sort": [{"stored_at": {"order": "desc"}}, {"id": "asc"}],
            "size": min(int(limit), _MAX_RESULT_WINDOW),
        }
        resp = self._search("dead_letters", body, "index.list_dead_letters")
        return [DeadLetter.from_dict(h["_source"]) for h in resp["hits"]["hits"]]

    def get_article(self, article_id: str) -> Article | None:
        docs = self._call(lambda: self.backend.mget(self.names.alias("articles"), [article_id], True), what="index.get")
        for doc in docs:
            if doc.get("found"):
                return Article.from_dict(doc["_source"])
        return None

    def _count(self, kind: str) -> int:
        return self._call(lambda: self.backend.count(self.names.alias(kind)), what=f"index.count.{kind}")

    def count_articles(self) -> int:
        return self._count("articles")

    def count_alerts(self) -> int:
        return self._count("alerts")

    def count_dead_letters(self) -> int:
        return self._count("dead_letters")

    def stats(self) -> dict[str, Any]:
        def terms(name: str, **extra) -> dict[str, Any]:
            return {"terms": {"field": name, "size": 1000, **extra}}

        def buckets(resp: dict[str, Any], agg: str) -> dict[str, int]:
            return {str(b["key"]): b["doc_count"] for b in resp["aggregations"][agg]["buckets"]}

        arts = self._search("articles", {
            "size": 0, "track_total_hits": True,
            "aggs": {
                "by_language": terms("language", missing="und"),
                "by_source": terms("source"),
                "by_topic": terms("topics"),
                "mentions": {"nested": {"path": "entities"}},
            },
        }, "index.stats")
        alerts = self._search("alerts", {"size": 0, "track_total_hits": True, "aggs": {"by_rule": terms("rule_id")}}, "index.stats")
        dead = self._search("dead_letters", {"size": 0, "track_total_hits": True, "aggs": {"by_reason": terms("reason")}}, "index.stats")
        return {
            "backend": self.backend.name,
            "hosts": self.backend.url,
            "indices": {k: self.names.alias(k) for k in KINDS},
            "articles": arts["hits"]["total"]["value"],
            "alerts": alerts["hits"]["total"]["value"],
            "dead_letters": dead["hits"]["total"]["value"],
            "entity_mentions": arts["aggregations"]["mentions"]["doc_count"],
            "by_language": buckets(arts, "by_language"),
            "by_source": buckets(arts, "by_source"),
            "by_topic": buckets(arts, "by_topic"),
            "alerts_by_rule": buckets(alerts, "by_rule"),
            "dead_letters_by_reason": buckets(dead, "by_reason"),
        }

    def refresh(self) -> None:
        """Make everything written so far searchable now."""
        for kind in KINDS:
            self._call(lambda k=kind: self.backend.refresh(self.names.alias(k)), what="index.refresh")

    def delete_indices(self) -> None:
        """Delete this prefix's indices (tests, or starting over); the next setup recreates them."""
        for kind in KINDS:
            for name in self.backend.get_alias(self.names.alias(kind)) or []:
                self.backend.delete_index(name)
            if self.backend.index_exists(self.names.concrete(kind)):
                self.backend.delete_index(self.names.concrete(kind))

    def close(self) -> None:
        self.backend.close()


def make_backend(settings) -> Backend:
    """The backend for ``settings.backend`` (an IndexSettings)."""
    if not settings.hosts:
        raise IndexSetupError("index.hosts is empty", hint="set index.hosts (NEWSWATCH_INDEX__HOSTS='[\"http://127.0.0.1:9200\"]')")
    if settings.backend == "elasticsearch":
        from connectors.elasticsearch_backend import ElasticsearchBackend

        return ElasticsearchBackend(settings)
    from connectors.opensearch_backend import OpenSearchBackend

    return OpenSearchBackend(settings)


def open_index(
    settings,
    *,
    highlight: tuple[str, str] = DEFAULT_HIGHLIGHT,
    refresh: bool | str = False,
    setup_deadline_s: float | None = None,
) -> IndexStore:
    """The ArticleStore for ``settings`` (an IndexSettings), checked and ready.

    The setup check runs at once: server reachable (a few quick tries, or
    retried until ``setup_deadline_s``), product and version as configured,
    indices and mappings present (created when missing). Raises
    IndexUnavailable or IndexSetupError naming the URL, with a hint.
    """
    backend = make_backend(settings)
    store = IndexStore(
        backend,
        index_prefix=settings.index_prefix,
        bulk_size=settings.bulk_size,
        retry_deadline_s=settings.retry_deadline_s,
        highlight=highlight,
        refresh=refresh,
    )
    try:
        store.ensure_ready(deadline_s=setup_deadline_s)
    except BaseException:
        store.close()
        raise
    return store


# --- Beam sink -----------------------------------------------------------------------------

_TYPES = {"articles": Article, "alerts": Alert, "dead_letters": DeadLetter}


def _kind_of(record) -> str:
    for kind, cls in _TYPES.items():
        if isinstance(record, cls):
            return kind
    raise TypeError(f"WriteToIndex takes Article, Alert or DeadLetter records, not {type(record).__name__}")


class _WriteIndexFn(beam.DoFn):
    """Buffers records and writes them in bulk; one client per DoFn instance; emits rejected records as dead letters."""

    def __init__(self, settings, kind: str | None):
        self._settings = settings
        self._kind = kind
        self._store: IndexStore | None = None
        self._buffers: dict[str, list] = {k: [] for k in KINDS}
        self._counters = {
            (k, what): Metrics.counter("newswatch", f"index.{k}.{what}")
            for k in KINDS
            for what in ("inserted", "updated", "unchanged", "rejected")
        }

    def setup(self):
        # A server that is down at start is waited for like one that goes down later.
        self._store = open_index(self._settings, setup_deadline_s=self._settings.retry_deadline_s)

    def start_bundle(self):
        self._buffers = {k: [] for k in KINDS}

    def process(self, record, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        kind = _kind_of(record)
        if self._kind is not None and kind != self._kind:
            raise TypeError(f"WriteToIndex(kind={self._kind!r}) got a {type(record).__name__}")
        self._buffers[kind].append((record, timestamp, window))
        if sum(len(b) for b in self._buffers.values()) >= self._settings.bulk_size:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def teardown(self):
        if self._store is not None:
            self._store.close()
            self._store = None

    def _flush(self) -> Iterable[WindowedValue]:
        buffers, self._buffers = self._buffers, {k: [] for k in KINDS}
        write = {"articles": self._store.write_articles, "alerts": self._store.write_alerts,
                 "dead_letters": self._store.write_dead_letters}
        for kind in KINDS:
            entries = buffers[kind]
            if not entries:
                continue
            result = write[kind]([e[0] for e in entries])
            for what in ("inserted", "updated", "unchanged"):
                self._counters[(kind, what)].inc(getattr(result.stats, what))
            self._counters[(kind, "rejected")].inc(len(result.rejected))
            log.info(
                "index.write kind=%s records=%d inserted=%d updated=%d unchanged=%d rejected=%d", kind, len(entries),
                result.stats.inserted, result.stats.updated, result.stats.unchanged, len(result.rejected),
            )
            if result.rejected:
                # Each dead letter keeps the timestamp and window of the record it stands for.
                where = {record.id: (ts, win) for record, ts, win in entries}
                for rec_id, letter in zip(result.rejected_ids, result.rejected):
                    ts, win = where[rec_id]
                    yield WindowedValue(letter, ts, [win])


class WriteToIndex(beam.PTransform):
    """Write articles, alerts and/or dead letters to the configured search server.

    ``settings``: the whole Settings or its IndexSettings. Like
    ``connectors.sqlite_store.WriteToStore``: records are reshuffled (so a
    retried write does not recompute upstream stages), buffered per DoFn and
    written in bulk requests of ``index.bulk_size`` and at the end of every
    bundle. ``kind`` ("articles", "alerts", "dead_letters") makes it insist on
    one record type. A server that is down or overloaded is retried with
    backoff until ``index.retry_deadline_s``; then the bundle fails and Beam
    retries it, so nothing is lost. Counters:
    ``index.<kind>.inserted|updated|unchanged|rejected``.

    Returns a PCollection of ``DeadLetter`` for records the server rejected
    for good (stage ``index.write``), for the pipeline's dead-letter output.
    """

    def __init__(self, settings, kind: str | None = None, *, reshuffle: bool = True):
        super().__init__()
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self._settings = getattr(settings, "index", settings)
        if not self._settings.hosts:
            raise IndexSetupError("WriteToIndex needs index.hosts", hint="set index.hosts, or use WriteToStore for the SQLite store")
        self._kind = kind
        self._reshuffle = reshuffle

    def expand(self, pcoll):
        if self._reshuffle:
            pcoll = pcoll | "Reshuffle" >> beam.Reshuffle()
        return pcoll | "Write" >> beam.ParDo(_WriteIndexFn(self._settings, self._kind))
