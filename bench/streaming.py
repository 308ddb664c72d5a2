"""Streaming benchmark: `newswatch run --stream` against the real Kafka and search server.

1. Throughput, publish → all N articles indexed (and → all N alerted, the
   alert branch), with NER and with ``--no-ner``, start-up excluded: the
   pipeline first processes a warm-up set (the seed article plus one article
   per language, so that every NER model is loaded) and only then are the
   measured batches published (medians over repeats). Baseline: the batch
   pipeline (``newswatch run`` over the same articles as a JSONL file,
   DirectRunner, SQLite) with the same stages, its start-up removed by timing
   a warm-up-only run and a warm-up + N run and dividing N by the difference.
   The ratio is then what the streaming machinery costs on top of the same
   per-article work: Kafka source, Prism, the front stages run twice (two
   branches) and the index sink. The bare Kafka read rate is printed for
   scale only: it is about a thousand times either rate and says only that
   the source is not the limit.
2. Latency, one article every ``interval_s`` (below capacity): publish →
   first alert on the alerts topic (its record time, set by the pipeline's
   producer), → alert searchable in the alert index (refresh + search poll),
   and → article searchable in the article index (which includes NER).
3. The same latencies for probes published one every ``interval_s`` right
   after a burst the NER branch cannot absorb quickly, with both branches'
   consumer lag sampled meanwhile. The probes sit behind the burst in the
   same partitions, so the alert branch has to get through the burst too;
   probes are therefore grouped by the lag at their publish time: alert
   branch still in the burst, or alert branch caught up while the NER branch
   is still behind — the case the two consumer groups exist for.

Every pipeline gets its own topics, consumer group and index prefix
(``nwbench-<uuid>-…``); indices and topics are deleted afterwards, the
subprocess and its Prism child are stopped through their process group.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.corpus import ROOT, seed_article, synthetic_articles
from bench.timing import print_table

log = logging.getLogger(__name__)

KAFKA_ENV = "NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS"
INDEX_ENV = "NEWSWATCH_INDEX__HOSTS"
DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_INDEX = ["http://127.0.0.1:9200"]
URL_BASE = "https://bench.newswatch.invalid"


@dataclass(frozen=True)
class Params:
    articles: int  # measured throughput batch
    steady_samples: int
    interval_s: float  # between steady and burst probes
    burst: int  # minimum burst size; raised to outlast the probe window at the measured NER rate
    burst_probes: int
    repeats: int  # throughput measurements (streaming and batch); medians are reported
    poll_s: float = 0.1  # index poll period in the latency phases
    startup_timeout_s: float = 240.0
    drain_timeout_s: float = 180.0  # throughput: all N indexed
    burst_drain_timeout_s: float = 60.0  # after the probes; later articles count as missing


FULL = Params(articles=120, steady_samples=30, interval_s=0.5, burst=100, burst_probes=20, repeats=3)
QUICK = Params(articles=40, steady_samples=10, interval_s=0.5, burst=60, burst_probes=8, repeats=1)


# --- numbers -------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (as bench.timing's p95), None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def latency_stats(xs: list[float], expected: int) -> dict:
    return {
        "n": len(xs),
        "missing": expected - len(xs),
        "median_s": _r(statistics.median(xs)) if xs else None,
        "p95_s": _r(percentile(xs, 0.95)),
        "max_s": _r(max(xs)) if xs else None,
    }


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


# --- articles --------------------------------------------------------------------------


def raw_articles(articles, run: str, phase: str):
    """RawArticles with a unique URL per run and phase, so that article and alert ids never collide."""
    from core.records import RawArticle

    return [
        RawArticle(source="bench", url=f"{URL_BASE}/{run}/{phase}/{i}", title=a.title, body=a.body,
                   published=a.published, fetched=a.fetched)
        for i, a in enumerate(articles)
    ]


def warmup_set():
    """The seed article plus one synthetic article per language: every NER model gets loaded."""
    return [seed_article(), *synthetic_articles(6, seed=1001)]


def key_of(raw) -> str:
    from connectors.kafka import article_key

    return article_key(raw).decode("ascii")


# --- the pipeline under test ---------------------------------------------------------------


def _newswatch_cmd() -> list[str]:
    script = Path(sys.executable).with_name("newswatch")
    if script.exists():
        return [str(script)]
    found = shutil.which("newswatch")
    return [found] if found else [sys.executable, "-c", "from pipeline.cli import main; main()"]


def _clean_env(**extra: str) -> dict[str, str]:
    """The parent environment without NEWSWATCH_* settings, plus ``extra``.

    A user's configuration (other NER models, rules, a config file) must not
    change what the bench measures; where the Prism binary lives is kept.
    """
    keep = ("NEWSWATCH_RUNNER__PRISM_LOCATION",)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSWATCH_") or k in keep}
    env.update(extra)
    return env


@dataclass
class Names:
    """Topics, consumer group and index prefix of one pipeline under test."""

    name: str
    bootstrap: str
    hosts: list[str]

    @property
    def group(self) -> str:
        return self.name

    def kafka(self):
        from core.settings import KafkaSettings

        return KafkaSettings(bootstrap_servers=self.bootstrap, articles_topic=f"{self.name}.articles",
                             alerts_topic=f"{self.name}.alerts", dead_letter_topic=f"{self.name}.dead-letters",
                             consumer_group=self.group)

    def index(self):
        from core.settings import IndexSettings

        return IndexSettings(hosts=self.hosts, index_prefix=self.name)

    def env(self, workdir: Path) -> dict[str, str]:
        k = self.kafka()
        return _clean_env(
            NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap,
            NEWSWATCH_KAFKA__ARTICLES_TOPIC=k.articles_topic,
            NEWSWATCH_KAFKA__ALERTS_TOPIC=k.alerts_topic,
            NEWSWATCH_KAFKA__DEAD_LETTER_TOPIC=k.dead_letter_topic,
            NEWSWATCH_KAFKA__CONSUMER_GROUP=k.consumer_group,
            NEWSWATCH_INDEX__HOSTS=json.dumps(self.hosts),
            NEWSWATCH_INDEX__INDEX_PREFIX=self.name,
            NEWSWATCH_STORE__PATH=str(workdir / "store.db"),
            NEWSWATCH_STORE__DEAD_LETTER_PATH=str(workdir / "dead-letters.jsonl"),
        )


class PipelineProcess:
    """`newswatch run --stream` in its own process group (Prism is its child), logging to a file."""

    def __init__(self, names: Names, workdir: Path, *, ner: bool):
        self.names = names
        self.log_path = workdir / f"{names.name}.log"
        self._workdir = workdir
        self._ner = ner
        self._proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        cmd = [*_newswatch_cmd(), "run", "--stream", *([] if self._ner else ["--no-ner"])]
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(cmd, cwd=ROOT, env=self.names.env(self._workdir), stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        log.info("pipeline started name=%s pid=%d ner=%s", self.names.name, self._proc.pid, self._ner)

    def check(self) -> None:
        """Raise with the end of the log when the pipeline has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"pipeline {self.names.name} exited with {self._proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        """Ctrl-C to the whole group (the pipeline cancels itself), then SIGKILL to what is left."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    continue
                # The leader is gone; Prism may outlive it for a moment.
                if not _group_alive(pgid):
                    break
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# --- observing the outputs -----------------------------------------------------------------


