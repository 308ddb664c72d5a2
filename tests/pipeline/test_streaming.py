"""The streaming pipeline end to end, run the way a user runs it, against the real Kafka and OpenSearch.

``newswatch run --stream`` runs as a subprocess (its own process group, so
that Prism dies with it), articles arrive through ``newswatch ingest --once``
from a local HTTP feed or through :class:`ArticlePublisher`, and the results
are read back from the search server (``open_index``, real-time ``mget``) and
from the alerts and dead-letter topics. Every pipeline has its own uuid-named
topics, consumer group and index prefix; the indices are deleted at the end.

What is expected is never written down by hand: each article is parsed,
language-detected and linked in this process with the same plain functions
the pipeline uses, and the alert rules are matched on it; alert ids are
``Alert.make_id(rule, article)``, dead-letter ids come from the Kafka offsets
of the poison messages. A few facts about the seed watchlist (Naryshkin is
Q320225, ...) are asserted on top, so that an empty expectation cannot pass.

The kill-and-restart test has a pipeline of its own and runs first; the
other four share one pipeline that reaches OpenSearch through a loopback TCP
proxy, which the outage test switches off and on again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import pytest

from connectors.base import payload_of
from connectors.kafka import ArticlePublisher, consumer_lag, ensure_topics
from connectors.search_index import IndexStore, open_index
from core.records import Alert, Article, DeadLetter, RawArticle
from core.settings import IndexSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "seeds" / "000_f1290934ed803041.txt"
NEWSWATCH = Path(sys.executable).with_name("newswatch")
# Marks every process a test starts (Prism inherits it), so leaks can be found by environment.
RUN_MARK = "NEWSWATCH_E2E_RUN"
# Settings sections the tests set for the subprocesses; anything else (runner, models) is inherited.
OWN_SECTIONS = ("NEWSWATCH_KAFKA__", "NEWSWATCH_INDEX__", "NEWSWATCH_FETCH__", "NEWSWATCH_STORE__", "NEWSWATCH_METRICS__")

# Startup (Prism, workers, models) takes ~20 s on an idle machine; the machine is shared.
START_TIMEOUT_S = 150
FLOW_TIMEOUT_S = 90


# --- articles ------------------------------------------------------------------------------

# (title, body) per language: short news items naming watched people and the treaty, and one naming nobody.
STORIES = [
    ("Sergei Lavrov meets Antony Blinken in Geneva",
     "Russian Foreign Minister Sergei Lavrov met US Secretary of State Antony Blinken in Geneva on Friday. "
     "The two men discussed the New START treaty and a possible prisoner exchange. No joint statement was issued."),
    ("Нарышкин провёл переговоры в Анкаре",
     "Директор СВР Сергей Нарышкин провёл переговоры с директором ЦРУ Уильямом Бернсом в Анкаре. "
     "Стороны обсудили договор СНВ-III и обмен заключёнными. Песков отказался от комментариев."),
    ("Le traité New START en suspens",
     "Moscou a suspendu sa participation au traité New START. Le porte-parole du Kremlin, Dmitri Peskov, "
     "a refusé de commenter la décision devant les journalistes."),
    ("Pogoda w Krakowie",
     "W Krakowie jutro będzie słonecznie, a temperatura wzrośnie do dwudziestu stopni. "
     "Synoptycy zapowiadają spokojny weekend bez opadów."),
    ("Наришкін у Стамбулі",
     "Голова російської розвідки Сергій Наришкін прибув до Стамбула. Зустріч із представниками США тривала дві години."),
    ("Peskow äußert sich zu Gesprächen",
     "Kremlsprecher Dmitri Peskow sagte, die Gespräche mit Washington über den Vertrag New START seien unterbrochen."),
]

# Long paragraphs for the burst that keeps statistical NER busy, per language.
BURST_SENTENCES = {
    "en": ["Kremlin spokesman Dmitry Peskov told reporters in Moscow on day {n} that talks with Washington would continue.",
           "Foreign Minister Sergei Lavrov is expected to travel to Geneva next week, officials in Brussels said.",
           "Analysts at the Carnegie Endowment in Washington said the New START treaty expires in February.",
           "Antony Blinken met NATO ministers in Bucharest and discussed support for Ukraine with Jens Stoltenberg."],
    "de": ["Kremlsprecher Dmitri Peskow sagte am Tag {n} in Moskau, die Gespräche mit Washington würden fortgesetzt.",
           "Außenminister Sergej Lawrow reist nach Angaben aus Berlin in der kommenden Woche nach Genf.",
           "Experten der Stiftung Wissenschaft und Politik in Berlin erinnerten an den Vertrag New START.",
           "Bundeskanzler Olaf Scholz telefonierte mit Emmanuel Macron über die Lage in der Ukraine."],
    "ru": ["Пресс-секретарь Кремля Дмитрий Песков заявил в день {n} в Москве, что переговоры с Вашингтоном продолжатся.",
           "Министр иностранных дел Сергей Лавров на следующей неделе посетит Женеву, сообщили в Брюсселе.",
           "Эксперты Московского центра Карнеги напомнили, что срок действия договора СНВ-III истекает в феврале.",
           "Энтони Блинкен встретился с министрами НАТО в Бухаресте и обсудил поддержку Украины."],
}


def story(i: int, tag: str, source: str = "e2e-wire") -> RawArticle:
    """The i-th short article of a run; ``tag`` keeps URLs (and so article ids) apart between tests."""
    title, body = STORIES[i % len(STORIES)]
    return RawArticle(source=source, url=f"https://e2e.example.org/{tag}/{i}", title=f"{title} ({i})",
                      body=f"{body} ({tag} {i})", guid=f"{tag}-{i}")


def long_story(i: int, tag: str, min_chars: int) -> RawArticle:
    """A 3-5 KB article in English, German or Russian naming Peskov, Lavrov, Blinken and New START."""
    lang = ("en", "de", "ru")[i % 3]
    sentences, parts = BURST_SENTENCES[lang], []
    while sum(len(p) + 1 for p in parts) < min_chars:
        parts.append(sentences[len(parts) % len(sentences)].format(n=f"{i}.{len(parts)}"))
    return RawArticle(source="e2e-burst", url=f"https://e2e.example.org/{tag}/{i}", title=f"{parts[0][:60]} ({i})",
                      body=" ".join(parts), guid=f"{tag}-{i}")


def seed_article() -> tuple[str, str]:
    """The seed's title (first line) and body."""
    title, _, body = SEED.read_text(encoding="utf-8").partition("\n")
    return title.strip(), body.strip()


