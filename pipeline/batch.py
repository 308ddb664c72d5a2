"""The bounded pipeline: files and feeds → parse → language → dedup → entities,
topics, alerts → store, with every bad record on the dead-letter output.

The same stage transforms serve the streaming pipeline; only sources and
sinks differ. Watchlist/concept linking and alert matching run before
statistical NER, so an alert never waits for the slowest stage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from core.settings import Settings
from pipeline.progress import ReportProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutputs:
    """Where a run writes its report (one JSON line per article, alert and dead letter)."""

    run_dir: Path

    @property
    def articles_prefix(self) -> str:
        return str(self.run_dir / "articles")

    @property
    def alerts_prefix(self) -> str:
        return str(self.run_dir / "alerts")

    @property
    def dead_prefix(self) -> str:
        return str(self.run_dir / "dead-letters")

    def read(self, kind: str) -> list[dict]:
        rows = []
        for shard in sorted(self.run_dir.glob(f"{kind}-*")):
            with shard.open(encoding="utf-8") as fh:
                rows.extend(json.loads(line) for line in fh if line.strip())
        return rows


def _pair(result):
    """Normalise a stage's output to (main, dead-or-None)."""
    if isinstance(result, tuple):
        return result[0], (result[1] if len(result) > 1 else None)
    return result, None


def build_batch(p: beam.Pipeline, settings: Settings, *, paths: list[str], feeds: list[str], outputs: RunOutputs | None = None, ner: bool = True):
    """Add the whole bounded graph to ``p``; returns (articles, alerts, dead) PCollections."""
    from connectors.feeds import ReadFromFeeds
    from connectors.files import ReadFromFiles
    from connectors.sqlite_store import WriteToStore
    from transforms.alerts import MatchAlerts
    from transforms.dedup import DedupArticles
    from transforms.entities import LinkEntities, TagEntities
    from transforms.language import DetectLanguage
    from transforms.parse import ParseArticles
    from transforms.topics import TagTopics

    dead_parts = []
    raw_parts = []
    if paths:
        raw, dead = p | "ReadFiles" >> ReadFromFiles(paths, settings.input)
        raw_parts.append(raw)
        dead_parts.append(dead)
    if feeds:
        raw, dead = p | "ReadFeeds" >> ReadFromFeeds(feeds, settings.fetch)
        raw_parts.append(raw)
        dead_parts.append(dead)
    raw = raw_parts[0] if len(raw_parts) == 1 else tuple(raw_parts) | "AllRaw" >> beam.Flatten()

    articles, dead = _pair(raw | "Parse" >> ParseArticles(settings.input))
    dead_parts.append(dead)
    articles, dead = _pair(articles | "Language" >> DetectLanguage(settings))
    if dead is not None:
        dead_parts.append(dead)
    articles = articles | "Dedup" >> DedupArticles()
    articles, dead = _pair(articles | "Link" >> LinkEntities(settings))
    if dead is not None:
        dead_parts.append(dead)
    articles, dead = _pair(articles | "Topics" >> TagTopics(settings))
    if dead is not None:
        dead_parts.append(dead)
    matched = articles | "Alerts" >> MatchAlerts(settings)
    articles, alerts = matched[0], matched[1]
    if len(matched) > 2 and matched[2] is not None:
        dead_parts.append(matched[2])
    if ner and settings.ner.enabled:
        articles, dead = _pair(articles | "NER" >> TagEntities(settings))
        if dead is not None:
            dead_parts.append(dead)
    articles = articles | "Progress" >> beam.ParDo(ReportProgress("articles"))
    dead = tuple(dead_parts) | "AllDead" >> beam.Flatten()

    articles | "StoreArticles" >> WriteToStore(settings, kind="articles")
    alerts | "StoreAlerts" >> WriteToStore(settings, kind="alerts")
    dead | "StoreDead" >> WriteToStore(settings, kind="dead_letters")

    if outputs is not None:
        for label, pcoll, prefix in (
            ("Articles", articles, outputs.articles_prefix),
            ("Alerts", alerts, outputs.alerts_prefix),
            ("Dead", dead, outputs.dead_prefix),
        ):
            (
                pcoll
                | f"Report{label}" >> beam.Map(lambda r: r.to_json())
                | f"Write{label}" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl", shard_name_template="-SSSSS-of-NNNNN")
            )
    return articles, alerts, dead


def pipeline_options(settings: Settings, extra: list[str] | None = None, *, streaming: bool = False) -> PipelineOptions:
    args = [f"--runner={settings.runner.runner}", *settings.runner.options, *(extra or [])]
    if streaming:
        args.append("--streaming")
    return PipelineOptions(args)
