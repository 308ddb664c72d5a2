"""Execute a bounded run and collect what it did into a report."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from core.settings import Settings
from pipeline.batch import RunOutputs, build_batch, pipeline_options

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    summary: dict[str, Any]
    articles: list[dict]
    alerts: list[dict]
    dead_letters: list[dict]
    counters: dict[str, int]
    store_path: str
    run_dir: str
    dead_letter_path: str
    elapsed_s: float
    failed: bool = False
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "articles": self.articles,
            "alerts": self.alerts,
            "dead_letters": self.dead_letters,
            "counters": self.counters,
            "results": {"store": self.store_path, "run_report": self.run_dir, "dead_letters": self.dead_letter_path},
            "elapsed_s": round(self.elapsed_s, 2),
            "failed": self.failed,
            "error": self.error,
            "warnings": self.warnings,
        }


def _counters(result) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        counters = result.metrics().query(MetricsFilter())["counters"]
    except Exception as exc:  # noqa: BLE001 - some runners cannot report metrics
        log.warning("metrics unavailable error=%r", exc)
        return out
    for c in counters:
        if c.key.metric.namespace != "newswatch":
            continue
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def summarize(counters: dict[str, int], articles: list[dict], alerts: list[dict], dead: list[dict]) -> dict[str, Any]:
    source_dead = counters.get("files.dead", 0) + counters.get("feeds.dead", 0)
    parsed = counters.get("parse.ok", 0) + counters.get("parse.dead", 0)
    return {
        "read": parsed + source_dead,
        "articles": len(articles),
        "stored_new": counters.get("store.articles.inserted", 0),
        "stored_updated": counters.get("store.articles.updated", 0),
        "unchanged": counters.get("store.articles.unchanged", 0),
        "deduplicated": counters.get("dedup.by_id", 0) + counters.get("dedup.by_content", 0),
        "dead_lettered": len(dead),
        "dead_letter_reasons": dict(Counter(f"{d.get('stage')}:{d.get('reason')}" for d in dead)),
        "alerts": len(alerts),
        "alerts_new": counters.get("store.alerts.inserted", 0),
        "languages": dict(Counter(a.get("language") or "und" for a in articles)),
    }


def execute_batch(settings: Settings, *, paths: list[str], feeds: list[str], ner: bool = True, extra_options: list[str] | None = None) -> RunReport:
    """Validate resources, run the bounded pipeline, and report what happened."""
    from pipeline.preflight import preflight_for_run

    warnings = preflight_for_run(settings, ner=ner)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    run_dir = settings.store.path.parent / "runs" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    outputs = RunOutputs(run_dir)
    log.info("run start paths=%d feeds=%d store=%s runner=%s", len(paths), len(feeds), settings.store.path, settings.runner.runner)
    started = time.monotonic()
    p = beam.Pipeline(options=pipeline_options(settings, extra_options))
    build_batch(p, settings, paths=paths, feeds=feeds, outputs=outputs, ner=ner)
    failed, error, counters = False, None, {}
    try:
        result = p.run()
        result.wait_until_finish()
        counters = _counters(result)
    except Exception as exc:  # noqa: BLE001 - reported to the user with exit code 3
        log.exception("run failed")
        failed, error = True, f"{type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - started
    articles, alerts, dead = outputs.read("articles"), outputs.read("alerts"), outputs.read("dead-letters")
    summary = summarize(counters, articles, alerts, dead)
    log.info(
        "run done read=%d stored_new=%d unchanged=%d dedup=%d dead=%d alerts=%d elapsed_s=%.1f",
        summary["read"], summary["stored_new"], summary["unchanged"], summary["deduplicated"],
        summary["dead_lettered"], summary["alerts"], elapsed,
    )
    return RunReport(
        summary=summary, articles=articles, alerts=alerts, dead_letters=dead, counters=counters,
        store_path=str(settings.store.path), run_dir=str(run_dir), dead_letter_path=str(settings.store.dead_letter_path),
        elapsed_s=elapsed, failed=failed, error=error, warnings=warnings,
    )


def execute_streaming(settings: Settings, *, ner: bool = True, start: str = "committed", bounded: bool = False,
                      group: str | None = None, extra_options: list[str] | None = None) -> dict[str, Any]:
    """Run the Kafka pipeline: until stopped (Ctrl-C), or with ``bounded`` until the topic's current end."""
    from connectors.kafka import ensure_topics
    from core import telemetry
    from pipeline.preflight import preflight_for_run
    from pipeline.streaming import build_streaming, streaming_options

    warnings = preflight_for_run(settings, ner=ner)
    for w in warnings:
        log.warning("%s", w)
    ensure_topics(settings.kafka)
    if settings.metrics.port is not None:
        telemetry.serve(settings.metrics.port)
    options = streaming_options(settings, extra_options, bounded=bounded)
    log.info(
        "stream start topic=%s group=%s sink=%s runner=%s bounded=%s",
        settings.kafka.articles_topic, group or settings.kafka.consumer_group,
        f"{settings.index.backend}:{','.join(settings.index.hosts)}" if settings.index.enabled else f"sqlite:{settings.store.path}",
        options.get_all_options().get("runner"), bounded,
    )
    started = time.monotonic()
    p = beam.Pipeline(options=options)
    build_streaming(p, settings, ner=ner, start=start, stop_at_end=bounded, group=group)
    result = p.run()
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        log.info("stream stopping (interrupted); offsets of unfinished bundles are not committed and will be re-read")
        try:
            result.cancel()
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass
    counters = _counters(result)
    return {"counters": counters, "elapsed_s": round(time.monotonic() - started, 2)}