@dataclass
class Seen:
    """First-seen wall times per article id."""

    published: dict[str, float] = field(default_factory=dict)
    alert_record: dict[str, float] = field(default_factory=dict)  # alerts-topic record time
    alert_consumed: dict[str, float] = field(default_factory=dict)  # when this process read it
    alert_index: dict[str, float] = field(default_factory=dict)
    article_index: dict[str, float] = field(default_factory=dict)


class Observer:
    """Publishes articles and watches for their alerts (topic and index) and article documents.

    One thread consumes the alerts topic from its start; another refreshes
    and searches the indices for the ids still awaited every ``poll_s``. A
    document found by a search right after a refresh issued at t was
    written before t, so t is what is recorded.
    """

    def __init__(self, names: Names):
        from connectors.kafka import ArticlePublisher
        from connectors.search_index import open_index

        self.names = names
        self.kafka = names.kafka()
        self.store = open_index(names.index())
        self.publisher = ArticlePublisher(self.kafka, client_id="nwbench-publisher")
        self.poll_s = 0.25
        self.seen = Seen()
        self.poll_errors = 0
        self.poll_work_s: list[float] = []  # refresh + search time per poll: the index timings' resolution
        self._want_articles: set[str] = set()
        self._want_alerts: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._consume_alerts, name="nwbench-alerts", daemon=True),
                         threading.Thread(target=self._poll_index, name="nwbench-index", daemon=True)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.publisher.close()
        self.store.close()

    # --- publishing -----------------------------------------------------------

    def publish(self, raws) -> list[str]:
        """Publish and wait for the acknowledgement; the ids are then awaited in the indices."""
        ids = [key_of(r) for r in raws]
        with self._lock:
            self._want_articles.update(ids)
            self._want_alerts.update(ids)
        t = time.time()
        stats = self.publisher.publish(raws)
        if stats.rejected:
            raise RuntimeError(f"Kafka refused {len(stats.rejected)} bench articles: {stats.rejected[0].error}")
        with self._lock:
            for i in ids:
                self.seen.published.setdefault(i, t)
        return ids

    def wait(self, ids, kinds=("article_index",), *, timeout_s: float, pipeline: PipelineProcess | None = None) -> bool:
        """Wait until every id is in every ``kinds`` map of ``seen``; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if all(i in getattr(self.seen, k) for k in kinds for i in ids):
                    return True
            if pipeline is not None:
                pipeline.check()
            time.sleep(0.05)
        return False

    def latencies(self, ids, kind: str) -> list[float]:
        with self._lock:
            got = getattr(self.seen, kind)
            return [got[i] - self.seen.published[i] for i in ids if i in got and i in self.seen.published]

    # --- watching -------------------------------------------------------------

    def _consume_alerts(self) -> None:
        from kafka import TopicPartition

        from connectors.kafka import new_consumer

        consumer = new_consumer(self.kafka, None, client_id="nwbench-alerts")
        try:
            parts = None
            while not parts and not self._stop.is_set():
                parts = consumer.partitions_for_topic(self.kafka.alerts_topic)
                if not parts:
                    time.sleep(0.2)
            tps = [TopicPartition(self.kafka.alerts_topic, p) for p in sorted(parts or ())]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                for msgs in consumer.poll(timeout_ms=100).values():
                    now = time.time()
                    for msg in msgs:
                        try:
                            article = json.loads(msg.value)["article_id"]
                        except (ValueError, KeyError, TypeError):
                            continue
                        ts = msg.timestamp / 1000.0
                        with self._lock:
                            if ts < self.seen.alert_record.get(article, math.inf):
                                self.seen.alert_record[article] = ts
                            self.seen.alert_consumed.setdefault(article, now)
        finally:
            consumer.close()

    def _poll_index(self) -> None:
        backend = self.store.backend
        articles, alerts = self.store.names.alias("articles"), self.store.names.alias("alerts")
        while not self._stop.wait(self.poll_s):
            with self._lock:
                want_articles = sorted(self._want_articles - self.seen.article_index.keys())
                want_alerts = sorted(self._want_alerts - self.seen.alert_index.keys())
            started = time.perf_counter()
            try:
                if want_articles:
                    t = time.time()
                    backend.refresh(articles)
                    resp = backend.search(articles, {"query": {"ids": {"values": want_articles}}, "_source": False,
                                                     "size": len(want_articles)})
                    found = [h["_id"] for h in resp["hits"]["hits"]]
                    with self._lock:
                        for i in found:
                            self.seen.article_index.setdefault(i, t)
                if want_alerts:
                    t = time.time()
                    backend.refresh(alerts)
                    resp = backend.search(alerts, {
                        "size": 0, "query": {"terms": {"article_id": want_alerts}},
                        "aggs": {"ids": {"terms": {"field": "article_id", "size": len(want_alerts)}}},
                    })
                    found = [b["key"] for b in resp["aggregations"]["ids"]["buckets"]]
                    with self._lock:
                        for i in found:
                            self.seen.alert_index.setdefault(i, t)
                if want_articles or want_alerts:
                    self.poll_work_s.append(time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - a failed poll is retried on the next tick
                self.poll_errors += 1
                log.warning("index poll failed error=%r", exc)

    def lag(self) -> dict[str, int]:
        """Records behind the end of the articles topic, per branch (committed offsets)."""
        from connectors.kafka import consumer_lag

        out = {}
        for branch in ("alerts", "articles"):
            parts = consumer_lag(self.kafka, self.kafka.articles_topic, f"{self.names.group}.{branch}")
            out[branch] = sum(p["lag"] or 0 for p in parts.values())
        return out


class LagSampler:
    """Both branches' consumer lag every ``period_s``, in a thread."""

    def __init__(self, observer: Observer, period_s: float = 0.5):
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._observer = observer
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nwbench-lag", daemon=True)

    def __enter__(self) -> "LagSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            try:
                self.samples.append((t, self._observer.lag()))
            except Exception as exc:  # noqa: BLE001 - a missed sample is only a gap
                log.warning("lag sample failed error=%r", exc)
            self._stop.wait(max(0.0, self._period_s - (time.time() - t)))

    def at(self, t: float) -> dict[str, int] | None:
        """The sample nearest to wall time ``t``."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]


# --- phases --------------------------------------------------------------------------------


def _warm_up(obs: Observer, pipe: PipelineProcess, run: str, params: Params, started: float) -> dict:
    """Publish the warm-up set and wait until both branches have processed it (models loaded)."""
    raws = raw_articles(warmup_set(), run, "warmup")
    ids = obs.publish(raws)
    deadline = time.monotonic() + params.startup_timeout_s
    ready = False
    while time.monotonic() < deadline:
        pipe.check()
        if obs.wait(ids, ("article_index", "alert_record"), timeout_s=1.0):
            ready = True
            break
        # An article the pipeline dead-lettered never shows up; committed offsets say it was processed.
        if obs.seen.article_index and all(v == 0 for v in obs.lag().values()):
            obs.wait(ids, ("article_index", "alert_record"), timeout_s=2.0)  # the last index poll
            ready = True
            break
    if not ready:
        raise RuntimeError(f"pipeline {pipe.names.name} did not process the warm-up set within "
                           f"{params.startup_timeout_s:.0f} s:\n{pipe.log_tail()}")
    return {
        "startup_s": _r(time.monotonic() - started, 1),
        "warmup_articles": len(ids),
        "warmup_missing_article": [r.url for r, i in zip(raws, ids) if i not in obs.seen.article_index],
        "warmup_missing_alert": [r.url for r, i in zip(raws, ids) if i not in obs.seen.alert_record],
    }


def _throughput(obs: Observer, pipe: PipelineProcess, run: str, params: Params, *, seed: int) -> dict:
    """Publish N articles at once; seconds until the last is indexed (article branch) and alerted (alert branch)."""
    raws = raw_articles(synthetic_articles(params.articles, seed=seed), run, f"throughput-{seed}")
    obs.poll_s = 0.25
    t0 = time.time()
    ids = obs.publish(raws)
    publish_s = time.time() - t0
    complete = obs.wait(ids, ("article_index", "alert_record"), timeout_s=params.drain_timeout_s, pipeline=pipe)
    s = obs.seen
    out = {"articles": len(ids), "publish_s": _r(publish_s), "complete": complete}
    for label, got in (("indexed", s.article_index), ("alerted", s.alert_record)):
        done = [got[i] for i in ids if i in got]
        took = (max(done) - t0) if done else None
        out[f"{label}_n"] = len(done)
        out[f"{label}_s"] = _r(took)
        out[f"{label}_per_s"] = _r(len(done) / took, 2) if took else None
    return out


def _probe_latencies(obs: Observer, ids: list[str]) -> dict:
    return {
        "alert_topic": latency_stats(obs.latencies(ids, "alert_record"), len(ids)),
        "alert_topic_consumed": latency_stats(obs.latencies(ids, "alert_consumed"), len(ids)),
        "alert_index": latency_stats(obs.latencies(ids, "alert_index"), len(ids)),
        "article_index": latency_stats(obs.latencies(ids, "article_index"), len(ids)),
    }


def _probe(obs: Observer, raws, interval_s: float, lag: LagSampler, *, min_n: int, until_caught_up: bool) -> list[str]:
    """One article every ``interval_s`` on a fixed schedule (a slow publish does not shift the rest).

    With ``until_caught_up``, probing goes on past ``min_n`` while the article
    branch is still 10 or more records behind, up to ``len(raws)``.
    """
    ids = []
    start = time.monotonic()
    for i, raw in enumerate(raws):
        if i >= min_n:
            last = lag.samples[-1][1] if lag.samples else None
            if not until_caught_up or (last is not None and last["articles"] < BEHIND):
                break
        delay = start + i * interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ids.extend(obs.publish([raw]))
    return ids


BEHIND = 10  # records: a branch this far behind the topic's end is still working through the burst


def _group(obs: Observer, ids: list[str], lag: LagSampler) -> dict:
    lags = [lag.at(obs.seen.published[i]) or {} for i in ids]
    return {
        "n": len(ids),
        "lag_articles_median": _median([x["articles"] for x in lags if x]),
        "lag_alerts_median": _median([x["alerts"] for x in lags if x]),
        **_probe_latencies(obs, ids),
    }


def _steady(obs: Observer, pipe: PipelineProcess, run: str, params: Params) -> dict:
    obs.poll_s = params.poll_s
    raws = raw_articles(synthetic_articles(params.steady_samples, seed=2002), run, "steady")
    with LagSampler(obs) as lag:
        ids = _probe(obs, raws, params.interval_s, lag, min_n=len(raws), until_caught_up=False)
        obs.wait(ids, ("article_index", "alert_record", "alert_index"), timeout_s=30.0, pipeline=pipe)
    return {"interval_s": params.interval_s, "probes": _group(obs, ids, lag)}


def _burst(obs: Observer, pipe: PipelineProcess, run: str, params: Params, ner_rate: float | None) -> dict:
    """A burst the NER branch needs longer than the probe window to absorb, then paced probes.

    Probes are grouped by where the branches were when each was published:
    the alert branch still working through the burst itself (it must: the
    probes sit behind the burst in the same partitions), or the alert branch
    caught up while the article branch is still behind — the case the two
    consumer groups exist for.
    """
    window_s = params.burst_probes * params.interval_s
    size = params.burst
    if ner_rate:
        size = min(400, max(size, math.ceil(ner_rate * window_s * 1.5)))
    burst = raw_articles(synthetic_articles(size, seed=3003), run, "burst")
    probes = raw_articles(synthetic_articles(3 * params.burst_probes, seed=4004), run, "probe")
    obs.poll_s = params.poll_s
    with LagSampler(obs) as lag:
        t0 = time.time()
        burst_ids = obs.publish(burst)
        ids = _probe(obs, probes, params.interval_s, lag, min_n=params.burst_probes, until_caught_up=True)
        obs.wait(ids, ("alert_record", "alert_index"), timeout_s=30.0, pipeline=pipe)
        drained = obs.wait(burst_ids + ids, ("article_index",), timeout_s=params.burst_drain_timeout_s, pipeline=pipe)

    def done_after(seen: dict[str, float]) -> float | None:
        return _r(max(seen[i] for i in burst_ids) - t0, 2) if all(i in seen for i in burst_ids) else None

    at = {i: lag.at(obs.seen.published[i]) or {} for i in ids}
    in_burst = [i for i in ids if at[i].get("alerts", 0) >= BEHIND]
    isolated = [i for i in ids if at[i].get("alerts", BEHIND) < BEHIND and at[i].get("articles", 0) >= BEHIND]
    return {
        "burst": size,
        "interval_s": params.interval_s,
        "all": _group(obs, ids, lag),
        "alert_branch_in_burst": _group(obs, in_burst, lag),
        "alert_branch_caught_up_ner_behind": _group(obs, isolated, lag),
        "lag_articles_peak": max((s[1]["articles"] for s in lag.samples), default=None),
        "lag_alerts_peak": max((s[1]["alerts"] for s in lag.samples), default=None),
        "burst_alerted_after_s": done_after(obs.seen.alert_record),
        "burst_indexed_after_s": done_after(obs.seen.article_index),
        "burst_drained": drained,
        "lag_samples": [{"t": _r(t - t0, 2), **v} for t, v in lag.samples],
    }


def _median(xs):
    return statistics.median(xs) if xs else None


def kafka_read_rate(kafka) -> dict:
    """Bare kafka-python read of the articles topic from the start: the source's ceiling, for scale."""
    from kafka import TopicPartition

    from connectors.kafka import new_consumer

    consumer = new_consumer(kafka, None, client_id="nwbench-read", max_poll_records=2000)
    try:
        tps = [TopicPartition(kafka.articles_topic, p) for p in sorted(consumer.partitions_for_topic(kafka.articles_topic) or ())]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        consumer.seek_to_beginning(*tps)
        total = sum(ends.values())
        got, nbytes = 0, 0
        t0 = time.perf_counter()
        while got < total and time.perf_counter() - t0 < 30:
            for msgs in consumer.poll(timeout_ms=200).values():
                got += len(msgs)
                nbytes += sum(len(m.value or b"") for m in msgs)
        took = time.perf_counter() - t0
    finally:
        consumer.close()
    return {"records": got, "mb": _r(nbytes / 1e6, 2), "seconds": _r(took), "per_s": _r(got / took, 1) if took else None}