class Oracle:
    """The expected article ids and alerts: the pipeline's own plain functions, run here."""

    def __init__(self):
        from transforms.alerts import engine_from_settings
        from transforms.language import LanguageDetector
        from transforms.watchlist import EntityLinker

        self.settings = Settings()
        self._detector = LanguageDetector.from_settings(self.settings)
        self._linker = EntityLinker.from_settings(self.settings)
        self._engine = engine_from_settings(self.settings)

    def article(self, raw: RawArticle) -> Article:
        from transforms.entities import link_article
        from transforms.parse import to_article

        return link_article(self._linker, self._detector.detect_article(to_article(raw, self.settings.input)))

    def alerts(self, raws: Iterable[RawArticle]) -> dict[str, Alert]:
        """Expected alerts by id."""
        return {a.id: a for raw in raws for a in self._engine.match(self.article(raw))}

    def ids(self, raws: Iterable[RawArticle]) -> list[str]:
        return [self.article(r).id for r in raws]


# --- names, environment and processes -------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """One pipeline's topics, consumer group and index prefix."""

    base: str

    @classmethod
    def new(cls, label: str) -> "Names":
        return cls(f"nwtest-e2e-{label}-{uuid.uuid4().hex[:8]}")

    def kafka(self, bootstrap: str) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=bootstrap, articles_topic=f"{self.base}-articles",
                             alerts_topic=f"{self.base}-alerts", dead_letter_topic=f"{self.base}-dead",
                             consumer_group=f"{self.base}-group")

    def env(self, bootstrap: str, index_url: str, tmp: Path, run_id: str) -> dict[str, str]:
        k = self.kafka(bootstrap)
        env = {key: v for key, v in os.environ.items() if not key.startswith(OWN_SECTIONS) and key != "NEWSWATCH_CONFIG"}
        env.update({
            "NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "NEWSWATCH_KAFKA__ARTICLES_TOPIC": k.articles_topic,
            "NEWSWATCH_KAFKA__ALERTS_TOPIC": k.alerts_topic,
            "NEWSWATCH_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
            "NEWSWATCH_KAFKA__CONSUMER_GROUP": k.consumer_group,
            "NEWSWATCH_INDEX__HOSTS": json.dumps([index_url]),
            "NEWSWATCH_INDEX__INDEX_PREFIX": self.base,
            "NEWSWATCH_FETCH__STATE_PATH": str(tmp / "feeds.db"),
            "NEWSWATCH_STORE__PATH": str(tmp / "store" / "newswatch.db"),
            "NEWSWATCH_STORE__DEAD_LETTER_PATH": str(tmp / "store" / "dead-letters.jsonl"),
            RUN_MARK: run_id,
        })
        return env


