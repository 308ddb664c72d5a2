"""The records that flow through newswatch, each with one JSON form.

``RawArticle`` is what a connector produces before any validation; ``Article``
is the typed record used everywhere after parsing; ``Alert`` is a fired rule;
``DeadLetter`` is anything that could not be processed, with the reason.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from core.ids import sha256_hex, stable_id

SCHEMA_VERSION = 1


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass
class RawArticle:
    """An article as a connector saw it: nothing is validated yet."""

    source: str
    url: str | None = None
    title: str | None = None
    body: str | None = None
    published: str | None = None
    fetched: str | None = None
    language: str | None = None
    content_type: str = "text"  # text | html
    origin: str | None = None  # file path or feed URL the record came from
    guid: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RawArticle":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, s: str | bytes) -> "RawArticle":
        return cls.from_dict(json.loads(s))


@dataclass
class Entity:
    """One entity mention in an article.

    ``key`` is a normalised grouping key: the canonical id when known, else a
    folded form of the text, so mentions of the same unknown name group
    together across articles and languages.
    """

    text: str
    label: str  # PER, ORG, LOC, MISC, TREATY, ...
    start: int
    end: int
    field: str = "body"  # title | body
    canonical_id: str | None = None
    canonical_name: str | None = None
    key: str | None = None
    source: str = "watchlist"  # watchlist | concept | ner.<engine>
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Entity":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Article:
    """The typed article record used by every stage after parsing."""

    id: str
    url: str | None
    canonical_url: str | None
    source: str
    title: str
    body: str
    published: str | None
    fetched: str
    content_hash: str
    language: str | None = None
    language_score: float | None = None
    entities: list[Entity] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    origin: str | None = None

    @property
    def text(self) -> str:
        """Title and body as one string; body offsets start after title + 2."""
        return f"{self.title}\n\n{self.body}" if self.title else self.body

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["entities"] = [e.to_dict() for e in self.entities]
        d["schema"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Article":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["entities"] = [Entity.from_dict(e) for e in d.get("entities") or []]
        kw["topics"] = list(d.get("topics") or [])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, s: str | bytes) -> "Article":
        return cls.from_dict(json.loads(s))


@dataclass
class AlertMatch:
    """Why a rule fired: the text found and what it stood for."""

    text: str
    field: str  # title | body | entity
    start: int | None = None
    end: int | None = None
    term: str | None = None  # the rule's phrase, concept id or entity id
    kind: str = "phrase"  # phrase | concept | entity

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AlertMatch":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Alert:
    """A rule that fired on an article. The id is deterministic (rule + article)."""

    id: str
    rule_id: str
    rule_name: str
    article_id: str
    title: str
    language: str | None
    url: str | None
    matches: list[AlertMatch]
    snippet: str
    fired_at: str
    published: str | None = None
    severity: str = "info"

    @staticmethod
    def make_id(rule_id: str, article_id: str) -> str:
        return stable_id("alert", rule_id, article_id)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["matches"] = [m.to_dict() for m in self.matches]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Alert":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["matches"] = [AlertMatch.from_dict(m) for m in d.get("matches") or []]
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)


@dataclass
class DeadLetter:
    """A record that could not be processed, kept whole with the reason."""

    stage: str  # e.g. files.read, feeds.parse, parse, entities, index.write
    reason: str  # a stable short code: empty_body, too_large, bad_json, ...
    detail: str  # human-readable message
    payload: str  # the original input, as text (bytes are decoded with replacement or base64)
    origin: str | None = None
    at: str | None = None
    error_class: str | None = None

    @property
    def id(self) -> str:
        return stable_id("dead", self.stage, self.reason, self.origin or "", sha256_hex(self.payload))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["id"] = self.id
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeadLetter":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)
