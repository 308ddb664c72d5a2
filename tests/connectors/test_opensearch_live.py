"""The search-index store against the real OpenSearch from deploy/local/services.sh.

Each test works in indices of its own uuid-named prefix and deletes them at the
end. Search results are compared with the SQLite store on the same corpus as
sets of article ids (ranking differs by design).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from urllib.parse import urlsplit

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from connectors.search_index import IndexSetupError, WriteToIndex, open_index
from connectors.sqlite_store import SqliteStore
from connectors.store import UpsertStats
from core.ids import content_hash
from core.query import QueryError, SearchQuery
from core.records import Alert, AlertMatch, Article, DeadLetter, Entity
from core.settings import IndexSettings, Settings

pytestmark = pytest.mark.integration


def ent(text, body, cid=None, label="PER"):
    start = body.index(text)
    return Entity(text=text, label=label, start=start, end=start + len(text), canonical_id=cid, key=cid, source="watchlist")


def art(aid, title, body, language, published, source, *, ents=(), topics=(), fetched="2022-11-16T12:00:00+00:00"):
    return Article(
        id=aid, url=f"https://example.org/{aid}", canonical_url=f"https://example.org/{aid}", source=source,
        title=title, body=body, published=published, fetched=fetched, content_hash=content_hash(title, body),
        language=language, entities=[ent(*e) for e in ents], topics=list(topics),
    )


DE1 = ("Der Leiter des russischen Auslandsgeheimdienstes, Sergej Naryschkin, traf in Ankara einen US-Beamten. "
       "Der Außenminister sprach über den Vertrag (SNV-III oder New START).")
DE2 = "Die Verhandlungen zwischen Moskau und Washington über den Vertrag wurden vertagt. Lawrow äußerte sich nicht."
EN1 = "Kremlin spokesman Dmitry Peskov said the talks on New START would continue next week in Geneva."
EN2 = "A new start for the city marathon: the race begins in Ankara at dawn."
EN3 = "US Secretary of State Antony Blinken spoke with Sergei Lavrov about a prisoner exchange."
EN4 = "Dmitry Peskov dismissed reports of a summit. Peskov said nothing about the treaty."
RU1 = "Сергей Нарышкин заявил, что переговоры с США по СНВ-III продолжатся."
RU2 = "Министр иностранных дел Сергей Лавров обсудил договор СНВ-III на переговорах в Анкаре."
FR1 = "Les pourparlers entre la Russie et les États-Unis sur le traité New START ont eu lieu à Ankara. Narychkine y a participé."
PL1 = "Siergiej Naryszkin spotkał się z przedstawicielem USA w Ankarze. Rozmowy dotyczyły traktatu New START."
UK1 = "Сергій Наришкін зустрівся з представником США. Прем'єр-міністр коментував переговори в Анкарі."

CORPUS = [
    art("de1", "Russland und USA führen Gespräche in Ankara", DE1, "de", "2022-11-10T08:00:00+00:00", "rt-de",
        ents=[("Sergej Naryschkin", DE1, "Q320225")], topics=["diplomacy", "intelligence"]),
    art("de2", "Verhandlungen über Abrüstung vertagt", DE2, "de", "2022-11-11T09:00:00+00:00", "dpa",
        ents=[("Lawrow", DE2, "Q80137")], topics=["arms-control"]),
    art("en1", "Peskov on arms control", EN1, "en", "2022-11-12T08:00:00+00:00", "reuters",
        ents=[("Dmitry Peskov", EN1, "Q4161286")], topics=["arms-control"]),
    art("en2", "City marathon", EN2, "en", "2022-10-01T08:00:00+00:00", "local"),
    # No publication time: filters and sorting use the fetch time.
    art("en3", "Blinken and Lavrov speak by phone", EN3, "en", None, "ap",
        ents=[("Sergei Lavrov", EN3, "Q80137"), ("Antony Blinken", EN3, "Q312")], topics=["diplomacy"],
        fetched="2022-11-12T20:00:00+00:00"),
    art("en4", "Peskov dismisses summit reports", EN4, "en", "2022-11-15T08:00:00+00:00", "reuters",
        ents=[("Dmitry Peskov", EN4, "Q4161286"), ("Peskov", EN4, "Q4161286")]),
    art("ru1", "Нарышкин о переговорах", RU1, "ru", "2022-11-14T08:00:00+00:00", "tass",
        ents=[("Сергей Нарышкин", RU1, "Q320225")], topics=["diplomacy"]),
    art("ru2", "Лавров в Анкаре", RU2, "ru", "2022-11-09T08:00:00+00:00", "ria",
        ents=[("Сергей Лавров", RU2, "Q80137")], topics=["diplomacy", "arms-control"]),
    art("fr1", "Pourparlers à Ankara", FR1, "fr", "2022-11-10T15:00:00+00:00", "lemonde",
        ents=[("Narychkine", FR1, "Q320225")], topics=["diplomacy"]),
    art("pl1", "Rozmowy w Ankarze", PL1, "pl", "2022-11-10T18:00:00+00:00", "pap",
        ents=[("Siergiej Naryszkin", PL1, "Q320225")], topics=["diplomacy"]),
    art("uk1", "Переговори в Анкарі", UK1, "uk", "2022-11-11T10:00:00+00:00", "ukrinform",
        ents=[("Сергій Наришкін", UK1, "Q320225")]),
]

PARITY = [
    SearchQuery('"New START"'),
    SearchQuery('"New START" -marathon'),
    SearchQuery("peskov AND geneva"),
    SearchQuery("Naryschkin OR Нарышкин OR Naryszkin"),
    SearchQuery("ankara NOT marathon"),
    SearchQuery("ankara -marathon", languages=["de", "fr", "en"]),
    SearchQuery("переговор*"),
    SearchQuery("verhandl*"),
    SearchQuery("title:peskov"),
    SearchQuery("title:(ankara OR анкаре) OR body:geneva"),
    SearchQuery("(peskov OR lavrov OR лавров) -marathon"),
    SearchQuery("SNV-III OR СНВ-III"),
    SearchQuery("AUSSENMINISTER OR außenminister"),
    SearchQuery("start", sort="date"),
    SearchQuery(""),
    SearchQuery("", entities=["Q320225"]),
    SearchQuery("", entities=["Q80137", "Q312"]),
    SearchQuery("", entities=["Q320225", "Q4161286"]),
    SearchQuery("", languages=["ru", "uk"]),
    SearchQuery("", topics=["arms-control"], sources=["reuters", "dpa"]),
    SearchQuery("", since="2022-11-11", until="2022-11-13"),
    SearchQuery("", until="2022-11-10"),
    SearchQuery("lavrov OR лавров OR lawrow", since="2022-11-10"),
]


def _settings(url: str, prefix: str, **kw) -> IndexSettings:
    return IndexSettings(hosts=[url], index_prefix=prefix, **kw)


@pytest.fixture
def store(opensearch_url, unique_name):
    st = open_index(_settings(opensearch_url, unique_name))
    yield st
    st.delete_indices()
    st.close()


@pytest.fixture(scope="module")
def corpus_stores(opensearch_url, tmp_path_factory):
    """The corpus in OpenSearch and in SQLite; read-only for the tests that use it."""
    prefix = f"nwtest-corpus-{uuid.uuid4().hex[:8]}"
    index = open_index(_settings(opensearch_url, prefix))
    sqlite = SqliteStore(tmp_path_factory.mktemp("parity") / "nw.db")
    try:
        assert index.upsert_articles(CORPUS) == UpsertStats(inserted=len(CORPUS))
        sqlite.upsert_articles(CORPUS)
        index.refresh()
        yield index, sqlite
    finally:
        index.delete_indices()
        index.close()
        sqlite.close()


def ids(result):
    return sorted(h.article_id for h in result.hits)


@pytest.mark.parametrize("query", PARITY, ids=lambda q: f"{q.text or '-'}|{q.to_dict()}"[:80])
def test_search_results_match_the_sqlite_store(corpus_stores, query):
    index, sqlite = corpus_stores
    got, want = index.search(query), sqlite.search(query)
    assert ids(got) == ids(want)
    assert got.total == want.total
    if (query.text and query.sort == "date") or not query.text:
        # Date order is defined by the data, so it must agree too (ties broken by id in both).
        assert [h.article_id for h in got.hits] == [h.article_id for h in want.hits]


def test_the_german_analyzer_finds_inflected_forms(corpus_stores):
    index, sqlite = corpus_stores
    assert ids(index.search(SearchQuery("Gesprächen"))) == ["de1"]  # "Gespräche" in the title, via title.de
    assert ids(sqlite.search(SearchQuery("Gesprächen"))) == []  # the embedded store matches exact words only
    assert ids(index.search(SearchQuery("переговорами", languages=["ru"]))) == ["ru1", "ru2"]  # russian stemmer
    assert ids(index.search(SearchQuery("title:verhandlung"))) == ["de2"]


def test_hits_have_the_sqlite_shape_with_highlights_and_entities(corpus_stores):
    index, sqlite = corpus_stores
    hit = index.search(SearchQuery('"New START" naryschkin')).hits[0]
    body = next(s.text for s in hit.snippets if s.field == "body")
    assert "«New START»" in body and "«Naryschkin»" in body
    assert hit.language == "de" and hit.source == "rt-de" and hit.topics == ["diplomacy", "intelligence"]
    assert hit.entities[0].canonical_id == "Q320225" and hit.entities[0].name == "Sergej Naryschkin"
    assert hit.score is not None
    title = index.search(SearchQuery("ankara", languages=["de"])).hits[0]
    assert any(s.field == "title" and "«Ankara»" in s.text for s in title.snippets)
    stemmed = index.search(SearchQuery("Gesprächen")).hits[0]
    assert any(s.field == "title" and "«Gespräche»" in s.text for s in stemmed.snippets)
    en4 = index.search(SearchQuery("summit")).hits[0]
    assert [(e.key, e.count) for e in en4.entities] == [(e.key, e.count) for e in sqlite.search(SearchQuery("summit")).hits[0].entities]
    page = index.search(SearchQuery("", limit=3, offset=2))
    assert page.total == len(CORPUS) and len(page.hits) == 3
    assert json.dumps(page.to_dict())


def test_a_query_the_server_refuses_is_a_query_error(corpus_stores):
    index, _ = corpus_stores
    # Each word is searched in 14 (sub)fields; Lucene's clause limit (1024) caps the words of one query.
    with pytest.raises(QueryError, match="maxClauseCount"):
        index.search(SearchQuery(" OR ".join(f"w{i}" for i in range(100))))


def test_upserts_are_idempotent_and_keep_the_first_firing(store):
    assert store.upsert_articles(CORPUS[:4]) == UpsertStats(inserted=4)
    assert store.upsert_articles(CORPUS[:4]) == UpsertStats(unchanged=4)
    refetched = [dataclasses.replace(a, fetched="2030-01-01T00:00:00+00:00") for a in CORPUS[:4]]
    assert store.upsert_articles(refetched) == UpsertStats(unchanged=4)
    moved = dataclasses.replace(CORPUS[0], body="Die Gespräche wurden nach Istanbul verlegt.", entities=[])
    assert store.upsert_articles([moved, CORPUS[4]]) == UpsertStats(inserted=1, updated=1)
    store.refresh()
    assert ids(store.search(SearchQuery("Istanbul"))) == ["de1"]
    assert store.search(SearchQuery("Naryschkin")).total == 0
    assert store.search(SearchQuery("", entities=["Q320225"])).total == 0
    assert store.get_article("de1").body == moved.body and store.get_article("nope") is None

    def alert(rule, aid, fired):
        return Alert(id=Alert.make_id(rule, aid), rule_id=rule, rule_name=rule, article_id=aid, title="t", language="de",
                     url=None, matches=[AlertMatch("New START", "body", 1, 10, "concept:new-start", "concept")],
                     snippet="…«New START»…", fired_at=fired, severity="high")

    first = [alert("new-start", "de1", "2022-11-10T12:00:00+00:00"), alert("naryshkin", "de1", "2022-11-10T12:00:00+00:00"),
             alert("naryshkin", "ru1", "2022-11-14T12:00:00+00:00")]
    assert store.upsert_alerts(first) == UpsertStats(inserted=3)
    replay = [dataclasses.replace(a, fired_at="2030-01-01T00:00:00+00:00") for a in first]
    assert store.upsert_alerts(replay) == UpsertStats(unchanged=3)
    assert store.upsert_alerts([dataclasses.replace(replay[0], snippet="new snippet")]) == UpsertStats(updated=1)
    store.refresh()
    (listed,) = store.list_alerts(rule_id="new-start")
    assert listed.snippet == "new snippet" and listed.fired_at == "2022-11-10T12:00:00+00:00"
    assert [a.article_id for a in store.list_alerts(rule_id="naryshkin")] == ["ru1", "de1"]
    assert [a.article_id for a in store.list_alerts(since="2022-11-12")] == ["ru1"]
    assert len(store.list_alerts(article_id="de1")) == 2 and len(store.list_alerts(limit=1)) == 1

    letters = [DeadLetter("parse", "empty_body", "body is empty", "{}", origin=f"f{i}.txt", at="2022-11-10T00:00:00+00:00")
               for i in range(3)]
    assert store.add_dead_letters(letters) == 3 and store.add_dead_letters(letters) == 0
    store.refresh()
    assert {d.origin for d in store.list_dead_letters(stage="parse")} == {"f0.txt", "f1.txt", "f2.txt"}
    stats = store.stats()
    assert (stats["articles"], stats["alerts"], stats["dead_letters"]) == (5, 3, 3)
    assert stats["alerts_by_rule"] == {"naryshkin": 2, "new-start": 1} and stats["by_language"] == {"en": 3, "de": 2}


def test_a_mapping_violation_is_a_dead_letter_not_an_exception(store):
    bad = dataclasses.replace(CORPUS[1], id="bad", language_score="sehr sicher")
    result = store.write_articles([CORPUS[0], bad])
    assert result.stats == UpsertStats(inserted=1)
    (letter,) = result.rejected
    assert (letter.stage, letter.reason) == ("index.write", "index_rejected")
    assert letter.error_class in ("mapper_parsing_exception", "document_parsing_exception")
    assert json.loads(letter.payload)["id"] == "bad" and "language_score" in letter.detail
    # Through the ArticleStore interface it is kept in the dead-letter index.
    assert store.upsert_articles([bad]) == UpsertStats()
    store.refresh()
    assert store.count_dead_letters() == 1 and store.count_articles() == 1


def test_the_beam_sink_writes_and_returns_rejected_records(opensearch_url, unique_name):
    settings = Settings(index=_settings(opensearch_url, unique_name, bulk_size=3))
    bad = dataclasses.replace(CORPUS[2], id="bad", language_score="sehr sicher")
    alert = Alert(id=Alert.make_id("r", "de1"), rule_id="r", rule_name="r", article_id="de1", title="t", language="de",
                  url=None, matches=[], snippet="s", fired_at="2022-11-10T12:00:00+00:00")
    dead = DeadLetter("parse", "bad_json", "not json", "{", origin="x.json")
    try:
        with TestPipeline() as p:
            rejected = p | beam.Create([*CORPUS[:5], bad, alert, dead]) | WriteToIndex(settings)
            assert_that(rejected | beam.Map(lambda d: (d.stage, d.reason, json.loads(d.payload)["id"])),
                        equal_to([("index.write", "index_rejected", "bad")]))
        with open_index(settings.index) as st:
            st.refresh()
            assert (st.count_articles(), st.count_alerts(), st.count_dead_letters()) == (5, 1, 1)
    finally:
        with open_index(settings.index) as st:
            st.delete_indices()


def test_the_elasticsearch_backend_refuses_opensearch(opensearch_url, unique_name):
    with pytest.raises(IndexSetupError, match=f"the server at {opensearch_url} is not Elasticsearch"):
        open_index(IndexSettings(backend="elasticsearch", hosts=[opensearch_url], index_prefix=unique_name))


def test_a_server_outage_mid_write_is_retried_and_nothing_is_lost(opensearch_url, unique_name, caplog, tcp_proxy_class):
    caplog.set_level(logging.INFO, logger="core.retry")
    target = urlsplit(opensearch_url)
    proxy = tcp_proxy_class((target.hostname, target.port))
    proxy.start()
    filler = " ".join(f"Absatz {i}: Die Gespräche in Ankara über New START gingen weiter." for i in range(80))
    articles = [dataclasses.replace(CORPUS[0], id=f"o{i:04d}", body=f"{i} {filler}"[:5000]) for i in range(300)]
    st = open_index(_settings(proxy.url, unique_name, bulk_size=10, retry_deadline_s=60, timeout_s=10))
    outcome: dict = {}

    def write():
        try:
            outcome["result"] = st.write_articles(articles)
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcome["error"] = exc

    writer = threading.Thread(target=write)
    try:
        writer.start()
        deadline = time.monotonic() + 30
        while proxy.bytes_up < 150_000 and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.is_alive(), "the write finished before the outage could start"
        proxy.stop()
        time.sleep(3)  # the outage: every connection attempt is refused meanwhile
        proxy.start()
        writer.join(90)
        assert not writer.is_alive()
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert not result.rejected
        # A bulk whose response was lost is detected on retry as already stored: unchanged, not lost.
        assert result.stats.inserted + result.stats.unchanged == len(articles)
        assert any("retry what=index." in r.getMessage() for r in caplog.records)
    finally:
        proxy.stop()
        st.close()
    with open_index(_settings(opensearch_url, unique_name)) as direct:
        try:
            direct.refresh()
            assert direct.count_articles() == len(articles)
            docs = direct.backend.mget(direct.names.alias("articles"), [a.id for a in articles], ["id"])
            assert all(d.get("found") for d in docs)
        finally:
            direct.delete_indices()
