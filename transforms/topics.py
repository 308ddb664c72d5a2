"""Topic tagging: a small multilingual taxonomy (``seeds/topics.yaml``) scored per article.

Each topic lists keywords per language (``de``, ``en``, ``ru``...; ``any``
for language-neutral ones), ``strong`` keywords that are enough on their
own, and linked entity/concept ids (``Article.entities``) with a weight.
Keywords are phrases in the alert-rule sense (``transforms/alerts.py``:
whole words, case and accent folded, acronyms case-sensitive, ``word*``
matches any ending, ``*word*`` inside German compounds).

Scoring, per topic, so that one stray word does not tag an article:

* each *distinct* keyword found adds its weight (1 by default, 2 for
  ``strong`` keywords, or the ``weight`` given in the file);
* +0.5 when it also appears in the title, +0.5 for each further occurrence
  (at most +1), so a word repeated through an article counts more than a
  passing mention;
* each linked entity/concept id adds its weight once (2 by default: the New
  START concept alone makes an article about arms control);
* the topic is tagged when the score reaches its ``threshold`` (default 2).

Keywords of language L count only in articles detected as L; when the
language is unknown, every language's keywords count.

The Beam stage :class:`TagTopics` returns ``(articles, dead)``; each article
is a copy whose ``topics`` are the tagged topic ids, best first.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ResourceError
from core.records import Article
from transforms.alerts import (
    NormText,
    PhraseMatcher,
    describe_errors,
    did_you_mean,
    known_ids_from,
    load_yaml,
)

log = logging.getLogger(__name__)

ANY_LANGUAGE = "any"
DEFAULT_THRESHOLD = 2.0
STRONG_WEIGHT = 2.0
DEFAULT_ENTITY_WEIGHT = 2.0
TITLE_BONUS = 0.5
REPEAT_BONUS = 0.5
MAX_REPEAT_BONUS = 1.0


class Keyword(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    weight: float = Field(1.0, gt=0)
    case_sensitive: bool | None = None


def _keyword_list(v):
    if v is None:
        return v
    if not isinstance(v, list):
        raise ValueError("expected a list of keywords")
    return [{"text": k} if isinstance(k, str) else k for k in v]


class TopicSpec(BaseModel):
    """One topic of the taxonomy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    name: str
    description: str = ""
    threshold: float | None = Field(None, gt=0)
    keywords: dict[str, list[Keyword]] = Field(default_factory=dict)
    strong: dict[str, list[Keyword]] = Field(default_factory=dict)
    entities: dict[str, float] = Field(default_factory=dict)

    @field_validator("keywords", "strong", mode="before")
    @classmethod
    def _per_language(cls, v):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("expected a mapping of language code to a list of keywords")
        return {lang: _keyword_list(items) for lang, items in v.items()}

    @field_validator("entities", mode="before")
    @classmethod
    def _entities(cls, v):
        if v is None:
            return {}
        if isinstance(v, list):
            return {ident: DEFAULT_ENTITY_WEIGHT for ident in v}
        return v

    @field_validator("entities")
    @classmethod
    def _positive(cls, v):
        bad = [k for k, w in v.items() if w <= 0]
        if bad:
            raise ValueError(f"entity weights must be positive: {bad}")
        return v


class TaxonomySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0)
    languages: list[str] = Field(default_factory=lambda: ["de", "en", "ru", "uk", "pl", "fr"])
    topics: list[TopicSpec]

    @field_validator("languages")
    @classmethod
    def _codes(cls, v):
        bad = [x for x in v if not re.fullmatch(r"[a-z]{2,3}", x)]
        if bad:
            raise ValueError(f"language codes are ISO 639 like 'de' or 'ru', got {bad}")
        return v


_TOPIC_FIELDS = tuple(TopicSpec.model_fields)
_FILE_FIELDS = tuple(TaxonomySpec.model_fields)


def _fields_at(loc: tuple) -> Iterable[str]:
    # ('topics', 3, 'keywords', 'de', 0, <key>) -> a keyword mapping
    if len(loc) >= 5 and loc[2] in ("keywords", "strong"):
        return tuple(Keyword.model_fields)
    if len(loc) >= 2 and loc[0] == "topics":
        return _TOPIC_FIELDS
    return _FILE_FIELDS


