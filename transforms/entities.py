"""Entity stages of the pipeline: fast linking first, statistical NER later.

* :class:`LinkEntities` links watchlist people/organisations and concepts in
  title and body. It takes milliseconds per article, so alert rules that
  match on entity ids run right after it and never wait for NER.
* :class:`TagEntities` runs statistical NER per language in batches and
  merges its spans with the linked ones (:func:`merge_entities`): one span is
  one entity; a watchlist/concept link wins and keeps its canonical id; an
  NER person whose name resolves through the watchlist gets the canonical id;
  any other entity gets a grouping key ``LABEL:folded name`` so that
  "Konstantin Jaroschenko" and "Константин Ярошенко" group together.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from typing import Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from core.records import Article, Entity
from transforms import names
from transforms.ner import NerSpan, NerTagger
from transforms.watchlist import EntityLinker

log = logging.getLogger(__name__)

LINKED_SOURCES = frozenset({"watchlist", "concept"})
FIELDS = ("title", "body")


def link_article(linker: EntityLinker, article: Article) -> Article:
    """A copy of ``article`` whose watchlist/concept entities are freshly linked."""
    linked = linker.link_article(article)
    others = [e for e in article.entities if e.source not in LINKED_SOURCES]
    return dataclasses.replace(article, entities=_sorted(linked + others))


def _sorted(entities: Iterable[Entity]) -> list[Entity]:
    order = {f: i for i, f in enumerate(FIELDS)}
    return sorted(entities, key=lambda e: (order.get(e.field, 9), e.start, e.end))


def unknown_key(label: str, text: str, normal: str | None = None) -> str:
    """Grouping key of an entity without a canonical id: ``LABEL:folded name``."""
    return f"{label}:{names.name_key(normal or text)}"


class _Occupied:
    """Character ranges already given to an entity, per field, with fast overlap tests."""

    def __init__(self, entities: Iterable[Entity] = ()):
        self._starts: dict[str, list[int]] = {}
        self._ends: dict[str, list[int]] = {}
        self._longest: dict[str, int] = {}
        for e in entities:
            self.add(e)

    def add(self, e: Entity) -> None:
        starts = self._starts.setdefault(e.field, [])
        i = bisect.bisect_left(starts, e.start)
        starts.insert(i, e.start)
        self._ends.setdefault(e.field, []).insert(i, e.end)
        self._longest[e.field] = max(self._longest.get(e.field, 0), e.end - e.start)

    def overlaps(self, e: Entity) -> bool:
        starts = self._starts.get(e.field)
        if not starts:
            return False
        ends = self._ends[e.field]
        # Only ranges starting before e.end and no further back than the longest range can reach e.
        lowest = e.start - self._longest[e.field]
        j = bisect.bisect_left(starts, e.end) - 1
        while j >= 0 and starts[j] >= lowest:
            if ends[j] > e.start:
                return True
            j -= 1
        return False


def merge_entities(
    linked: Sequence[Entity],
    ner_spans: Sequence[Entity],
    *,
    linker: EntityLinker | None = None,
    language: str | None = None,
) -> list[Entity]:
    """Merge watchlist/concept links with statistical NER spans; one span, one entity.

    ``ner_spans`` are Entities with ``source="ner.<engine>"`` (offsets in their
    field). A span overlapping a linked entity is dropped: the link wins and
    keeps its id. Otherwise, when ``linker`` is given, a PER/ORG span whose
    text resolves to a watched entry (a full name, or a surname of someone the
    article already links) gets that canonical id; everything else gets
    :func:`unknown_key`. Overlapping NER spans keep the longer one.
    """
    out = list(linked)
    known_ids = {e.canonical_id for e in linked if e.canonical_id}
    taken = _Occupied(out)
    resolved: dict[str, object] = {}
    kept: list[Entity] = []
    for span in sorted(ner_spans, key=lambda e: (-(e.end - e.start), e.start)):
        if taken.overlaps(span):
            continue
        taken.add(span)
        entity = dataclasses.replace(span)
        entry = None
        if linker is not None and span.label in ("PER", "ORG", "MISC"):
            # The same name recurs in an article; resolve each surface form once.
            if span.text not in resolved:
                resolved[span.text] = linker.resolve(span.text, language, known_ids)
            entry = resolved[span.text]
            if entry is not None and entry.source == "watchlist" and entry.label != span.label:
                entry = None
        if entry is not None:
            entity.canonical_id = entry.id
            entity.canonical_name = entry.name
            entity.key = entry.id
            entity.label = entry.label
        elif not entity.key:
            entity.key = unknown_key(span.label, span.text, span.canonical_name)
        kept.append(entity)
    return _sorted(out + kept)


def span_to_entity(span: NerSpan, field: str) -> Entity:
    """An NER span as an Entity; a normalised name (natasha) goes into ``canonical_name`` until merged."""
    return Entity(
        text=span.text, label=span.label, start=span.start, end=span.end, field=field,
        canonical_name=span.normal if span.normal and span.normal != span.text else None,
        source=f"ner.{span.engine}",
    )


def tag_articles(articles: Sequence[Article], tagger: NerTagger, linker: EntityLinker | None) -> list[Article]:
    """Statistical NER on a batch of articles, merged with their linked entities."""
    texts, langs, where = [], [], []
    for ai, article in enumerate(articles):
        for fld in FIELDS:
            text = getattr(article, fld) or ""
            if text.strip():
                texts.append(text)
                langs.append(article.language)
                where.append((ai, fld))
    spans_per_text = tagger.tag(texts, langs)
    ner: list[list[Entity]] = [[] for _ in articles]
    for (ai, fld), spans in zip(where, spans_per_text):
        ner[ai].extend(span_to_entity(s, fld) for s in spans)
    out = []
    for article, spans in zip(articles, ner):
        linked = [e for e in article.entities if e.source in LINKED_SOURCES]
        merged = merge_entities(linked, spans, linker=linker, language=article.language)
        out.append(dataclasses.replace(article, entities=merged))
    return out


class LinkEntities(beam.PTransform):
    """Article → Article with watchlist and concept entities. Returns ``(articles, dead)``."""

    def __init__(self, settings):
        super().__init__()
        self._settings = settings

    def expand(self, articles):
        from transforms.deadletters import apply_stage

        settings = self._settings

        def make():
            linker = EntityLinker.from_settings(settings)
            linked = Metrics.counter("newswatch", "entities.linked")
            with_any = Metrics.counter("newswatch", "entities.articles_with_links")

            def fn(article: Article):
                result = link_article(linker, article)
                n = sum(1 for e in result.entities if e.source in LINKED_SOURCES)
                linked.inc(n)
                if n:
                    with_any.inc()
                return [result]

            return fn

        return apply_stage(articles, "LinkEntities", "entities.link", make)


class _TagBatchFn(beam.DoFn):
    """NER on a batch of articles; a failing article becomes a dead letter, not a failed batch."""

    def __init__(self, settings):
        self._settings = settings
        self._tagger = None
        self._linker = None
        self._ok = Metrics.counter("newswatch", "entities.ner.ok")
        self._dead = Metrics.counter("newswatch", "entities.ner.dead")
        self._spans = Metrics.counter("newswatch", "entities.ner.spans")

    def setup(self):
        self._tagger = NerTagger(self._settings.ner)
        self._linker = EntityLinker.from_settings(self._settings)

    def process(self, batch):
        from transforms.deadletters import DEAD, dead_letter

        try:
            results = tag_articles(batch, self._tagger, self._linker)
        except Exception:  # noqa: BLE001 - retried one by one so that one bad article is isolated
            results = []
            for article in batch:
                try:
                    results.extend(tag_articles([article], self._tagger, self._linker))
                except Exception as exc:  # noqa: BLE001 - any failure is a dead letter with its reason
                    self._dead.inc()
                    yield beam.pvalue.TaggedOutput(DEAD, dead_letter("entities.ner", article, exc))
        for article in results:
            self._ok.inc()
            self._spans.inc(sum(1 for e in article.entities if e.source.startswith("ner.")))
            yield article


class TagEntities(beam.PTransform):
    """Statistical NER merged with linked entities, batched. Returns ``(articles, dead)``."""

    def __init__(self, settings):
        super().__init__()
        self._settings = settings

    def expand(self, articles):
        from transforms.deadletters import DEAD

        size = self._settings.ner.batch_size
        res = (
            articles
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=size)
            | "Tag" >> beam.ParDo(_TagBatchFn(self._settings)).with_outputs(DEAD, main="ok")
        )
        return res["ok"], res[DEAD]