# --- the batch baseline -------------------------------------------------------------------


def _batch_run(workdir: Path, raws, tag: str, *, ner: bool) -> float:
    """`newswatch run FILE.jsonl` on DirectRunner into a fresh SQLite store; the pipeline's own elapsed seconds."""
    path = workdir / f"batch-{tag}.jsonl"
    path.write_text("".join(r.to_json() + "\n" for r in raws), encoding="utf-8")
    store = workdir / f"batch-{tag}.db"
    env = _clean_env(NEWSWATCH_STORE__PATH=str(store), NEWSWATCH_STORE__DEAD_LETTER_PATH=str(workdir / f"batch-{tag}-dead.jsonl"))
    cmd = [*_newswatch_cmd(), "-q", "run", str(path), "--batch", "--json", *([] if ner else ["--no-ner"])]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"batch run failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    report = json.loads(proc.stdout)
    if report["summary"]["articles"] != len(raws):
        raise RuntimeError(f"batch run stored {report['summary']['articles']} of {len(raws)} articles: {report['summary']}")
    return float(report["elapsed_s"])


def batch_baseline(workdir: Path, run: str, params: Params, *, ner: bool, seed: int) -> dict:
    """Batch throughput with start-up removed: N / (time(warm-up + N) - time(warm-up)), one pair per seed."""
    warm = raw_articles(warmup_set(), run, "batch-warmup")
    measured = raw_articles(synthetic_articles(params.articles, seed=seed), run, f"batch-{seed}")
    tag = f"{'ner' if ner else 'noner'}-{seed}"
    small = _batch_run(workdir, warm, f"{tag}-small", ner=ner)
    big = _batch_run(workdir, warm + measured, f"{tag}-big", ner=ner)
    took = big - small
    return {"articles": len(measured), "warmup_only_s": small, "warmup_plus_n_s": big, "seconds": _r(took),
            "per_s": _r(len(measured) / took, 2) if took > 0 else None}