@dataclass(frozen=True)
class _Signal:
    topic: int
    keyword: str  # as written; distinct keywords score separately
    weight: float
    language: str  # a language code or ANY_LANGUAGE


@dataclass(frozen=True)
class Topic:
    id: str
    name: str
    threshold: float


class TopicTagger:
    """Compiled taxonomy: one phrase automaton for every keyword of every topic."""

    def __init__(self, spec: TaxonomySpec, *, source: str = "<topics>", known_ids: dict[str, str] | None = None,
                 known_from: str = "the watchlist or concepts"):
        self.source = source
        self.languages = frozenset(spec.languages)
        self.topics: list[Topic] = []
        self.matcher = PhraseMatcher()
        self._signals: dict[int, list[_Signal]] = {}
        self._entity_weights: dict[str, list[tuple[int, float]]] = {}
        problems = []
        seen: dict[str, int] = {}
        for ti, t in enumerate(spec.topics):
            label = f"topic '{t.id}'"
            if t.id in seen:
                problems.append(f"{label}: duplicate topic id (topics #{seen[t.id]} and #{ti + 1})")
                continue
            seen[t.id] = ti + 1
            index = len(self.topics)
            self.topics.append(Topic(t.id, t.name, t.threshold or spec.threshold))
            if not (t.keywords or t.strong or t.entities):
                problems.append(f"{label}: needs keywords, strong keywords or entities")
            for group, default in (("keywords", 1.0), ("strong", STRONG_WEIGHT)):
                listed: set[tuple[str, int]] = set()
                for lang, items in getattr(t, group).items():
                    if lang != ANY_LANGUAGE and lang not in self.languages:
                        problems.append(
                            f"{label}: {group}.{lang}: unknown language '{lang}'"
                            + (did_you_mean(lang, [*self.languages, ANY_LANGUAGE]) or
                               f" (declared: {', '.join(sorted(self.languages))}, or '{ANY_LANGUAGE}')")
                        )
                        continue
                    for ki, kw in enumerate(items):
                        where = f"{label}: {group}.{lang}[{ki}]"
                        try:
                            pid = self.matcher.add(kw.text, case_sensitive=kw.case_sensitive)
                        except ValueError as exc:
                            problems.append(f"{where}: {exc}")
                            continue
                        dedup = (lang, pid)
                        if dedup in listed:
                            problems.append(f"{where}: '{kw.text}' is listed twice for this language")
                            continue
                        listed.add(dedup)
                        weight = kw.weight if "weight" in kw.model_fields_set else default
                        self._signals.setdefault(pid, []).append(_Signal(index, kw.text, weight, lang))
            for ident, weight in t.entities.items():
                if known_ids is not None and ident not in known_ids:
                    problems.append(f"{label}: entity '{ident}' is not defined in {known_from}" + did_you_mean(ident, known_ids))
                self._entity_weights.setdefault(ident, []).append((index, weight))
        if problems:
            if len(problems) == 1:
                raise ResourceError(f"{source}: {problems[0]}")
            raise ResourceError(f"{source}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))
        self.matcher.build()

    def scores(self, article: Article) -> dict[str, float]:
        """Score of every topic with any evidence, before the threshold."""
        lang = article.language if article.language in self.languages else None
        # Per topic, every hit as (field, start, end, keyword, weight). Overlapping
        # keywords of one topic ("terror*" and "terrorist*") must not count one word twice.
        hits: dict[int, list[tuple[str, int, int, str, float]]] = {}
        for field, text in (("title", article.title), ("body", article.body)):
            if not text:
                continue
            for hit in self.matcher.find(NormText(text)):
                for sig in self._signals.get(hit.pattern, ()):
                    if lang is not None and sig.language not in (lang, ANY_LANGUAGE):
                        continue
                    hits.setdefault(sig.topic, []).append((field, hit.start, hit.end, sig.keyword, sig.weight))
        totals: dict[int, float] = {}
        for topic, topic_hits in hits.items():
            topic_hits.sort(key=lambda h: (h[0], h[1], -h[4], -(h[2] - h[1])))
            found: dict[str, list] = {}  # keyword -> [weight, occurrences, in title]
            last_field, last_end = None, -1
            for field, start, end, keyword, weight in topic_hits:
                if field == last_field and start < last_end:
                    continue
                last_field, last_end = field, end
                entry = found.setdefault(keyword, [weight, 0, False])
                entry[1] += 1
                entry[2] = entry[2] or field == "title"
            for weight, count, in_title in found.values():
                bonus = min(MAX_REPEAT_BONUS, REPEAT_BONUS * (count - 1)) + (TITLE_BONUS if in_title else 0.0)
                totals[topic] = totals.get(topic, 0.0) + weight + bonus
        ids = {e.canonical_id for e in article.entities if e.canonical_id}
        for ident in ids:
            for topic, weight in self._entity_weights.get(ident, ()):
                totals[topic] = totals.get(topic, 0.0) + weight
        return {self.topics[i].id: round(s, 3) for i, s in totals.items()}

    def tag(self, article: Article) -> list[str]:
        """Topic ids whose score reaches their threshold, best first (ties by taxonomy order)."""
        scores = self.scores(article)
        order = {t.id: i for i, t in enumerate(self.topics)}
        thresholds = {t.id: t.threshold for t in self.topics}
        tagged = [tid for tid, s in scores.items() if s >= thresholds[tid]]
        return sorted(tagged, key=lambda tid: (-scores[tid], order[tid]))


def load_topics(path: str | Path, *, watchlist: str | Path | None = None, concepts: str | Path | None = None) -> TopicTagger:
    """Read, validate and compile a taxonomy file; ResourceError names the file, the topic and the field.

    Entity ids are checked against the watchlist and concepts files when they exist.
    """
    source = str(path)
    data = load_yaml(path, "topics")
    if not isinstance(data, dict):
        raise ResourceError(f"{source}: expected a mapping with a 'topics' list")
    try:
        spec = TaxonomySpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for line in describe_errors(exc, _fields_at):
            # 'topics[3].keywords.de[0]: ...' reads better as "topic 'x': keywords.de[0]: ..."
            m = re.match(r"topics\[(\d+)\]\.?(.*)", line)
            if m:
                raw = data.get("topics") or []
                i = int(m.group(1))
                ident = raw[i].get("id") if i < len(raw) and isinstance(raw[i], dict) else None
                label = f"topic '{ident}'" if isinstance(ident, str) else f"topic #{i + 1}"
                rest = m.group(2)
                line = f"{label}: {rest}" if not rest.startswith(":") else f"{label}{rest}"
            problems.append(line)
        if len(problems) == 1:
            raise ResourceError(f"{source}: {problems[0]}") from None
        raise ResourceError(f"{source}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)) from None
    known, labels = known_ids_from([watchlist, concepts])
    return TopicTagger(spec, source=source, known_ids=known, known_from=labels)


def tagger_from_settings(settings) -> TopicTagger:
    r = settings.resources
    return load_topics(r.topics, watchlist=r.watchlist, concepts=r.concepts)


# --- Beam -------------------------------------------------------------------------


class _TagFn:
    def __init__(self, topics: str, watchlist: str | None, concepts: str | None):
        self._tagger = load_topics(topics, watchlist=watchlist, concepts=concepts)
        self._counters = {t.id: Metrics.counter("newswatch", f"topics.tagged.{t.id}") for t in self._tagger.topics}
        self._untagged = Metrics.counter("newswatch", "topics.untagged")

    def __call__(self, article: Article) -> list[Article]:
        topics = self._tagger.tag(article)
        for t in topics:
            self._counters[t].inc()
        if not topics:
            self._untagged.inc()
        return [dataclasses.replace(article, topics=topics)]


class TagTopics(beam.PTransform):
    """Articles → ``(articles, dead)``: copies with ``topics`` set from the taxonomy.

    The taxonomy is validated when the pipeline is built. Counters:
    ``topics.tagged.<topic id>`` and ``topics.untagged``.
    """

    def __init__(self, settings):
        super().__init__()
        r = settings.resources
        self._paths = (str(r.topics), str(r.watchlist) if r.watchlist else None, str(r.concepts) if r.concepts else None)
        tagger = load_topics(self._paths[0], watchlist=self._paths[1], concepts=self._paths[2])
        log.info("topics.taxonomy file=%s topics=%d keywords=%d", r.topics, len(tagger.topics), len(tagger.matcher.patterns))

    def expand(self, articles):
        from transforms.deadletters import apply_stage

        return apply_stage(articles, "Tag", "topics", functools.partial(_TagFn, *self._paths))
