"""The embedded SQLite store: idempotent upserts, search with filters and highlights, the Beam sink."""

from __future__ import annotations

import dataclasses
import json
import threading

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from connectors.sqlite_store import SqliteStore, WriteToStore
from connectors.store import StoreError, UpsertStats
from core.ids import content_hash
from core.query import QueryError, QuerySyntaxError, SearchQuery
from core.records import Alert, AlertMatch, Article, DeadLetter, Entity
from core.settings import Settings, StoreSettings


def article(aid, title, body, *, language="en", published="2022-11-10T10:00:00+00:00", source="test", entities=(), topics=()):
    return Article(
        id=aid, url=f"https://example.org/{aid}", canonical_url=f"https://example.org/{aid}", source=source,
        title=title, body=body, published=published, fetched="2022-11-10T12:00:00+00:00",
        content_hash=content_hash(title, body), language=language, entities=list(entities), topics=list(topics),
    )


def ent(text, body, cid, label="PER"):
    start = body.index(text)
    return Entity(text=text, label=label, start=start, end=start + len(text), canonical_id=cid, key=cid, source="watchlist")


DE_BODY = (
    "Der Leiter des russischen Auslandsgeheimdienstes, Sergej Naryschkin, traf in Ankara einen US-Beamten. "
    "Der Außenminister sprach über den Vertrag (SNV-III oder New START)."
)
EN_BODY = "Kremlin spokesman Dmitry Peskov said the talks on New START would continue next week in Geneva."
RU_BODY = "Сергей Нарышкин заявил, что переговоры с США по СНВ-III продолжатся."
SPORT_BODY = "A new start for the city marathon: the race begins in Ankara at dawn."


@pytest.fixture
def articles():
    return [
        article("de1", "Russland und USA führen Gespräche in Ankara", DE_BODY, language="de",
                published="2022-11-10T08:00:00+00:00", entities=[ent("Sergej Naryschkin", DE_BODY, "Q320225")],
                topics=["diplomacy", "intelligence"], source="rt-de"),
        article("en1", "Peskov on arms control", EN_BODY, published="2022-11-12T08:00:00+00:00",
                entities=[ent("Dmitry Peskov", EN_BODY, "Q4161286")], topics=["arms-control"], source="reuters"),
        article("ru1", "Нарышкин о переговорах", RU_BODY, language="ru", published="2022-11-14T08:00:00+00:00",
                entities=[ent("Сергей Нарышкин", RU_BODY, "Q320225")], topics=["diplomacy"], source="tass"),
        article("en2", "City marathon", SPORT_BODY, published="2022-10-01T08:00:00+00:00", topics=[], source="local"),
    ]


@pytest.fixture
def store(tmp_path, articles):
    s = SqliteStore(tmp_path / "nw.db", dead_letter_path=tmp_path / "dead.jsonl")
    s.upsert_articles(articles)
    yield s
    s.close()


def ids(result):
    return [h.article_id for h in result.hits]


def test_upserts_are_idempotent(tmp_path, articles):
    with SqliteStore(tmp_path / "a.db") as s:
        assert s.upsert_articles(articles) == UpsertStats(inserted=4)
        assert s.upsert_articles(articles) == UpsertStats(unchanged=4)
        # A re-fetch changes only the fetch time: still unchanged.
        refetched = [dataclasses.replace(a, fetched="2023-01-01T00:00:00+00:00") for a in articles]
        assert s.upsert_articles(refetched) == UpsertStats(unchanged=4)
        assert s.count_articles() == 4


def test_an_update_keeps_the_full_text_index_and_entities_in_sync(store, articles):
    de1 = articles[0]
    body = "Die Gespräche wurden nach Istanbul verlegt."
    changed = dataclasses.replace(de1, body=body, entities=[], topics=["diplomacy"])
    assert store.upsert_articles([changed]) == UpsertStats(updated=1)
    assert ids(store.search(SearchQuery("Istanbul"))) == ["de1"]
    assert store.search(SearchQuery("Naryschkin")).total == 0
    assert ids(store.search(SearchQuery("", entities=["Q320225"]))) == ["ru1"]
    assert store.search(SearchQuery("", topics=["intelligence"])).total == 0
    assert store.get_article("de1").body == body