def summarize_repeats(samples: list[dict], seconds: str, per_s: str, n: str) -> dict:
    """Median rate (and its spread) over repeats."""
    rates = [x[per_s] for x in samples if x.get(per_s)]
    return {
        "articles": samples[0][n] if samples else None,
        "repeats": len(rates),
        "seconds": _r(_median([x[seconds] for x in samples if x.get(seconds) is not None])),
        "per_s": _r(_median(rates), 2),
        "min_per_s": min(rates, default=None),
        "max_per_s": max(rates, default=None),
    }


# --- one streaming pipeline --------------------------------------------------------------------


def streaming_case(workdir: Path, names: Names, params: Params, *, ner: bool, latency: bool, seed: int) -> dict:
    """Start the pipeline, warm it up, measure; always stop it and delete its indices and topics."""
    from connectors.kafka import ensure_topics

    kafka = names.kafka()
    # Created here, not by the pipeline, so that the warm-up can be published before it is up.
    ensure_topics(kafka)
    pipe = PipelineProcess(names, workdir, ner=ner)
    obs = None
    result: dict = {"name": names.name, "ner": ner}
    try:
        obs = Observer(names)
        started = time.monotonic()
        pipe.start()
        result["warmup"] = _warm_up(obs, pipe, names.name, params, started)
        runs = [_throughput(obs, pipe, names.name, params, seed=seed + k) for k in range(params.repeats)]
        result["throughput_runs"] = runs
        result["indexed"] = summarize_repeats(runs, "indexed_s", "indexed_per_s", "indexed_n")
        result["alerted"] = summarize_repeats(runs, "alerted_s", "alerted_per_s", "alerted_n")
        if latency:
            result["steady"] = _steady(obs, pipe, names.name, params)
            result["burst"] = _burst(obs, pipe, names.name, params, result["indexed"]["per_s"])
        result["index_poll"] = {"errors": obs.poll_errors, "polls": len(obs.poll_work_s),
                                "work_median_s": _r(_median(obs.poll_work_s)), "work_p95_s": _r(percentile(obs.poll_work_s, 0.95))}
        result["kafka_read"] = kafka_read_rate(kafka)
    except Exception:
        log.error("pipeline %s log tail:\n%s", names.name, pipe.log_tail())
        raise
    finally:
        pipe.stop()
        if obs is not None:
            obs.close()
        _cleanup(names)
    return result


