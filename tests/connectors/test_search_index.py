"""The search-index layer without a server: mappings, documents, query rendering, hit reading,
error classification, the store's write logic over an in-memory backend, and the
Elasticsearch backend's requests to a fake server that answers like Elasticsearch."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from connectors.search_index import (
    LANGUAGE_ANALYZERS,
    Backend,
    IndexNames,
    IndexSetupError,
    IndexStore,
    IndexUnavailable,
    ServerError,
    Unreachable,
    WriteToIndex,
    alert_doc,
    alert_mapping,
    article_doc,
    article_hash,
    article_mapping,
    dead_letter_mapping,
    entity_refs,
    fold,
    hit_from,
    index_body,
    item_verdict,
    render_query,
    request_verdict,
    resolve_analyzers,
    search_body,
    search_fields,
)
from core.ids import content_hash
from core.query import QueryError, SearchQuery, parse
from core.records import Alert, AlertMatch, Article, DeadLetter, Entity
from core.settings import IndexSettings, Settings

BODY = "Sergej Naryschkin traf in Ankara einen US-Beamten; es ging um New START."


def article(aid="a1", *, body=BODY, published="2022-11-10T08:00:00+00:00", entities=None, **kw):
    ents = entities if entities is not None else [
        Entity("Sergej Naryschkin", "PER", 0, 17, canonical_id="Q320225", key="Q320225", canonical_name="Sergey Naryshkin"),
        Entity("Ankara", "LOC", 26, 32, source="ner.spacy"),
    ]
    return Article(
        id=aid, url=f"https://example.org/{aid}", canonical_url=f"https://example.org/{aid}", source="rt-de",
        title="Gespräche in Ankara", body=body, published=published, fetched="2022-11-10T12:00:00+00:00",
        content_hash=content_hash("Gespräche in Ankara", body), language="de", entities=ents, topics=["diplomacy"], **kw,
    )


# --- mappings ----------------------------------------------------------------------


def test_index_names_are_versioned_behind_aliases():
    names = IndexNames("nw")
    assert names.alias("articles") == "nw-articles" and names.concrete("articles") == "nw-articles-v1"
    assert names.alias("dead_letters") == "nw-dead-letters" and names.concrete("alerts") == "nw-alerts-v1"
    body = index_body("alerts", resolve_analyzers(), names.alias("alerts"))
    assert body["aliases"] == {"nw-alerts": {}}
    assert body["settings"]["index"]["analysis"]["analyzer"]["nw_text"]["filter"] == ["lowercase", "asciifolding"]


def test_language_subfields_use_the_language_analyzers_and_fall_back_to_standard():
    assert resolve_analyzers(lambda name: False) == {
        "de": "german", "en": "english", "ru": "russian", "fr": "french", "pl": "standard", "uk": "standard",
    }
    assert resolve_analyzers(lambda name: True)["pl"] == "polish"  # a server with analysis-stempel
    props = article_mapping(resolve_analyzers(lambda name: False))["properties"]
    for name in ("title", "body"):
        assert props[name]["type"] == "text" and props[name]["analyzer"] == "nw_text"
        assert {k: v["analyzer"] for k, v in props[name]["fields"].items()}["de"] == "german"
        assert set(props[name]["fields"]) == set(LANGUAGE_ANALYZERS)


def test_article_mapping_is_strict_with_keywords_dates_and_nested_entities():
    mapping = article_mapping(resolve_analyzers())
    props = mapping["properties"]
    assert mapping["dynamic"] == "strict" and mapping["_meta"]["newswatch"]["mapping_version"] == 1
    for name in ("id", "source", "language", "topics", "url", "entity_canonical_ids", "entity_keys"):
        assert props[name]["type"] == "keyword", name
    for name in ("published", "fetched", "sort_ts"):
        assert props[name]["type"] == "date", name
    assert props["published"]["ignore_malformed"] and "ignore_malformed" not in props["sort_ts"]
    ents = props["entities"]
    assert ents["type"] == "nested" and ents["dynamic"] == "strict"
    assert {"text", "label", "canonical_id", "key"} <= set(ents["properties"])
    # Every field an Article serialises to has a mapping, or strict mode would reject every article.
    assert set(article_doc(article())) <= set(props)


def test_alert_and_dead_letter_mappings_cover_their_records():
    alert = Alert(id="x", rule_id="r", rule_name="R", article_id="a1", title="t", language="de", url=None,
                  matches=[AlertMatch("New START", "body", 1, 10, "concept:new-start", "concept")], snippet="s",
                  fired_at="2022-11-10T12:00:00+00:00", published="2022-11-10T08:00:00+00:00")
    amap = alert_mapping()
    assert amap["properties"]["rule_id"]["type"] == "keyword" and amap["properties"]["fired_at"]["type"] == "date"
    assert set(alert_doc(alert)) <= set(amap["properties"])
    assert set(alert.to_dict()["matches"][0]) <= set(amap["properties"]["matches"]["properties"])
    dmap = dead_letter_mapping()
    letter = DeadLetter("parse", "empty_body", "d", "payload", origin="f.txt", at="2022-11-10T00:00:00+00:00", error_class="E")
    assert set(letter.to_dict()) | {"stored_at"} <= set(dmap["properties"])
    assert dmap["properties"]["payload"]["index"] is False


# --- documents ----------------------------------------------------------------------


def test_article_doc_derives_sort_time_and_entity_filters():
    doc = article_doc(article())
    assert doc["sort_ts"] == "2022-11-10T08:00:00.000+00:00"
    assert doc["entity_canonical_ids"] == ["Q320225"]
    assert doc["entity_keys"] == ["Q320225", "ankara"]  # no key: the folded text, as the SQLite store groups it
    rfc = article_doc(article(published="Thu, 10 Nov 2022 09:30:00 +0100"))
    assert rfc["sort_ts"] == "2022-11-10T08:30:00.000+00:00"
    assert article_doc(article(published=None))["sort_ts"] == "2022-11-10T12:00:00.000+00:00"
    assert article_doc(article(published="gestern"))["sort_ts"] == "2022-11-10T12:00:00.000+00:00"


def test_the_change_hash_ignores_the_fetch_time_only():
    a = article()
    assert article_hash(a) == article_hash(dataclasses.replace(a, fetched="2030-01-01T00:00:00+00:00"))
    assert article_hash(a) != article_hash(dataclasses.replace(a, topics=["war"]))


def test_an_alert_keeps_its_first_firing_time():
    alert = Alert(id="x", rule_id="r", rule_name="R", article_id="a1", title="t", language="de", url=None,
                  matches=[], snippet="s", fired_at="2030-01-01T00:00:00+00:00")
    doc = alert_doc(alert, first_fired_at="2022-11-10T12:00:00+00:00")
    assert doc["fired_at"] == "2022-11-10T12:00:00+00:00" and doc["fired_ts"].startswith("2022-11-10T12:00")


# --- query rendering -------------------------------------------------------------------


def test_a_word_is_a_phrase_over_every_text_field_and_language_subfield():
    q = render_query(parse("Naryschkin"))
    mm = q["multi_match"]
    assert mm["type"] == "phrase" and mm["query"] == "Naryschkin"
    assert mm["fields"][:2] == ["title^3", "title.de^3"]
    assert "body" in mm["fields"] and "body.ru" in mm["fields"] and "body.uk" in mm["fields"]
    assert len(mm["fields"]) == 2 * (1 + len(LANGUAGE_ANALYZERS))
    assert render_query(parse("SNV-III"))["multi_match"]["query"] == "SNV-III"  # the analyzer splits it, in order


def test_boolean_structure():
    q = render_query(parse('(peskov OR lavrov) "new start" -sport NOT marathon'))
    must, must_not = q["bool"]["must"], q["bool"]["must_not"]
    assert must[0]["bool"]["minimum_should_match"] == 1
    assert [c["multi_match"]["query"] for c in must[0]["bool"]["should"]] == ["peskov", "lavrov"]
    assert must[1]["multi_match"]["query"] == "new start"
    assert [c["multi_match"]["query"] for c in must_not] == ["sport", "marathon"]
    nested = render_query(parse("a OR (b -c)"))
    assert nested["bool"]["should"][1]["bool"]["must_not"][0]["multi_match"]["query"] == "c"


def test_field_restriction():
    q = render_query(parse('title:(peskov OR "new start")'))
    for clause in q["bool"]["should"]:
        assert all(f.startswith("title") for f in clause["multi_match"]["fields"])
    assert search_fields("body") == ["body", *(f"body.{lang}" for lang in LANGUAGE_ANALYZERS)]


def test_prefixes():
    q = render_query(parse("Verhandl*"))
    assert q == {"bool": {"should": [{"prefix": {"title": {"value": "verhandl", "boost": 3.0}}},
                                     {"prefix": {"body": {"value": "verhandl"}}}], "minimum_should_match": 1}}
    assert render_query(parse("body:außen*")) == {"prefix": {"body": {"value": "aussen"}}}
    multi = render_query(parse("new-sta*"))["multi_match"]
    assert multi["type"] == "phrase_prefix" and multi["fields"] == ["title^3", "body"] and multi["query"] == "new-sta"


def test_fold_matches_the_base_analyzer():
    assert fold("Gespräch") == "gesprach"
    assert fold("Łódź") == "lodz" and fold("Straße") == "strasse"
    assert fold("Нарышкин") == "нарышкин" and fold("Сергей") == "сергей"  # asciifolding leaves Cyrillic alone


def test_search_body_filters_sort_and_highlight():
    q = SearchQuery("peskov", entities=["Q1", "Q2"], languages=["DE", "ru"], topics=["war"], sources=["tass"],
                    since="2022-11-01", until="2022-11-30", limit=5, offset=10)
    body = search_body(q, ("[", "]"))
    flt = body["query"]["bool"]["filter"]
    ent = [f for f in flt if "bool" in f]
    assert len(ent) == 2  # every entity must be present
    assert ent[0]["bool"]["should"] == [{"term": {"entity_canonical_ids": "Q1"}}, {"term": {"entity_keys": "Q1"}}]
    assert {"terms": {"language": ["de", "ru"]}} in flt and {"terms": {"topics": ["war"]}} in flt
    assert {"terms": {"source": ["tass"]}} in flt
    rng = next(f["range"]["sort_ts"] for f in flt if "range" in f)
    assert rng["gte"].startswith("2022-11-01T00:00:00") and rng["lte"].startswith("2022-11-30T23:59:59")
    assert body["from"] == 10 and body["size"] == 5 and body["track_total_hits"] is True
    assert body["sort"][0] == {"_score": "desc"} and body["sort"][-1] == {"id": "asc"}
    assert body["highlight"]["pre_tags"] == ["["] and body["highlight"]["post_tags"] == ["]"]
    assert body["highlight"]["fields"]["title"] == {"number_of_fragments": 0}
    assert "no_match_size" in body["highlight"]["fields"]["body"] and "no_match_size" not in body["highlight"]["fields"]["body.de"]
    by_date = search_body(SearchQuery("peskov", sort="date"))
    assert "sort_ts" in by_date["sort"][0] and by_date["track_scores"] is True


def test_a_query_without_text_filters_and_sorts_by_date():
    body = search_body(SearchQuery("", languages=["ru"]))
    assert body["query"]["bool"]["must"] == []
    assert "sort_ts" in body["sort"][0] and "highlight" not in body and "body" in body["_source"]


# --- reading hits -------------------------------------------------------------------------


def test_a_hit_takes_the_best_highlight_and_groups_entities():
    src = article().to_dict()
    raw = {
        "_id": "a1", "_score": 1.234567, "_source": src,
        "highlight": {
            "title": ["Gespräche in Ankara"],
            "title.de": ["«Gespräche» in Ankara"],
            "body": ["traf in «Ankara» einen US-Beamten; es ging um «New» «START»."],
            "body.de": ["traf in «Ankara» einen"],
        },
    }
    hit = hit_from(raw, ranked=True)
    assert hit.score == 1.2346 and hit.topics == ["diplomacy"] and hit.language == "de"
    assert [s.to_dict() for s in hit.snippets] == [
        {"field": "title", "text": "«Gespräche» in Ankara"},
        {"field": "body", "text": "traf in «Ankara» einen US-Beamten; es ging um «New START»."},
    ]
    assert [(e.key, e.name, e.canonical_id) for e in hit.entities] == [
        ("Q320225", "Sergey Naryshkin", "Q320225"), ("ankara", "Ankara", None),
    ]


def test_a_hit_without_text_shows_the_start_of_the_body():
    src = article(body="abcdef " * 100).to_dict()
    hit = hit_from({"_id": "a1", "_score": None, "_source": src}, ranked=False)
    assert hit.score is None and hit.snippets[0].field == "body"
    assert hit.snippets[0].text.endswith(" …") and len(hit.snippets[0].text) <= 242


def test_entity_refs_order_like_the_sqlite_store():
    ents = [{"text": "X", "label": "PER"}] * 3 + [{"text": "Y", "label": "ORG", "canonical_id": "Q9", "key": "Q9"}]
    ents += [{"text": f"n{i}", "label": "MISC"} for i in range(20)]
    refs = entity_refs(ents)
    assert len(refs) == 15
    assert (refs[0].key, refs[0].canonical_id) == ("Q9", "Q9")  # canonical first
    assert (refs[1].key, refs[1].count) == ("x", 3)  # then by frequency, then key


# --- error classification ---------------------------------------------------------------------


@pytest.mark.parametrize("status,etype,verdict", [
    (201, None, "ok"), (200, None, "ok"),
    (429, "es_rejected_execution_exception", "retry"), (503, "unavailable_shards_exception", "retry"),
    (409, "version_conflict_engine_exception", "conflict"),
    (404, "index_not_found_exception", "missing_index"),
    (400, "mapper_parsing_exception", "reject"), (400, "document_parsing_exception", "reject"),
    (400, "strict_dynamic_mapping_exception", "reject"), (500, "illegal_state_exception", "reject"),
])
def test_bulk_item_verdicts(status, etype, verdict):
    assert item_verdict(status, etype) == verdict


@pytest.mark.parametrize("status,etype,verdict", [
    (429, None, "retry"), (502, None, "retry"), (503, None, "retry"), (504, None, "retry"), (500, None, "retry"),
    (413, None, "too_large"), (401, "security_exception", "auth"), (403, None, "auth"),
    (400, "illegal_argument_exception", "reject"), (404, "index_not_found_exception", "missing_index"),
    (500, "search_phase_execution_exception", "reject"),
])
def test_request_verdicts(status, etype, verdict):
    assert request_verdict(status, etype) == verdict
    assert ServerError(status, etype, "x").transient is (verdict == "retry")


# --- the store over an in-memory backend ---------------------------------------------------------


class MemoryBackend(Backend):
    """Just enough of a server for the store's write logic: documents with sequence numbers,
    create/index with optimistic concurrency, and scripted failures."""

    name = "MemoryServer"
    start_hint = "start the memory server"

    def __init__(self):
        super().__init__(["http://user:secret@memory:9200"])
        self.docs: dict[str, dict] = {}  # (alias/id) -> {"_source", "_seq_no"}
        self.seq = 0
        self.aliases: dict[str, str] = {}
        self.bulk_calls: list[list[str]] = []
        self.item_failures: dict[str, list[tuple[int, str]]] = {}  # id -> statuses to answer first, in order
        self.request_failures: list[Exception] = []
        self.reject_ids: set[str] = set()
        self.before_bulk = None

    def check_server(self):
        if self.request_failures and isinstance(self.request_failures[0], Unreachable):
            raise self.request_failures.pop(0)
        return "MemoryServer 1.0"

    def _key(self, index, _id):
        return f"{index}/{_id}"

    def bulk(self, operations, *, refresh=False):
        if self.request_failures:
            raise self.request_failures.pop(0)
        if self.before_bulk:
            self.before_bulk(self)
        items, ids = [], []
        for action, doc in zip(operations[::2], operations[1::2]):
            (op, meta), = action.items()
            ids.append(meta["_id"])
            key = self._key(meta["_index"], meta["_id"])
            scripted = self.item_failures.get(meta["_id"])
            if scripted:
                status, etype = scripted.pop(0)
                items.append({op: {"status": status, "error": {"type": etype, "reason": "scripted"}}})
                continue
            if meta["_id"] in self.reject_ids:
                items.append({op: {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse",
                                                             "caused_by": {"reason": "not a float"}}}})
                continue
            old = self.docs.get(key)
            conflict = (op == "create" and old is not None) or (
                op == "index" and (old is None or old["_seq_no"] != meta.get("if_seq_no"))
            )
            if conflict:
                items.append({op: {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}})
                continue
            self.seq += 1
            self.docs[key] = {"_source": copy.deepcopy(doc), "_seq_no": self.seq}
            items.append({op: {"status": 201 if old is None else 200}})
        self.bulk_calls.append(ids)
        return {"errors": True, "items": items}

    def mget(self, index, ids, source=True):
        out = []
        for _id in ids:
            d = self.docs.get(self._key(index, _id))
            if d is None:
                out.append({"_id": _id, "found": False})
            else:
                src = d["_source"] if source is True else {k: v for k, v in d["_source"].items() if k in source}
                out.append({"_id": _id, "found": True, "_source": src, "_seq_no": d["_seq_no"], "_primary_term": 1})
        return out

    def search(self, index, body):
        raise NotImplementedError

    def count(self, index):
        return sum(1 for k in self.docs if k.startswith(index + "/"))

    def get_alias(self, name):
        return [self.aliases[name]] if name in self.aliases else None

    def index_exists(self, name):
        return name in self.aliases.values()

    def get_mapping_meta(self, index):
        return {"newswatch": {"mapping_version": 1}}

    def create_index(self, name, body):
        (alias,) = body["aliases"]
        self.aliases[alias] = name

    def put_alias(self, index, name):
        self.aliases[name] = index

    def delete_index(self, name):
        self.aliases = {a: i for a, i in self.aliases.items() if i != name}

    def refresh(self, index):
        pass

    def has_analyzer(self, name):
        return False

    def close(self):
        pass


@pytest.fixture
def mem():
    backend = MemoryBackend()
    store = IndexStore(backend, index_prefix="t", bulk_size=3, retry_deadline_s=5, sleep=lambda s: None)
    store.ensure_ready()
    return backend, store


def test_writes_are_idempotent_and_detect_changes(mem):
    backend, store = mem
    arts = [article(f"a{i}") for i in range(5)]
    assert store.write_articles(arts).stats.to_dict() == {"inserted": 5, "updated": 0, "unchanged": 0}
    assert [len(c) for c in backend.bulk_calls] == [3, 2]  # bulk_size
    refetched = [dataclasses.replace(a, fetched="2030-01-01T00:00:00+00:00") for a in arts]
    calls = len(backend.bulk_calls)
    assert store.write_articles(refetched).stats.to_dict() == {"inserted": 0, "updated": 0, "unchanged": 5}
    assert len(backend.bulk_calls) == calls  # nothing unchanged is sent
    changed = dataclasses.replace(arts[0], topics=["war"])
    assert store.write_articles([changed]).stats.to_dict() == {"inserted": 0, "updated": 1, "unchanged": 0}
    assert backend.docs["t-articles/a0"]["_source"]["topics"] == ["war"]


def test_only_throttled_items_are_retried(mem):
    backend, store = mem
    backend.item_failures["a1"] = [(429, "es_rejected_execution_exception")]
    result = store.write_articles([article("a0"), article("a1"), article("a2")])
    assert result.stats.inserted == 3 and not result.rejected
    assert backend.bulk_calls == [["a0", "a1", "a2"], ["a1"]]


def test_a_rejected_record_becomes_a_dead_letter_and_the_rest_is_written(mem):
    backend, store = mem
    backend.reject_ids.add("bad")
    bad = article("bad")
    result = store.write_articles([article("a0"), bad])
    assert result.stats.inserted == 1 and result.rejected_ids == ["bad"]
    (letter,) = result.rejected
    assert letter.stage == "index.write" and letter.reason == "index_rejected"
    assert letter.error_class == "mapper_parsing_exception" and "not a float" in letter.detail
    assert Article.from_json(letter.payload) == bad and letter.origin == bad.url
    # Through the ArticleStore interface the rejected record lands in the dead-letter index.
    backend.reject_ids.add("bad2")
    assert store.upsert_articles([article("bad2")]).total == 0
    assert backend.count("t-dead-letters") == 1


def test_a_concurrent_writer_is_detected_and_decided_again(mem):
    backend, store = mem
    theirs = article("a0")

    def race(b):
        # Another worker stores the same article between our mget and our bulk.
        b.before_bulk = None
        b.seq += 1
        b.docs["t-articles/a0"] = {"_source": article_doc(theirs), "_seq_no": b.seq}

    backend.before_bulk = race
    result = store.write_articles([theirs])
    assert result.stats.to_dict() == {"inserted": 0, "updated": 0, "unchanged": 1}


def test_an_unreachable_server_is_retried_then_reported_with_url_and_hint(mem):
    backend, store = mem
    backend.request_failures = [Unreachable("connection refused"), ServerError(503, None, "busy")]
    assert store.write_articles([article("a0")]).stats.inserted == 1  # two failures, then it works
    backend.request_failures = [Unreachable("connection refused")] * 1000
    store.retry_deadline_s = 0.05
    with pytest.raises(IndexUnavailable) as err:
        store.write_articles([article("a1")])
    assert "http://memory:9200" in str(err.value) and "secret" not in str(err.value)
    assert "start the memory server" in str(err.value)


def test_bad_credentials_are_a_setup_error_not_a_retry(mem):
    backend, store = mem
    backend.request_failures = [ServerError(401, "security_exception", "missing authentication")]
    with pytest.raises(IndexSetupError, match="refused the credentials"):
        store.write_articles([article("a0")])


def test_a_too_large_request_is_split(mem):
    backend, store = mem
    backend.request_failures = [ServerError(413, None, "too large")]
    assert store.write_articles([article("a0"), article("a1")]).stats.inserted == 2
    assert backend.bulk_calls == [["a0"], ["a1"]]


def test_a_deleted_index_is_recreated_and_the_items_retried(mem):
    backend, store = mem
    backend.item_failures["a0"] = [(404, "index_not_found_exception")]
    backend.aliases.clear()
    assert store.write_articles([article("a0")]).stats.inserted == 1
    assert backend.get_alias("t-articles") == ["t-articles-v1"]


def test_dead_letters_are_stored_once(mem):
    backend, store = mem
    letters = [DeadLetter("parse", "empty_body", "d", "{}", origin=f"f{i}") for i in range(4)]
    assert store.add_dead_letters(letters) == 4
    assert store.add_dead_letters(letters) == 0


def test_setup_refuses_a_foreign_alias_and_an_index_in_the_alias_place():
    backend = MemoryBackend()
    backend.aliases["x-articles"] = "x-articles-v7"
    with pytest.raises(IndexSetupError, match="points to x-articles-v7"):
        IndexStore(backend, index_prefix="x").ensure_ready()
    with pytest.raises(IndexSetupError, match="not a valid index name"):
        IndexStore(MemoryBackend(), index_prefix="Bad Prefix")


def test_the_beam_sink_checks_its_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        WriteToIndex(Settings(index=IndexSettings(hosts=["http://127.0.0.1:9200"])), kind="everything")
    with pytest.raises(IndexSetupError, match="needs index.hosts"):
        WriteToIndex(Settings())


def test_a_too_deep_page_is_a_query_error(mem):
    _, store = mem
    with pytest.raises(QueryError, match="at most 10000"):
        store.search(SearchQuery("x", limit=1000, offset=9500))


# --- the Elasticsearch backend's requests ------------------------------------------------------------


class FakeElasticsearch(BaseHTTPRequestHandler):
    """Answers like an Elasticsearch 9 node (product header included) and records every request."""

    requests: list = []
    product = "Elasticsearch"
    version = "9.1.0"

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if self.product:
            self.send_header("x-elastic-product", self.product)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self):
        raw = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
        type(self).requests.append((self.command, self.path, raw, dict(self.headers)))
        path = self.path.split("?")[0]
        if path == "/":
            return self._reply(200, {"version": {"number": self.version}, "tagline": "You Know, for Search"})
        if path.startswith("/_alias/"):
            return self._reply(404, {"error": "alias missing", "status": 404})
        if self.command == "HEAD":
            return self._reply(404, {})
        if path == "/_analyze":
            return self._reply(400, {"error": {"type": "illegal_argument_exception", "reason": "no analyzer"}, "status": 400})
        if path == "/_bulk":
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
            items = [{next(iter(a)): {"status": 201}} for a in lines[::2]]
            return self._reply(200, {"errors": False, "items": items})
        if path.endswith("/_mget"):
            return self._reply(200, {"docs": [{"_id": i, "found": False} for i in json.loads(raw)["ids"]]})
        if path.endswith("/_search"):
            return self._reply(200, {"hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}})
        if self.command == "PUT":
            return self._reply(200, {"acknowledged": True})
        return self._reply(404, {"error": "unexpected", "status": 404})

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle


@pytest.fixture
def fake_es():
    handler = type("Handler", (FakeElasticsearch,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _es_store(url, **kw):
    from connectors.search_index import open_index

    return open_index(IndexSettings(backend="elasticsearch", hosts=[url], index_prefix="es", **kw))


def test_elasticsearch_backend_sends_the_shared_mappings_bulk_and_queries(fake_es):
    handler, url = fake_es
    store = _es_store(url)
    try:
        creates = {path.split("?")[0]: json.loads(body) for method, path, body, _ in handler.requests if method == "PUT"}
        assert set(creates) == {"/es-articles-v1", "/es-alerts-v1", "/es-dead-letters-v1"}
        assert creates["/es-articles-v1"]["mappings"] == article_mapping(resolve_analyzers(lambda n: False))
        assert creates["/es-articles-v1"]["aliases"] == {"es-articles": {}}

        assert store.write_articles([article("a1")]).stats.inserted == 1
        method, path, raw, headers = next(r for r in handler.requests if r[1].startswith("/_bulk"))
        action, doc = [json.loads(line) for line in raw.splitlines()]
        assert action == {"create": {"_index": "es-articles", "_id": "a1", "require_alias": True}}
        assert doc["id"] == "a1" and doc["entity_canonical_ids"] == ["Q320225"]
        assert "x-ndjson" in headers.get("Content-Type", headers.get("content-type", ""))

        query = SearchQuery('"new start" naryschk*', languages=["de"])
        assert store.search(query).total == 0
        _, path, raw, _ = next(r for r in handler.requests if r[1].startswith("/es-articles/_search"))
        assert json.loads(raw) == json.loads(json.dumps(search_body(query)))
    finally:
        store.close()


def test_elasticsearch_backend_refuses_a_server_that_is_not_elasticsearch(fake_es):
    handler, url = fake_es
    handler.product = None  # what OpenSearch (or Elasticsearch before 7.14) sends
    with pytest.raises(IndexSetupError, match=f"the server at {url} is not Elasticsearch") as err:
        _es_store(url)
    assert "index.backend: opensearch" in str(err.value)


def test_opensearch_backend_refuses_elasticsearch(fake_es):
    from connectors.search_index import open_index

    _, url = fake_es
    with pytest.raises(IndexSetupError, match="is Elasticsearch 9.1.0, but index.backend is opensearch"):
        open_index(IndexSettings(hosts=[url], index_prefix="es"))


def test_an_unreachable_server_names_the_url_and_how_to_start_it():
    from connectors.search_index import open_index

    with pytest.raises(IndexUnavailable) as err:
        open_index(IndexSettings(hosts=["http://127.0.0.1:9"], index_prefix="x", timeout_s=1))
    assert "http://127.0.0.1:9" in str(err.value) and "deploy/local/services.sh start opensearch" in str(err.value)


def test_a_language_filter_narrows_the_highlighted_subfields():
    fields = search_body(SearchQuery("ankara", languages=["de", "xx"]))["highlight"]["fields"]
    assert set(fields) == {"title", "title.de", "body", "body.de"}