def test_the_last_version_wins_within_one_batch(tmp_path, articles):
    first = articles[1]
    second = dataclasses.replace(first, title="Peskov again")
    with SqliteStore(tmp_path / "b.db") as s:
        assert s.upsert_articles([first, second]) == UpsertStats(inserted=1)
        assert s.get_article(first.id).title == "Peskov again"


def test_phrase_and_boolean_search(store):
    assert sorted(ids(store.search(SearchQuery('"New START" -marathon')))) == ["de1", "en1"]
    assert ids(store.search(SearchQuery("SNV-III"))) == ["de1"]  # a hyphenated word is a phrase
    assert ids(store.search(SearchQuery("peskov AND geneva"))) == ["en1"]
    assert sorted(ids(store.search(SearchQuery("Naryschkin OR Нарышкин")))) == ["de1", "ru1"]
    assert ids(store.search(SearchQuery("ankara NOT marathon"))) == ["de1"]
    assert ids(store.search(SearchQuery("ankara -marathon"))) == ["de1"]
    assert ids(store.search(SearchQuery("переговор*"))) == ["ru1"]
    assert ids(store.search(SearchQuery("title:peskov"))) == ["en1"]
    assert store.search(SearchQuery("title:geneva")).total == 0
    # Case and accents fold; Cyrillic too.
    assert ids(store.search(SearchQuery("aussenminister"))) == ["de1"]
    assert ids(store.search(SearchQuery("AUSSENMINISTER"))) == ["de1"]
    assert ids(store.search(SearchQuery("нарышкин"))) == ["ru1"]


def test_search_folds_like_alerts_and_highlights_the_original_text(tmp_path):
    body = "Пётр Толстой и Łódź: der Außenminister traf «Naryschkin» in Genf."
    with SqliteStore(tmp_path / "f.db") as s:
        s.upsert_articles([article("f1", "Пётр", body, language="ru")])
        for q in ("Петр", "Пётр", "Lodz", "łódź", "aussenminister", "Außenminister", '"traf Naryschkin"'):
            assert ids(s.search(SearchQuery(q))) == ["f1"], q
        hit = s.search(SearchQuery("Петр aussenminister")).hits[0]
        assert hit.snippets[0].to_dict() == {"field": "title", "text": "«Пётр»"}
        assert "«Пётр» Толстой" in hit.snippets[1].text and "«Außenminister»" in hit.snippets[1].text


def test_the_index_is_rebuilt_when_the_folding_rules_change(tmp_path, articles):
    path = tmp_path / "r.db"
    with SqliteStore(path) as s:
        s.upsert_articles(articles)
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 'old' WHERE key = 'fold_version'")
    db.execute("INSERT INTO articles_fts (articles_fts) VALUES ('delete-all')")
    db.commit()
    db.close()
    with SqliteStore(path) as s:
        assert sorted(ids(s.search(SearchQuery("Naryschkin OR Нарышкин")))) == ["de1", "ru1"]
        changed = dataclasses.replace(articles[0], body="Nur noch Istanbul.")
        assert s.upsert_articles([changed]) == UpsertStats(updated=1)
        assert ids(s.search(SearchQuery("Naryschkin OR Нарышкин"))) == ["ru1"]


def test_snippets_centre_on_the_matches_and_skip_negated_words(tmp_path):
    body = ("Filler text without anything. " * 20) + "Peskov spoke about Geneva and Peskov again. " + ("More filler. " * 20)
    with SqliteStore(tmp_path / "s.db") as s:
        s.upsert_articles([article("s1", "Title", body)])
        hit = s.search(SearchQuery("peskov -moscow")).hits[0]
        [snippet] = hit.snippets
        assert snippet.field == "body" and snippet.text.startswith("…") and snippet.text.endswith("…")
        assert snippet.text.count("«Peskov»") == 2 and len(snippet.text) < 260
        assert s.search(SearchQuery("title:peskov")).total == 0
        assert "«" not in s.search(SearchQuery("geneva")).hits[0].snippets[0].text.replace("«Geneva»", "")


def test_a_lower_case_start_is_still_found_in_full_text(store):
    """Full-text search folds case, so "new start" finds the marathon too; alerts are where case matters."""
    assert sorted(ids(store.search(SearchQuery('"new start"')))) == ["de1", "en1", "en2"]