def _cleanup(names: Names) -> None:
    from connectors.search_index import open_index

    try:
        store = open_index(names.index())
        try:
            store.delete_indices()
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - reported, the run's numbers are still good
        log.error("could not delete indices prefix=%s error=%r", names.name, exc)
    try:
        from kafka import KafkaAdminClient

        from connectors.kafka import client_config

        kafka = names.kafka()
        admin = KafkaAdminClient(**client_config(kafka), client_id="nwbench-admin")
        try:
            admin.delete_topics([kafka.articles_topic, kafka.alerts_topic, kafka.dead_letter_topic], timeout_ms=10000)
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - leftover topics are harmless
        log.warning("could not delete topics of %s error=%r", names.name, exc)


# --- the report -------------------------------------------------------------------------------


def _throughput_rows(cases: dict[bool, dict], batch: dict[bool, dict]) -> list[dict]:
    def row(case: str, mode: str, m: dict, base: float | None) -> dict:
        return {"case": case, "mode": mode, "articles": m["articles"], "repeats": m["repeats"], "median_s": m["seconds"],
                "articles_per_s": m["per_s"], "min_per_s": m["min_per_s"], "max_per_s": m["max_per_s"],
                "vs_batch": _ratio(m["per_s"], base)}

    rows = []
    for ner in (True, False):
        mode = "ner" if ner else "no-ner"
        base = batch[ner]["per_s"]
        rows.append(row("batch DirectRunner → SQLite (baseline)", mode, batch[ner], base))
        rows.append(row("stream → all articles indexed", mode, cases[ner]["indexed"], base))
        rows.append(row("stream → all alerted (alerts topic)", mode, cases[ner]["alerted"], base))
    k = cases[True]["kafka_read"]
    rows.append({"case": "bare Kafka read (scale only)", "mode": "-", "articles": k["records"], "repeats": 1,
                 "median_s": k["seconds"], "articles_per_s": k["per_s"], "min_per_s": None, "max_per_s": None,
                 "vs_batch": _ratio(k["per_s"], batch[True]["per_s"])})
    return rows


