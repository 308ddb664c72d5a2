"""What every article store promises: idempotent upserts, search and alert listing.

The embedded SQLite store (``connectors/sqlite_store.py``) implements it; a
search-server backend implements the same methods so that the command line
and the pipeline never care which one is configured. Queries arrive as
:class:`core.query.SearchQuery`; results leave as :class:`SearchResult`,
whose ``to_dict()`` is the JSON the command line prints.

Upserts are keyed by the record id (``Article.id``, ``Alert.id``,
``DeadLetter.id``), so replaying the same input is harmless: a record whose
content is unchanged counts as ``unchanged`` and writes nothing.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

from core.errors import NewswatchError
from core.query import SearchQuery
from core.records import Alert, Article, DeadLetter

DEFAULT_HIGHLIGHT = ("«", "»")


class StoreError(NewswatchError):
    """The store cannot be opened or written (bad path, no permission, corrupt file)."""

    code = "store_unavailable"


@dataclass
class UpsertStats:
    """What one upsert did: new records, changed records, and records already stored as they are."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged

    def __add__(self, other: "UpsertStats") -> "UpsertStats":
        return UpsertStats(self.inserted + other.inserted, self.updated + other.updated, self.unchanged + other.unchanged)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class Snippet:
    """A piece of a field with the query's matches wrapped in the highlight markers."""

    field: str  # title | body
    text: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class EntityRef:
    """An entity named in a hit, grouped by key, with how often it occurs."""

    key: str
    name: str
    label: str
    canonical_id: str | None = None
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class Hit:
    """One article in a search result."""

    article_id: str
    title: str
    url: str | None
    language: str | None
    published: str | None
    source: str
    score: float | None
    snippets: list[Snippet] = field(default_factory=list)
    entities: list[EntityRef] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["snippets"] = [s.to_dict() for s in self.snippets]
        d["entities"] = [e.to_dict() for e in self.entities]
        return d


@dataclass
class SearchResult:
    """Hits for one page of a query, with the total number of matching articles."""

    total: int
    hits: list[Hit]
    query: dict[str, Any] = field(default_factory=dict)
    took_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "took_ms": round(self.took_ms, 2),
            "query": self.query,
            "hits": [h.to_dict() for h in self.hits],
        }


class ArticleStore(abc.ABC):
    """The store interface. Implementations are safe to call from several threads."""

    @abc.abstractmethod
    def upsert_articles(self, articles: Iterable[Article]) -> UpsertStats:
        """Insert new articles, replace changed ones (keeping the search index in sync), skip unchanged ones."""

    @abc.abstractmethod
    def upsert_alerts(self, alerts: Iterable[Alert]) -> UpsertStats:
        """Insert or update alerts by id; an alert keeps the ``fired_at`` of its first firing."""

    @abc.abstractmethod
    def add_dead_letters(self, letters: Iterable[DeadLetter]) -> int:
        """Store dead letters by id; returns how many were new."""

    @abc.abstractmethod
    def search(self, query: SearchQuery) -> SearchResult:
        """Run a query with its filters; raises core.query.QueryError for a bad request."""

    @abc.abstractmethod
    def list_alerts(
        self,
        rule_id: str | None = None,
        since: str | None = None,
        *,
        article_id: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Alerts, newest first; ``since`` bounds ``fired_at`` (ISO 8601 or a span like 24h)."""

    @abc.abstractmethod
    def list_dead_letters(self, *, stage: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, newest first."""

    @abc.abstractmethod
    def get_article(self, article_id: str) -> Article | None:
        """One stored article, or None."""

    @abc.abstractmethod
    def count_articles(self) -> int: ...

    @abc.abstractmethod
    def count_alerts(self) -> int: ...

    @abc.abstractmethod
    def count_dead_letters(self) -> int: ...

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts and breakdowns (by language, source, rule) for ``newswatch`` status output."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