def test_filters(store):
    assert sorted(ids(store.search(SearchQuery("", entities=["Q320225"])))) == ["de1", "ru1"]
    assert ids(store.search(SearchQuery("", entities=["Q320225", "Q4161286"]))) == []  # entities: all of them
    assert ids(store.search(SearchQuery("", languages=["ru"]))) == ["ru1"]
    assert sorted(ids(store.search(SearchQuery("", languages=["ru", "de"])))) == ["de1", "ru1"]
    assert sorted(ids(store.search(SearchQuery("", topics=["diplomacy"])))) == ["de1", "ru1"]
    assert ids(store.search(SearchQuery("", sources=["reuters"]))) == ["en1"]
    assert ids(store.search(SearchQuery("", since="2022-11-11", until="2022-11-13"))) == ["en1"]
    assert ids(store.search(SearchQuery("", until="2022-11-10"))) == ["de1", "en2"]  # until includes the day
    assert ids(store.search(SearchQuery("Naryschkin OR Нарышкин", languages=["de"]))) == ["de1"]


def test_no_text_sorts_by_date_and_pages(store):
    assert ids(store.search(SearchQuery(""))) == ["ru1", "en1", "de1", "en2"]
    page = store.search(SearchQuery("", limit=2, offset=1))
    assert page.total == 4 and ids(page) == ["en1", "de1"]


def test_ranking_prefers_title_matches_then_newer(store):
    result = store.search(SearchQuery("peskov OR ankara"))
    assert result.hits[0].article_id == "en1"  # "Peskov" in the title outranks body mentions
    assert all(h.score is not None for h in result.hits)
    by_date = store.search(SearchQuery("peskov OR ankara", sort="date"))
    assert ids(by_date) == ["en1", "de1", "en2"]


def test_highlights_and_hit_fields(store):
    result = store.search(SearchQuery('"New START" naryschkin'))
    hit = result.hits[0]
    body = next(s.text for s in hit.snippets if s.field == "body")
    assert "«New START»" in body and "«Naryschkin»" in body
    assert hit.language == "de" and hit.source == "rt-de" and hit.topics == ["diplomacy", "intelligence"]
    assert hit.entities[0].canonical_id == "Q320225" and hit.entities[0].name == "Sergej Naryschkin"
    title = store.search(SearchQuery("ankara")).hits[0]
    assert any(s.field == "title" and "«Ankara»" in s.text for s in title.snippets)
    d = result.to_dict()
    json.dumps(d)
    assert d["total"] == 1 and d["hits"][0]["snippets"][0]["text"]


def test_highlight_markers_are_configurable(tmp_path, articles):
    with SqliteStore(tmp_path / "c.db", highlight=("[", "]")) as s:
        s.upsert_articles(articles)
        hit = s.search(SearchQuery("geneva")).hits[0]
        assert "[Geneva]" in hit.snippets[-1].text


@pytest.mark.parametrize("text", ['NEAR(a b)', 'a:b', '^x', '"a" ""', "C++", "o'neil", "*x", "x AND (y OR z)", "col:x", "{title}:x"])
def test_fts_special_characters_never_crash(store, text):
    try:
        result = store.search(SearchQuery(text))
    except QuerySyntaxError:
        return
    assert result.total >= 0


def test_alerts_upsert_and_list(store):
    def make(rule, art, fired):
        return Alert(
            id=Alert.make_id(rule, art), rule_id=rule, rule_name=rule, article_id=art, title="t", language="de",
            url=None, matches=[AlertMatch("New START", "body", 1, 10, "concept:new-start", "concept")],
            snippet="…«New START»…", fired_at=fired, severity="high",
        )

    first = [make("new-start", "de1", "2022-11-10T12:00:00+00:00"), make("naryshkin", "de1", "2022-11-10T12:00:00+00:00"),
             make("naryshkin", "ru1", "2022-11-14T12:00:00+00:00")]
    assert store.upsert_alerts(first) == UpsertStats(inserted=3)
    replay = [dataclasses.replace(a, fired_at="2030-01-01T00:00:00+00:00") for a in first]
    assert store.upsert_alerts(replay) == UpsertStats(unchanged=3)
    changed = dataclasses.replace(replay[0], snippet="new snippet")
    assert store.upsert_alerts([changed]) == UpsertStats(updated=1)
    listed = store.list_alerts(rule_id="new-start")
    assert len(listed) == 1 and listed[0].snippet == "new snippet"
    assert listed[0].fired_at == "2022-11-10T12:00:00+00:00"  # the first firing time is kept
    assert [a.article_id for a in store.list_alerts(rule_id="naryshkin")] == ["ru1", "de1"]
    assert [a.article_id for a in store.list_alerts(since="2022-11-12")] == ["ru1"]
    assert len(store.list_alerts(article_id="de1")) == 2
    assert len(store.list_alerts(limit=1)) == 1
    assert store.count_alerts() == 3
    assert store.stats()["alerts_by_rule"] == {"naryshkin": 2, "new-start": 1}