_LATENCY_GROUPS = (
    ("steady", "probes", "steady: 1 article every {interval_s} s"),
    ("burst", "all", "burst: all probes"),
    ("burst", "alert_branch_in_burst", "burst: alert branch still in the burst"),
    ("burst", "alert_branch_caught_up_ner_behind", "burst: alert branch caught up, NER branch behind"),
)


def _latency_rows(case: dict) -> list[dict]:
    base = case["steady"]["probes"]
    rows = []
    for phase, key, label in _LATENCY_GROUPS:
        g = case[phase][key]
        rows.append({
            "probes": label.format(**case[phase]),
            "n": g["n"],
            "lag_ner_branch": g["lag_articles_median"],
            "lag_alert_branch": g["lag_alerts_median"],
            "alert_topic_median_s": g["alert_topic"]["median_s"],
            "alert_topic_p95_s": g["alert_topic"]["p95_s"],
            "alert_index_median_s": g["alert_index"]["median_s"],
            "alert_index_p95_s": g["alert_index"]["p95_s"],
            "article_median_s": g["article_index"]["median_s"],
            "article_p95_s": g["article_index"]["p95_s"],
            "topic_median_vs_steady": _ratio(g["alert_topic"]["median_s"], base["alert_topic"]["median_s"]),
            "topic_p95_vs_steady": _ratio(g["alert_topic"]["p95_s"], base["alert_topic"]["p95_s"]),
            "index_median_vs_steady": _ratio(g["alert_index"]["median_s"], base["alert_index"]["median_s"]),
        })
    return rows


