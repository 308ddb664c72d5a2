"""Exact de-duplication within a run: by article id (canonical URL) and by content hash.

Across runs the stores are idempotent by article id, so a replay adds nothing.
Within a run the first copy by (fetched, origin) wins, so the result does
not depend on the order the runner delivers elements in.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from core.records import Article


def pick_first(articles: list[Article]) -> Article:
    return min(articles, key=lambda a: (a.fetched or "", a.origin or "", a.id))


class _KeepFirst(beam.DoFn):
    def __init__(self, what: str):
        self._dups = Metrics.counter("newswatch", f"dedup.{what}")

    def process(self, keyed):
        _, group = keyed
        group = list(group)
        if len(group) > 1:
            self._dups.inc(len(group) - 1)
        yield pick_first(group)


class DedupArticles(beam.PTransform):
    """Drop exact duplicates: same canonical URL (same id), then same content."""

    def expand(self, articles):
        by_id = (
            articles
            | "KeyById" >> beam.Map(lambda a: (a.id, a))
            | "GroupById" >> beam.GroupByKey()
            | "FirstById" >> beam.ParDo(_KeepFirst("by_id"))
        )
        return (
            by_id
            | "KeyByContent" >> beam.Map(lambda a: (a.content_hash, a))
            | "GroupByContent" >> beam.GroupByKey()
            | "FirstByContent" >> beam.ParDo(_KeepFirst("by_content"))
        )