def test_dead_letters_are_stored_once_and_appended_to_the_jsonl(store, tmp_path):
    letters = [DeadLetter("parse", "empty_body", "body is empty", "{}", origin=f"file{i}.txt", at="2022-11-10T00:00:00+00:00")
               for i in range(3)]
    assert store.add_dead_letters(letters) == 3
    assert store.add_dead_letters(letters) == 0
    lines = (tmp_path / "dead.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert {json.loads(line)["id"] for line in lines} == {d.id for d in letters}
    assert {d.origin for d in store.list_dead_letters(stage="parse")} == {"file0.txt", "file1.txt", "file2.txt"}
    assert store.list_dead_letters(stage="fetch") == []
    assert store.count_dead_letters() == 3


def test_stats_and_get_article(store):
    stats = store.stats()
    assert stats["articles"] == 4
    assert stats["by_language"] == {"en": 2, "de": 1, "ru": 1}
    assert stats["by_topic"]["diplomacy"] == 2
    assert store.get_article("nope") is None
    assert store.get_article("en1").entities[0].canonical_id == "Q4161286"


def test_a_bad_path_is_a_clear_store_error(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="cannot open the SQLite store"):
        SqliteStore(tmp_path / "dir.db")


def test_a_bad_request_is_a_query_error(store):
    with pytest.raises(QueryError):
        store.search(SearchQuery("x", since="yesterday-ish"))


def test_concurrent_writers_share_one_file(tmp_path, articles):
    path = tmp_path / "shared.db"
    errors = []
    batches = [[dataclasses.replace(articles[i % 4], id=f"w{w}-{i}") for i in range(60)] for w in range(4)]

    def write(batch):
        try:
            with SqliteStore(path) as s:
                for i in range(0, len(batch), 10):
                    s.upsert_articles(batch[i : i + 10])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with SqliteStore(path) as s:
        assert s.count_articles() == 240
        assert s.search(SearchQuery("Naryschkin")).total == 60


def test_beam_sink_writes_all_record_kinds_idempotently(tmp_path, articles):
    settings = Settings(store=StoreSettings(path=tmp_path / "beam.db", dead_letter_path=tmp_path / "dead.jsonl", batch_size=2))
    alert = Alert(id=Alert.make_id("r", "de1"), rule_id="r", rule_name="r", article_id="de1", title="t", language="de",
                  url=None, matches=[], snippet="s", fired_at="2022-11-10T12:00:00+00:00")
    dead = DeadLetter("parse", "bad_json", "not json", "{", origin="x.json")

    for _ in range(2):  # the second run must add nothing
        with TestPipeline() as p:
            recs = p | beam.Create([*articles, alert, dead], reshuffle=False)
            arts = recs | "OnlyArticles" >> beam.Filter(lambda r: isinstance(r, Article))
            others = recs | "Others" >> beam.Filter(lambda r: not isinstance(r, Article))
            arts | "StoreArticles" >> WriteToStore(settings, kind="articles")
            others | "StoreOthers" >> WriteToStore(settings)

    with SqliteStore(tmp_path / "beam.db") as s:
        assert (s.count_articles(), s.count_alerts(), s.count_dead_letters()) == (4, 1, 1)
    assert len((tmp_path / "dead.jsonl").read_text(encoding="utf-8").splitlines()) == 1


def test_beam_sink_rejects_the_wrong_kind(tmp_path):
    settings = Settings(store=StoreSettings(path=tmp_path / "k.db", dead_letter_path=tmp_path / "d.jsonl"))
    with pytest.raises(Exception, match="kind='alerts'"):
        with TestPipeline() as p:
            p | beam.Create([DeadLetter("s", "r", "d", "p")]) | WriteToStore(settings, kind="alerts", reshuffle=False)
    with pytest.raises(ValueError, match="kind must be one of"):
        WriteToStore(settings, kind="everything")