def run(quick: bool = False) -> dict:
    """Run the whole benchmark (about 2 minutes with ``quick``, 5 without) and print its tables."""
    params = QUICK if quick else FULL
    # The watcher threads share two busy cores; kafka-python then warns about every slow selector task.
    kafka_log = logging.getLogger("kafka")
    kafka_level = kafka_log.level
    kafka_log.setLevel(logging.ERROR)
    try:
        return _run(params)
    finally:
        kafka_log.setLevel(kafka_level)


def _run(params: Params) -> dict:
    bootstrap = os.environ.get(KAFKA_ENV) or DEFAULT_KAFKA
    hosts = json.loads(os.environ[INDEX_ENV]) if os.environ.get(INDEX_ENV) else DEFAULT_INDEX
    run_id = f"nwbench-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    cases: dict[bool, dict] = {}
    batch: dict[bool, dict] = {}
    with tempfile.TemporaryDirectory(prefix="nwbench-") as tmp:
        workdir = Path(tmp)
        # Baseline and streaming of one mode back to back, so that their ratio sees the same machine load.
        for ner in (True, False):
            mode = "ner" if ner else "noner"
            runs = [batch_baseline(workdir, run_id, params, ner=ner, seed=42 + k) for k in range(params.repeats)]
            batch[ner] = {**summarize_repeats(runs, "seconds", "per_s", "articles"), "runs": runs}
            names = Names(f"{run_id}-{mode}", bootstrap, hosts)
            cases[ner] = streaming_case(workdir, names, params, ner=ner, latency=ner, seed=42)

    tput = _throughput_rows(cases, batch)
    print_table(f"streaming throughput, {params.articles} ~5 KB articles in 6 languages per repeat, start-up excluded "
                "(median of repeats; the machine is shared: quote ratios)", tput)
    ner_case = cases[True]
    lat = _latency_rows(ner_case)
    bu = ner_case["burst"]
    print_table(f"end-to-end latency, NER on, lag in records at publish (median); burst = {bu['burst']} articles "
                f"at once, then 1 probe every {bu['interval_s']} s until the NER branch caught up", lat)
    drain = [{"branch": f"{ner_case['name']}.alerts", "lag_peak": bu["lag_alerts_peak"],
              "burst_done_after_s": bu["burst_alerted_after_s"]},
             {"branch": f"{ner_case['name']}.articles (NER)", "lag_peak": bu["lag_articles_peak"],
              "burst_done_after_s": bu["burst_indexed_after_s"]}]
    print_table("the burst per branch: peak consumer lag (records) and when its last article was alerted / indexed", drain)
    startup = [{"pipeline": c["name"], "startup_s": c["warmup"]["startup_s"], "warmup_articles": c["warmup"]["warmup_articles"],
                "not_indexed": len(c["warmup"]["warmup_missing_article"]), "no_alert": len(c["warmup"]["warmup_missing_alert"])}
               for c in cases.values()]
    print_table("start-up (spawn → warm-up set processed by both branches; excluded above)", startup)
    elapsed = time.monotonic() - started
    print(f"\nstreaming bench took {elapsed:.0f} s")
    return {
        "params": asdict(params),
        "throughput": tput,
        "latency": lat,
        "burst": drain,
        "startup": startup,
        "cases": {("ner" if k else "no-ner"): v for k, v in cases.items()},
        "batch": {("ner" if k else "no-ner"): v for k, v in batch.items()},
        "elapsed_s": round(elapsed, 1),
    }
