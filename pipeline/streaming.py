"""The streaming pipeline: Kafka articles topic → the same stages as the batch
pipeline → search index (or the embedded store), alerts topic and dead-letter topic.

Two independent branches read the articles topic, each with its own consumer
group, and each is one fused stage from the Kafka read to its sinks:

* the **alert branch** (``<group>.alerts``): parse → language → link → topics →
  alerts → alerts topic and alert index. No statistical NER, so an alert is
  out within a bundle of its article arriving.
* the **article branch** (``<group>.articles``): the same stages plus
  statistical NER → article index. When NER falls behind, only this group's
  lag grows; alert latency does not move.

Why not one branch split by a shuffle: a runner commits the source's offsets
once the source's bundle is persisted, and a local runner such as Prism keeps
shuffled data in memory only — a crash would lose what sat behind the
shuffle. Fused branches commit offsets only after their own sinks wrote, so
a kill and restart re-reads exactly what was not yet written. Every sink is
idempotent (deterministic article, alert and dead-letter ids): effectively once.
"""

from __future__ import annotations

import logging
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from core.settings import Settings

log = logging.getLogger(__name__)


class _AlertLatency(beam.DoFn):
    """Publish → alert latency from the element timestamp (the Kafka record time)."""

    def __init__(self):
        self._dist = Metrics.distribution("newswatch", "alerts.latency_ms")

    def process(self, alert, ts=beam.DoFn.TimestampParam):
        from core.telemetry import metrics

        latency = max(0.0, time.time() - float(ts))
        if latency < 24 * 3600:  # a replay of old records is not latency
            self._dist.update(int(latency * 1000))
            metrics().alert_latency.observe(latency)
        metrics().alerts.labels(alert.rule_id).inc()
        yield alert


def _sink(settings: Settings, kind: str):
    """The index sink when a search server is configured, else the embedded store; never reshuffled."""
    if settings.index.enabled:
        from connectors.search_index import WriteToIndex

        return WriteToIndex(settings, kind=kind, reshuffle=False)
    from connectors.sqlite_store import WriteToStore

    return WriteToStore(settings, kind=kind, reshuffle=False)


def _write(pcoll, label: str, settings: Settings, kind: str, dead_parts: list) -> None:
    out = pcoll | label >> _sink(settings, kind)
    if settings.index.enabled:
        dead_parts.append(out)  # records the index rejected for good


def _front(p, settings: Settings, branch: str, *, start: str, stop_at_end: bool, group: str | None, topic: str | None):
    """Kafka read → decode → parse → language → link → topics, for one branch."""
    from connectors.kafka import DecodeRawArticles, ReadFromKafka
    from transforms.entities import LinkEntities
    from transforms.language import DetectLanguage
    from transforms.parse import ParseArticles
    from transforms.topics import TagTopics

    k = settings.kafka
    b = branch.capitalize()
    records = p | f"{b}Read" >> ReadFromKafka(
        k, topic or k.articles_topic, group=f"{group or k.consumer_group}.{branch}", start=start, stop_at_end=stop_at_end,
    )
    raw, dead_decode = records | f"{b}Decode" >> DecodeRawArticles()
    articles, dead_parse = raw | f"{b}Parse" >> ParseArticles(settings.input)
    articles, dead_lang = articles | f"{b}Language" >> DetectLanguage(settings)
    articles, dead_link = articles | f"{b}Link" >> LinkEntities(settings)
    articles, dead_topics = articles | f"{b}Topics" >> TagTopics(settings)
    return articles, [dead_decode, dead_parse, dead_lang, dead_link, dead_topics]


def build_streaming(p: beam.Pipeline, settings: Settings, *, ner: bool = True, start: str = "committed",
                    stop_at_end: bool = False, group: str | None = None, topic: str | None = None):
    """Add both branches to ``p``; returns (articles, alerts, dead)."""
    from connectors.kafka import WriteToKafka
    from transforms.alerts import MatchAlerts
    from transforms.entities import TagEntities

    k = settings.kafka
    opts = dict(start=start, stop_at_end=stop_at_end, group=group, topic=topic)

    # Alert branch. Its front dead letters usually repeat the article branch's (same
    # deterministic ids, absorbed by the index); they are kept because a failure that
    # is not deterministic would otherwise lose the alert without a trace.
    alert_articles, alert_dead_parts = _front(p, settings, "alerts", **opts)
    _, alerts, dead_alerts = alert_articles | "Alerts" >> MatchAlerts(settings)
    alerts = alerts | "AlertLatency" >> beam.ParDo(_AlertLatency())
    alert_dead_parts.append(dead_alerts)
    kafka_rejected = alerts | "AlertsToKafka" >> WriteToKafka(k, k.alerts_topic)
    alert_dead_parts.append(kafka_rejected)
    _write(alerts, "AlertsToIndex", settings, "alerts", alert_dead_parts)
    alert_dead = tuple(alert_dead_parts) | "AlertBranchDead" >> beam.Flatten()
    alert_dead | "AlertDeadToKafka" >> WriteToKafka(k, k.dead_letter_topic)
    alert_dead | "AlertDeadToIndex" >> _sink(settings, "dead_letters")

    # Article branch.
    articles, dead_parts = _front(p, settings, "articles", **opts)
    if ner and settings.ner.enabled:
        articles, dead_ner = articles | "NER" >> TagEntities(settings)
        dead_parts.append(dead_ner)
    _write(articles, "ArticlesToIndex", settings, "articles", dead_parts)
    dead = tuple(dead_parts) | "ArticleBranchDead" >> beam.Flatten()
    dead | "DeadToKafka" >> WriteToKafka(k, k.dead_letter_topic)
    dead | "DeadToIndex" >> _sink(settings, "dead_letters")
    return articles, alerts, (alert_dead, dead) | "AllDead" >> beam.Flatten()


def streaming_options(settings: Settings, extra: list[str] | None = None, *, bounded: bool = False):
    """Beam options for the Kafka pipeline; DirectRunner means Prism locally (see connectors/kafka.py)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    runner = settings.runner.runner
    args = [*settings.runner.options, *(extra or [])]
    if runner in ("DirectRunner", "PrismRunner"):
        prism = settings.runner.prism_location
        if bounded and runner == "DirectRunner":
            args.insert(0, "--runner=DirectRunner")
        else:
            if not prism or not prism.exists():
                from core.errors import NewswatchError

                raise NewswatchError(
                    f"streaming locally needs the Prism runner binary, not found at {prism}",
                    hint="run `make prism` (builds it from the Go module proxy), or set runner.prism_location",
                    code="prism_missing",
                )
            args[:0] = ["--runner=PrismRunner", f"--prism_location={prism}", "--environment_type=LOOPBACK",
                        "--experiments=disable_prism_server_singleton"]
    else:
        args.insert(0, f"--runner={runner}")
    if not bounded:
        args.append("--streaming")
    return PipelineOptions(args)