def group_members(pgid: int) -> list[str]:
    """Live processes of a process group, from ps (zombies waiting for their reaper do not count)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    members = []
    for line in out.splitlines():
        fields = line.split(None, 3)
        if len(fields) >= 3 and fields[1] == str(pgid) and not fields[2].startswith("Z"):
            members.append(line.strip())
    return members


def marked_processes(mark: str) -> list[int]:
    """Live processes whose RUN_MARK is ``mark`` or below it (``mark/...``), wherever they ended up.

    Children inherit the environment, so this finds a Prism that left the
    process group too. Zombies have an empty environment and do not count.
    """
    exact, below = f"{RUN_MARK}={mark}".encode(), f"{RUN_MARK}={mark}/".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                variables = f.read().split(b"\0")
        except OSError:
            continue
        if any(v == exact or v.startswith(below) for v in variables):
            found.append(int(entry))
    return found


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, *, stream: "Stream | None" = None,
             interval_s: float = 0.2, explain: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s`` or when the pipeline died.

    ``explain`` adds what the pipeline did instead (e.g. the dead letters) to the failure.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if stream is not None and not stream.alive():
            raise AssertionError(f"the pipeline exited ({stream.proc.returncode}) while waiting for {what}:\n{stream.log_tail()}")
        if time.monotonic() > deadline:
            context = f"\n{explain()}" if explain is not None else ""
            tail = f"\npipeline log:\n{stream.log_tail()}" if stream is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{context}{tail}")
        time.sleep(interval_s)


class Stream:
    """``newswatch run --stream`` as a subprocess in a process group of its own."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str):
        self.mark = f"{env[RUN_MARK]}/{name}"
        self.env = {**env, RUN_MARK: self.mark}
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Stream":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(NEWSWATCH), "run", "--stream"], env=self.env, cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the leader's pid is the group id

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def start_offsets(self, group: str) -> dict[int, int]:
        """Where the source of ``group`` started, per partition (from its ``kafka source`` log line)."""
        for line in self.log_text().splitlines():
            if "kafka source " in line and f" group={group} " in line:
                spec = line.split("partitions=", 1)[1].split()
                return {int(p): int(rng.split("-")[0]) for p, rng in (item.split(":", 1) for item in spec)}
        return {}

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def _wait_group_gone(self, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while (left := group_members(self.pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def kill(self) -> None:
        """SIGKILL the whole group (the CLI, its Beam workers and Prism) at once: a crash."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(10)
        left = self._wait_group_gone(10)
        assert not left, f"processes survived SIGKILL of group {self.pgid}: {left}"
        assert not marked_processes(self.mark), "a child of the pipeline left its process group and survived"

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM the group, SIGKILL what is left after ``timeout_s``; nothing of the group may survive."""
        if self.proc is None:
            return
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
        if self._wait_group_gone(timeout_s):
            self._signal_group(signal.SIGKILL)
        left = self._wait_group_gone(10)
        assert not left, f"processes of the pipeline's group {self.pgid} survived: {left}"
        assert not marked_processes(self.mark), "a child of the pipeline left its process group and survived"


def newswatch(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(NEWSWATCH), *args], env=env, capture_output=True, text=True, timeout=timeout_s)


def require_prism() -> None:
    prism = Settings().runner.prism_location
    if prism and prism.exists():
        return
    msg = f"no Prism runner binary at {prism}; build it with `make prism`"
    if os.environ.get("CI") or os.environ.get("NEWSWATCH_REQUIRE_SERVICES") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


# --- reading results -------------------------------------------------------------------------


class IndexCheck:
    """Reads a pipeline's indices directly (not through any proxy); ``mget`` is real-time."""

    def __init__(self, url: str, prefix: str):
        self.store: IndexStore = open_index(IndexSettings(hosts=[url], index_prefix=prefix))

    def present(self, kind: str, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        docs = self.store.backend.mget(self.store.names.alias(kind), ids, ["id"])
        return {d["_id"] for d in docs if d.get("found")}

    def docs(self, kind: str, ids: Iterable[str]) -> dict[str, dict]:
        docs = self.store.backend.mget(self.store.names.alias(kind), list(ids), True)
        return {d["_id"]: d["_source"] for d in docs if d.get("found")}

    def dead_letters(self) -> str:
        """The dead letters so far, one line each, for failure messages."""
        self.store.refresh()
        letters = self.store.list_dead_letters(limit=20)
        return "dead letters:\n" + "\n".join(f"  {d.stage} {d.reason} {d.error_class} origin={d.origin}: {d.detail[:400]}"
                                               for d in letters) if letters else "no dead letters"

    def close(self, delete: bool = True) -> None:
        try:
            if delete:
                self.store.delete_indices()
        finally:
            self.store.close()


class TopicReader:
    """Everything on a topic from its beginning; :meth:`drain` reads up to the current end offsets."""

    def __init__(self, bootstrap: str, topic: str):
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", client_id="newswatch-e2e-check")
        parts = wait_for(f"partitions of {topic}", lambda: self.consumer.partitions_for_topic(topic), 30)
        self.tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.records: list = []

    def drain(self, timeout_s: float = 20) -> list:
        end = self.consumer.end_offsets(self.tps)
        deadline = time.monotonic() + timeout_s
        while any(self.consumer.position(tp) < end[tp] for tp in self.tps):
            assert time.monotonic() < deadline, f"could not read {self.tps} up to {end}"
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(batch)
        return self.records

    def keys(self) -> list[str]:
        return [m.key.decode("utf-8") for m in self.drain()]

    def close(self) -> None:
        self.consumer.close()


def lag(k: KafkaSettings, branch: str) -> int:
    """Records of the articles topic the branch's consumer group has not committed yet."""
    parts = consumer_lag(k, k.articles_topic, f"{k.consumer_group}.{branch}")
    return sum(p["lag"] if p["lag"] is not None else 1 for p in parts.values())


def caught_up(k: KafkaSettings) -> bool:
    return lag(k, "alerts") == 0 and lag(k, "articles") == 0


def delete_topics(k: KafkaSettings) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=k.bootstrap_servers, client_id="newswatch-e2e-cleanup")
    try:
        admin.delete_topics([k.articles_topic, k.alerts_topic, k.dead_letter_topic])
    except Exception:  # noqa: BLE001 - uniquely named; a leftover topic harms nobody
        pass
    finally:
        admin.close()


def publish(k: KafkaSettings, raws: list[RawArticle]) -> None:
    with ArticlePublisher(k) as pub:
        stats = pub.publish(raws)
    assert stats.sent == len(raws) and not stats.rejected


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_id():
    rid = uuid.uuid4().hex
    yield rid
    # Whatever a test did, nothing it started may outlive the module.
    leaked = marked_processes(rid)
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leaked, f"processes started by the tests were still running: {leaked}"


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle()


# --- 2. a crash mid-stream, and a restart with the same consumer group -------------------------


def test_a_pipeline_killed_mid_stream_resumes_without_loss_or_duplicates(kafka_bootstrap, opensearch_url, tmp_path, run_id,
                                                                         oracle, record_property):
    require_prism()
    names = Names.new("kill")
    k = names.kafka(kafka_bootstrap)
    ensure_topics(k)
    env = names.env(kafka_bootstrap, opensearch_url, tmp_path, run_id)
    index = IndexCheck(opensearch_url, names.base)
    alerts_topic = TopicReader(kafka_bootstrap, k.alerts_topic)
    # A light first wave, then a heavier second one that keeps NER busy when the kill comes.
    wave1 = [story(i, names.base) for i in range(10)]
    wave2 = [story(i, names.base) if i % 2 else long_story(i, names.base, 2000) for i in range(10, 30)]
    raws = wave1 + wave2
    ids = oracle.ids(raws)
    assert len(set(ids)) == len(raws) == 30
    expected = oracle.alerts(raws)
    wave2_alerts = set(oracle.alerts(wave2))
    first, second = Stream(env, tmp_path, "first"), Stream(env, tmp_path, "second")
    try:
        first.start()
        publish(k, wave1)
        wait_for("part of the first wave in the index", lambda: index.present("articles", ids), START_TIMEOUT_S, stream=first)
        publish(k, wave2)
        # Kill while the second wave is in flight: the alert branch has sent some of its alerts,
        # whose offsets may not be committed yet; the article branch is still in NER.
        wait_for("an alert of the second wave on the alerts topic", lambda: wave2_alerts & set(alerts_topic.keys()),
                 FLOW_TIMEOUT_S, stream=first, interval_s=0.05)
        first.kill()
        at_kill = index.present("articles", ids)
        alerts_at_kill = len(alerts_topic.drain())
        assert 0 < len(at_kill) < len(ids), f"{len(at_kill)} of {len(ids)} articles were indexed at the kill; not mid-stream"

        second.start()
        wait_for("every article and alert in the index after the restart",
                 lambda: index.present("articles", ids) == set(ids) and index.present("alerts", expected) == set(expected),
                 START_TIMEOUT_S, stream=second, explain=index.dead_letters)
        wait_for("both consumer groups committed to the end", lambda: caught_up(k), FLOW_TIMEOUT_S, stream=second)
        # The restart resumed at the committed offsets, which never run ahead of what was written.
        resumed = sum(second.start_offsets(f"{k.consumer_group}.articles").values())
        assert resumed <= len(at_kill)
        index.store.refresh()
        # Deterministic ids make every replayed write an update of the same document.
        assert index.store.count_articles() == len(ids)
        assert index.store.count_alerts() == len(expected)
        assert index.store.count_dead_letters() == 0, index.dead_letters()
        # On the topic a replay may repeat alerts (at least once), but never invent one or miss one.
        keys = alerts_topic.keys()
        assert set(keys) == set(expected)
        replays = len(keys) - len(set(keys))
        record_property("articles_indexed_at_kill", len(at_kill))
        record_property("alert_messages_at_kill", alerts_at_kill)
        record_property("alert_messages_replayed", replays)
        record_property("articles_reread_after_restart", len(ids) - resumed)
        print(f"\nkill/restart: {len(at_kill)}/{len(ids)} articles indexed at the kill, {alerts_at_kill} alert messages "
              f"on the topic then; the restart resumed at {resumed} and re-read {len(ids) - resumed} articles; "
              f"{len(keys)} alert messages for {len(expected)} alerts ({replays} replayed)")
    finally:
        try:
            first.stop()
            second.stop()
        finally:
            alerts_topic.close()
            index.close()
            delete_topics(k)


@dataclass
class Shared:
    """The pipeline shared by the feed, poison, outage and latency tests."""

    names: Names
    kafka: KafkaSettings
    env: dict[str, str]
    proxy: Any  # tests.conftest.TcpProxy
    stream: Stream
    index: IndexCheck
    alerts_topic: TopicReader
    dead_topic: TopicReader
    tmp: Path


@pytest.fixture(scope="module")
def shared(kafka_bootstrap, opensearch_url, tmp_path_factory, run_id, oracle, tcp_proxy_class):
    require_prism()
    names = Names.new("shared")
    k = names.kafka(kafka_bootstrap)
    ensure_topics(k)
    tmp = tmp_path_factory.mktemp("shared-stream")
    target = urlsplit(opensearch_url)
    proxy = tcp_proxy_class((target.hostname, target.port))
    proxy.start()
    env = names.env(kafka_bootstrap, proxy.url, tmp, run_id)
    index = IndexCheck(opensearch_url, names.base)
    stream = Stream(env, tmp, "stream").start()
    readers: list[TopicReader] = []
    try:
        readers = [TopicReader(kafka_bootstrap, k.alerts_topic), TopicReader(kafka_bootstrap, k.dead_letter_topic)]
        # Ready means an article went all the way through both branches.
        warmup = [story(0, f"{names.base}-warmup")]
        publish(k, warmup)
        article_ids, alert_ids = oracle.ids(warmup), list(oracle.alerts(warmup))
        assert alert_ids
        wait_for("the warm-up article and its alerts in the index",
                 lambda: index.present("articles", article_ids) and index.present("alerts", alert_ids) == set(alert_ids),
                 START_TIMEOUT_S, stream=stream, explain=index.dead_letters)
        yield Shared(names, k, env, proxy, stream, index, *readers, tmp)
    finally:
        try:
            stream.stop()
        finally:
            proxy.stop()
            for r in readers:
                r.close()
            index.close()
            delete_topics(k)


# --- 1. feed → Kafka → pipeline → index, alerts topic and the CLI ------------------------------


def rss(base_url: str, items: list[tuple[str, str, str]]) -> bytes:
    """An RSS 2.0 document with (slug, title, body) items linking to ``base_url``/news/<slug>."""
    root = ET.Element("rss", version="2.0")
    channel = ET.SubElement(root, "channel")
    ET.SubElement(channel, "title").text = "E2E Wire"
    ET.SubElement(channel, "link").text = f"{base_url}/"
    ET.SubElement(channel, "description").text = "News for the end-to-end test"
    published = datetime(2022, 11, 14, 8, 0, tzinfo=timezone.utc)
    for n, (slug, title, body) in enumerate(items):
        item = ET.SubElement(channel, "item")
        ET.SubElement(item, "title").text = title
        ET.SubElement(item, "link").text = f"{base_url}/news/{slug}"
        ET.SubElement(item, "guid").text = f"{base_url}/news/{slug}"
        ET.SubElement(item, "pubDate").text = format_datetime(published + timedelta(minutes=n))
        ET.SubElement(item, "description").text = body
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


class FeedServer:
    """A feed served over HTTP on 127.0.0.1 (an ephemeral port)."""

    def __init__(self):
        self.body = b""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/feed.xml":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_feed_items_flow_to_the_index_the_alerts_topic_and_the_cli(shared, oracle):
    from connectors.feeds import parse_feed

    feed = FeedServer()
    try:
        seed_title, seed_body = seed_article()
        slug = uuid.uuid4().hex[:6]
        items = [(f"seed-{slug}", seed_title, seed_body)]
        items += [(f"{i}-{slug}", title, body) for i, (title, body) in enumerate(STORIES)]
        feed.body = rss(feed.base_url, items)
        feed_url = f"{feed.base_url}/feed.xml"
        # The oracle reads the same bytes with the same parser the poller uses.
        raws = [r for r in parse_feed(feed.body, feed_url) if isinstance(r, RawArticle)]
        assert len(raws) == len(items)
        articles = {a.id: a for a in map(oracle.article, raws)}
        expected_alerts = oracle.alerts(raws)

        done = newswatch(shared.env, "ingest", "--once", "--feed", feed_url, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["published"] == len(items)
    finally:
        feed.close()

    idx = shared.index
    wait_for("the feed's articles and alerts in the index",
             lambda: idx.present("articles", articles) == set(articles) and idx.present("alerts", expected_alerts) == set(expected_alerts),
             FLOW_TIMEOUT_S, stream=shared.stream, explain=idx.dead_letters)

    # Canonical ids from the watchlist and concepts, whatever the language or spelling.
    docs = idx.docs("articles", articles)
    by_title = {d["title"]: d for d in docs.values()}

    def canonical(title: str) -> set[str]:
        return {e.get("canonical_id") for e in by_title[title]["entities"]} - {None}

    seed_doc = by_title[seed_title]
    assert {"Q320225", "Q4161286", "Q52649", "concept:new-start"} <= canonical(seed_title)
    assert seed_doc["language"] == "de"
    assert any(e["source"].startswith("ner.") for e in seed_doc["entities"]), "the article branch ran statistical NER"
    assert "Q52649" in canonical(STORIES[0][0])  # "Sergei Lavrov"
    assert "Q320225" in canonical(STORIES[1][0])  # "Нарышкин"
    assert "concept:new-start" in canonical(STORIES[2][0])  # "traité New START"
    for doc in docs.values():
        want = {e.canonical_id for e in articles[doc["id"]].entities if e.canonical_id}
        assert want <= canonical(doc["title"]), doc["title"]
        assert doc["language"] == articles[doc["id"]].language

    # Alerts: exactly the expected ids (rule + article), in the index and on the topic.
    by_article = {aid: {a.rule_id for a in expected_alerts.values() if a.article_id == aid} for aid in articles}
    seed_id = next(aid for aid, a in articles.items() if a.title == seed_title)
    assert {"naryshkin", "peskov", "lavrov", "new-start"} <= by_article[seed_id]
    assert not by_article[next(aid for aid, a in articles.items() if a.title == STORIES[3][0])]  # names nobody
    stored = idx.docs("alerts", expected_alerts)
    for alert_id, alert in expected_alerts.items():
        assert alert_id == Alert.make_id(alert.rule_id, alert.article_id)
        assert (stored[alert_id]["rule_id"], stored[alert_id]["article_id"]) == (alert.rule_id, alert.article_id)
    ours = set(articles)
    wait_for("the feed's alerts on the alerts topic", lambda: set(shared.alerts_topic.keys()) >= set(expected_alerts), 30)
    topic_alerts = [json.loads(m.value) for m in shared.alerts_topic.records]
    assert {a["id"] for a in topic_alerts if a["article_id"] in ours} == set(expected_alerts)
    assert all(m.key.decode() == a["id"] for m, a in zip(shared.alerts_topic.records, topic_alerts))

    # The command line, with the same environment, finds them.
    idx.store.refresh()
    found = newswatch(shared.env, "search", "--entity", "Нарышкин", "--json", "-n", "100")
    assert found.returncode == 0, found.stderr
    hits = {h["article_id"] for h in json.loads(found.stdout)["hits"]}
    naryshkin_articles = {aid for aid, a in articles.items() if any(e.canonical_id == "Q320225" for e in a.entities)}
    assert naryshkin_articles and naryshkin_articles <= hits
    phrase = newswatch(shared.env, "search", '"New START"', "--json", "-n", "100")
    assert phrase.returncode == 0, phrase.stderr
    assert seed_id in {h["article_id"] for h in json.loads(phrase.stdout)["hits"]}
    listed = newswatch(shared.env, "alerts", "list", "--json", "-n", "1000")
    assert listed.returncode == 0, listed.stderr
    listed_ids = {a["id"] for a in json.loads(listed.stdout) if a["article_id"] in ours}
    assert listed_ids == set(expected_alerts)
    narrowed = newswatch(shared.env, "alerts", "list", "--rule", "lavrov", "--json", "-n", "1000")
    assert narrowed.returncode == 0, narrowed.stderr
    assert {a["article_id"] for a in json.loads(narrowed.stdout) if a["article_id"] in ours} == {
        a.article_id for a in expected_alerts.values() if a.rule_id == "lavrov"}


# --- 4. poison messages -----------------------------------------------------------------------


def test_poison_messages_become_dead_letters_and_later_articles_still_arrive(shared, oracle):
    from kafka import KafkaProducer

    k, idx = shared.kafka, shared.index
    tag = uuid.uuid4().hex[:6]
    poison = [b"\xff\xfe\x00 not UTF-8 " + tag.encode(), json.dumps({"not": "an article", "tag": tag}).encode()]
    letters: dict[str, DeadLetter] = {}
    producer = KafkaProducer(bootstrap_servers=k.bootstrap_servers, client_id="newswatch-e2e-poison")
    try:
        # Poison first in every partition, so every good article below comes after one.
        for partition in sorted(producer.partitions_for(k.articles_topic)):
            for value in poison:
                meta = producer.send(k.articles_topic, key=b"poison", value=value, partition=partition).get(timeout=30)
                letter = DeadLetter("kafka.decode", "poison_message", "", payload_of(value),
                                    origin=f"{meta.topic}/{meta.partition}/{meta.offset}")
                letters[letter.id] = letter
    finally:
        producer.close()
    good = [story(i, f"after-poison-{tag}") for i in range(6)]
    publish(k, good)
    ids, expected_alerts = oracle.ids(good), oracle.alerts(good)

    wait_for("the good articles, their alerts and the dead letters in the index",
             lambda: idx.present("articles", ids) == set(ids) and idx.present("alerts", expected_alerts) == set(expected_alerts)
             and idx.present("dead_letters", letters) == set(letters),
             FLOW_TIMEOUT_S, stream=shared.stream, explain=idx.dead_letters)
    for letter_id, doc in idx.docs("dead_letters", letters).items():
        want = letters[letter_id]
        assert (doc["stage"], doc["reason"], doc["origin"], doc["payload"]) == ("kafka.decode", "poison_message", want.origin, want.payload)
    assert sum(1 for d in idx.docs("dead_letters", letters).values() if d["payload"].startswith("base64:")) == len(letters) // 2

    wait_for("the dead letters on the dead-letter topic", lambda: set(shared.dead_topic.keys()) >= set(letters), 30)
    ours = [json.loads(m.value) for m in shared.dead_topic.records if m.key.decode() in letters]
    assert {d["id"] for d in ours} == set(letters)
    assert all(d["reason"] == "poison_message" and d["stage"] == "kafka.decode" for d in ours)
    # Both branches may report a poison message, under the same deterministic id: the index holds one each.
    idx.store.refresh()
    origins = {letter.origin for letter in letters.values()}
    indexed = [d for d in idx.store.list_dead_letters(stage="kafka.decode", limit=1000) if d.origin in origins]
    assert len(indexed) == len(letters)


# --- 3. the search server stops and starts again -------------------------------------------------


OUTAGE_S = 5.0  # well below index.retry_deadline_s (300 s)
INDEX_RETRY_LINES = ("retry what=index.", "retry what=setup")


def _index_retries(stream: Stream) -> int:
    return sum(stream.log_text().count(line) for line in INDEX_RETRY_LINES)


def test_a_search_server_outage_delays_the_sinks_and_loses_nothing(shared, oracle, record_property):
    k, idx, proxy = shared.kafka, shared.index, shared.proxy
    tag = uuid.uuid4().hex[:6]
    raws = [story(i, f"outage-{tag}") for i in range(8)]
    ids, expected = oracle.ids(raws), oracle.alerts(raws)
    retries_before = _index_retries(shared.stream)

    proxy.stop()
    stopped = time.monotonic()
    try:
        publish(k, raws)
        # The pipeline works on through the outage: alerts reach Kafka while the index sinks retry.
        wait_for("an alert of the outage on the alerts topic", lambda: set(expected) & set(shared.alerts_topic.keys()),
                 FLOW_TIMEOUT_S, stream=shared.stream)
        wait_for("the index sink retrying against the stopped server", lambda: _index_retries(shared.stream) > retries_before,
                 FLOW_TIMEOUT_S, stream=shared.stream)
        # The outage itself lasts a few seconds (a stimulus, not a wait for readiness).
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        assert not idx.present("articles", ids) and not idx.present("alerts", expected), "written while the server was away"
    finally:
        outage = time.monotonic() - stopped
        proxy.start()

    wait_for("every article and alert once the server is back",
             lambda: idx.present("articles", ids) == set(ids) and idx.present("alerts", expected) == set(expected),
             FLOW_TIMEOUT_S, stream=shared.stream, explain=idx.dead_letters)
    recovered = time.monotonic() - stopped - outage
    wait_for("both consumer groups committed to the end", lambda: caught_up(k), FLOW_TIMEOUT_S, stream=shared.stream)
    idx.store.refresh()
    assert not idx.store.list_dead_letters(stage="index.write"), "the index sink gave records up"
    assert set(shared.alerts_topic.keys()) >= set(expected)
    record_property("outage_s", round(outage, 1))
    record_property("recovered_after_s", round(recovered, 1))
    print(f"\noutage: {outage:.1f} s down, {_index_retries(shared.stream) - retries_before} index retries logged, "
          f"everything indexed {recovered:.1f} s after the server came back")


# --- 5. alerts do not wait for NER ---------------------------------------------------------------


def test_alerts_do_not_wait_for_the_ner_backlog(shared, oracle, record_property):
    k, idx = shared.kafka, shared.index
    tag = uuid.uuid4().hex[:6]
    burst = [long_story(i, f"burst-{tag}", 3000 + (i % 5) * 400) for i in range(40)]
    marker = RawArticle(source="e2e-wire", url=f"https://e2e.example.org/marker-{tag}", title="Нарышкин прибыл в Анкару",
                        body=f"Директор СВР Сергей Нарышкин прибыл в Анкару для переговоров с американской делегацией ({tag}).")
    burst_ids, (marker_id,) = oracle.ids(burst), oracle.ids([marker])
    burst_alerts, marker_alerts = oracle.alerts(burst), oracle.alerts([marker])
    assert burst_alerts and marker_alerts
    articles, alerts = [*burst_ids, marker_id], {**burst_alerts, **marker_alerts}
    doc_seen: dict[str, float] = {}
    alert_seen: dict[str, float] = {}
    samples: list[tuple[float, int, int]] = []  # (s since the burst, articles lag, alerts lag)

    t0 = time.monotonic()
    publish(k, burst)
    t_marker = time.monotonic()
    publish(k, [marker])
    deadline, next_sample = t0 + FLOW_TIMEOUT_S + 60, 0.0
    while len(doc_seen) < len(articles) or len(alert_seen) < len(alerts):
        now = time.monotonic()
        doc_seen.update((i, now) for i in idx.present("articles", [a for a in articles if a not in doc_seen]))
        alert_seen.update((i, now) for i in idx.present("alerts", [a for a in alerts if a not in alert_seen]))
        if now >= next_sample:
            samples.append((now - t0, lag(k, "articles"), lag(k, "alerts")))
            next_sample = now + 0.5
        assert shared.stream.alive(), shared.stream.log_tail()
        assert now < deadline, f"{len(doc_seen)}/{len(articles)} articles, {len(alert_seen)}/{len(alerts)} alerts indexed"
        time.sleep(0.1)

    burst_alerts_s = max(alert_seen[a] for a in burst_alerts) - t0
    burst_articles_s = max(doc_seen[a] for a in burst_ids) - t0
    marker_alert_s = max(alert_seen[a] for a in marker_alerts) - t_marker
    marker_doc_s = doc_seen[marker_id] - t_marker
    catching_up = [s for s in samples if s[1] > 0 and s[2] == 0]
    numbers = {
        "burst_kb": round(sum(len(r.body.encode()) for r in burst) / 1024),
        "burst_alerts_indexed_s": round(burst_alerts_s, 2),
        "burst_articles_indexed_s": round(burst_articles_s, 2),
        "marker_alert_indexed_s": round(marker_alert_s, 2),
        "marker_article_indexed_s": round(marker_doc_s, 2),
        "samples": len(samples),
        "samples_articles_behind_alerts_done": len(catching_up),
        "max_articles_lag_while_alerts_done": max((s[1] for s in catching_up), default=0),
    }
    for name, value in numbers.items():
        record_property(name, value)
    print(f"\nalert latency: {json.dumps(numbers)}\nlag samples (s, articles, alerts): {samples}")
    # The alert branch has no NER: it finishes the burst before the article branch does,
    # and the marker's alert does not queue behind the burst's NER.
    assert burst_alerts_s < burst_articles_s, numbers
    assert marker_alert_s < marker_doc_s, numbers
    assert catching_up, numbers
