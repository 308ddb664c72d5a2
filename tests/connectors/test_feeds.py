"""Feed parsing over the whole feedparser corpus, polling with state, and the Beam source."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import apache_beam as beam
import feedparser
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from connectors.base import Source
from connectors.feeds import FeedSource, FeedState, ReadFromFeeds, fetch_and_parse, parse_feed, poll_feed, strip_html
from core.ids import article_id, canonical_url, content_hash
from core.records import DeadLetter, RawArticle
from core.retry import Backoff
from core.settings import FetchSettings

FIXTURES = Path(__file__).parent / "fixtures"
FEED = FIXTURES / "feed.xml"
CORPUS = Path(os.environ.get("NEWSWATCH_FEED_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "feed-corpus" / "feedparser"))
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/feed-corpus/feedparser")
TINY = Backoff(base_s=0.001, cap_s=0.005)
_HEADER_LINE = re.compile(r"^Header:\s*([A-Za-z-]+):\s*(.*?)\s*$", re.MULTILINE)
KNOWN_REASONS = {"empty_entry", "malformed_feed", "not_a_feed"}


def corpus_headers(data: bytes) -> dict[str, str]:
    """The HTTP headers a corpus file says it is served with (its ``Header:`` comment lines)."""
    head = data[:2048].decode("latin-1")
    return {k: v for k, v in _HEADER_LINE.findall(head)}


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".xml", ".json"))


def settings(**kw) -> FetchSettings:
    base = {"timeout_s": 2.0, "retries": 1, "max_bytes": 1_000_000, "interval_s": 300.0, "max_interval_s": 3600.0}
    base.update(kw)
    return FetchSettings(**base)


def articles(records) -> list[RawArticle]:
    return [r for r in records if isinstance(r, RawArticle)]


def letters(records) -> list[DeadLetter]:
    return [r for r in records if isinstance(r, DeadLetter)]


def derived_id(a: RawArticle) -> str:
    return article_id(canonical_url(a.url), content_hash(a.title or "", strip_html(a.body)))


# --- parsing ----------------------------------------------------------------


def test_fixture_feed_entries_map_to_raw_articles():
    records = list(parse_feed(FEED.read_bytes(), "https://zeitung.example.org/feed.xml"))
    arts = articles(records)
    assert [a.title for a in arts] == [
        "Medien: Russland und USA führen Gespräche in Ankara",
        "Sacharowa: Gespräche über New START möglich",
        None,
    ]
    first, second, third = arts
    assert first.source == "Beispielzeitung – Politik"
    assert first.url == "https://zeitung.example.org/politik/ankara-gespraeche?utm_source=rss"
    assert first.guid == "zeitung-4711"
    assert first.published == "2022-11-14T10:00:00+00:00"
    assert first.content_type == "html" and "<b>Kommersant</b>" in first.body  # full content beats the teaser
    assert first.language == "de" and first.meta["tags"] == ["Russland"]
    assert first.origin == "https://zeitung.example.org/feed.xml"
    assert "bozo" not in first.meta
    # Relative link resolved against the feed's site; no body, still a record.
    assert second.url == "https://zeitung.example.org/politik/sacharowa-new-start" and second.body is None
    # No title, link, guid or date: still a record, identified by its content.
    assert third.url is None and third.guid is None and third.published is None
    assert "SNV-III" in third.body
    assert len({derived_id(a) for a in arts}) == 3
    [empty] = letters(records)
    assert empty.reason == "empty_entry" and "podcast.mp3" in empty.payload


def test_html_page_is_not_a_feed():
    page = b"<!DOCTYPE html><html><head><title>Login</title></head><body><p>Please sign in</p></body></html>"
    [letter] = parse_feed(page, "https://example.org/feed")
    assert letter.reason == "not_a_feed" and "Please sign in" in letter.payload


@pytest.mark.parametrize("data,reason", [(b"", "malformed_feed"), (b"   \n", "malformed_feed"), (b"{not json", "malformed_feed"),
                                         (b'{"version": "x"}', "not_a_feed"),
                                         (b"<rss><channel><item><title>x</title><description>cut he", None)])
def test_broken_documents_become_dead_letters(data, reason):
    records = list(parse_feed(data, "https://example.org/feed"))
    if reason is None:
        # Truncated XML whose one entry survives: used, with the complaint recorded.
        [art] = articles(records)
        assert art.title == "x" and "bozo" in art.meta
    else:
        [letter] = records
        assert letter.reason == reason and letter.stage == "feeds.parse"


def test_whole_feedparser_corpus():
    files = corpus_files()
    assert len(files) > 2000, f"feed corpus missing at {CORPUS}"
    started = time.monotonic()
    per_file = collections.Counter()
    reasons = collections.Counter()
    n_articles = 0
    for path in files:
        data = path.read_bytes()
        records = list(parse_feed(data, str(path), corpus_headers(data) or None))
        arts, dead = articles(records), letters(records)
        assert len(arts) + len(dead) == len(records)
        for a in arts:
            assert a.title or strip_html(a.body), f"{path}: article without text"
            assert a.origin == str(path) and a.source and a.fetched
            assert re.fullmatch(r"[0-9a-f]{24}", derived_id(a))
            if a.published:
                assert a.published.endswith("+00:00")
        for d in dead:
            assert d.reason in KNOWN_REASONS, f"{path}: unexpected dead letter {d.reason}: {d.detail}"
            assert d.origin == str(path) and d.detail
        reasons.update(d.reason for d in dead)
        n_articles += len(arts)
        if records:
            per_file["articles" if arts else "dead_only"] += 1
        else:
            # Nothing out: it must be a feed that really has no entries and
            # nothing wrong beyond an encoding note.
            parsed = feedparser.parse(data, response_headers=corpus_headers(data))
            assert not parsed.entries, f"{path}: entries lost"
            assert not parsed.bozo or isinstance(parsed.bozo_exception, (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)), path
            per_file["empty_feed"] += 1
    elapsed = time.monotonic() - started
    print(f"\ncorpus files={len(files)} {dict(per_file)} articles={n_articles} dead={dict(reasons)} elapsed_s={elapsed:.1f}")
    assert per_file["articles"] > 400 and n_articles > 450
    assert reasons["malformed_feed"] > 0 and reasons["empty_entry"] > 0


def _corpus_records(rel: str, headers: dict | None = None) -> list:
    data = (CORPUS / rel).read_bytes()
    return list(parse_feed(data, rel, headers if headers is not None else corpus_headers(data) or None))


def test_illformed_feed_still_yields_entries():
    [art] = articles(_corpus_records("illformed/rdf_channel_empty_textinput.xml"))
    assert art.title == "crashes here"
    assert art.meta["bozo"].startswith("SAXParseException")


def test_undeclared_koi8r_feed_is_decoded():
    [art] = articles(_corpus_records("illformed/chardet/koi8r.xml"))
    assert art.title == "Как пережить новогоднюю ночь"
    assert "Новый год" in art.body
    assert art.meta["encoding"] == "koi8_r" and art.meta["encoding_guessed"] is True


@pytest.mark.parametrize("rel,title", [
    ("illformed/chardet/gb2312.xml", "不归移民漫画系列：专业工作"),
    ("illformed/chardet/euckr.xml", "EUC-KR 에서 TypeKey 한글닉네임 표시하기"),
    ("illformed/chardet/shiftjis.xml", "DrecomRSSに記事投稿が反映されない…"),
])
def test_undeclared_cjk_feeds_are_decoded(rel, title):
    assert articles(_corpus_records(rel))[0].title == title


def test_http_charset_header_decides_the_encoding():
    [art] = articles(_corpus_records("encoding/http_text_xml_charset_2.xml"))
    assert art.body == "This is a £“test.”"
    assert art.meta["encoding"] == "windows-1252" and "encoding_guessed" not in art.meta


def test_json_feed():
    arts = articles(_corpus_records("json/example.json"))
    assert [(a.title, a.guid, a.url, a.content_type) for a in arts] == [
        ("post 2", "2", "https://example.org/second-item", "text"),
        (None, "1", "https://example.org/initial-post", "html"),
    ]
    assert all(a.source == "My Example Feed" for a in arts)


# --- a local feed server ----------------------------------------------------


class _FeedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = urlsplit(self.path).path
        self.server.hits[path] += 1
        status, headers, body = self.server.routes.get(path, (404, {}, b"not found"))
        etag = headers.get("ETag")
        if status == 200 and etag and self.headers.get("If-None-Match") == etag:
            status, body = 304, b""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def feed_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FeedHandler)
    srv.daemon_threads = True
    srv.handle_error = lambda request, address: None  # clients closing keep-alive sockets
    srv.hits = collections.Counter()
    srv.routes = {}
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _serve_corpus(srv, rel: str, content_type: str | None = None) -> str:
    data = (CORPUS / rel).read_bytes()
    headers = corpus_headers(data)
    headers = {"Content-Type": content_type} if content_type else {k.title(): v for k, v in headers.items()}
    path = "/corpus/" + rel
    srv.routes[path] = (200, {**headers, "ETag": '"' + hashlib.sha1(data).hexdigest() + '"'}, data)
    return srv.url + path


def test_corpus_feeds_through_http_match_local_parsing(feed_server):
    rels = [p.relative_to(CORPUS).as_posix() for p in sorted((CORPUS / "encoding").glob("http_*.xml"))]
    rels += ["illformed/chardet/koi8r.xml", "wellformed/rss/item_description.xml", "json/example.json"]
    compared = 0
    for rel in rels:
        url = _serve_corpus(feed_server, rel)
        fetched = fetch_and_parse(url, settings())
        data = (CORPUS / rel).read_bytes()
        headers = {k.lower(): v for k, v in corpus_headers(data).items()}
        local = list(parse_feed(data, url, {"content-type": headers.get("content-type", "")} if headers else None))
        assert [(a.title, a.body, a.url) for a in articles(fetched)] == [(a.title, a.body, a.url) for a in articles(local)], rel
        assert [d.reason for d in letters(fetched)] == [d.reason for d in letters(local)], rel
        compared += 1
    assert compared > 40


def test_served_charset_overrides_guessing(feed_server):
    url = _serve_corpus(feed_server, "illformed/chardet/koi8r.xml", content_type="text/xml; charset=koi8-r")
    [art] = articles(fetch_and_parse(url, settings()))
    assert art.title == "Как пережить новогоднюю ночь"
    assert "encoding_guessed" not in art.meta


def test_poll_feed_keeps_state_and_uses_conditional_get(feed_server):
    feed_server.routes["/feed.xml"] = (200, {"Content-Type": "application/rss+xml", "ETag": '"v1"', "Last-Modified": "Mon, 14 Nov 2022 10:00:00 GMT"}, FEED.read_bytes())
    url = feed_server.url + "/feed.xml"
    state, records = poll_feed(url, None, settings())
    assert len(articles(records)) == 3 and state.etag == '"v1"' and state.last_status == 200
    assert state.entries == 3 and state.failures == 0 and state.next_poll_s(settings()) == 300.0
    restored = FeedState.from_dict(state.to_dict())
    again, records = poll_feed(url, restored, settings())
    assert records == [] and again.last_status == 304 and again.etag == '"v1"'
    assert feed_server.hits["/feed.xml"] == 2


def test_feed_down_after_retries_is_a_dead_letter(feed_server):
    feed_server.routes["/down"] = (503, {}, b"maintenance")
    url = feed_server.url + "/down"
    state, records = poll_feed(url, None, settings(retries=2), backoff=TINY, sleep=lambda s: None)
    [letter] = records
    assert letter.reason == "feed_unavailable" and letter.stage == "feeds.fetch"
    assert url in letter.payload and "503" in letter.detail
    assert feed_server.hits["/down"] == 3
    assert state.failures == 1 and not state.permanent_failure
    state, _ = poll_feed(url, state, settings(retries=0))
    assert state.failures == 2 and state.next_poll_s(settings()) == 600.0


def test_retry_after_sets_the_next_poll(feed_server):
    feed_server.routes["/busy"] = (429, {"Retry-After": "7200"}, b"")
    state, [letter] = poll_feed(feed_server.url + "/busy", None, settings())
    assert letter.reason == "feed_unavailable" and state.retry_after == 7200
    assert state.next_poll_s(settings()) == 7200


def test_missing_feed_is_a_permanent_error(feed_server):
    state, [letter] = poll_feed(feed_server.url + "/nope", None, settings(), sleep=lambda s: None)
    assert letter.reason == "feed_error" and state.permanent_failure
    assert feed_server.hits["/nope"] == 1
    assert state.next_poll_s(settings()) == 3600.0


def test_local_feed_files_and_file_urls(tmp_path):
    copy = tmp_path / "feed.xml"
    copy.write_bytes(FEED.read_bytes())
    state, records = poll_feed(str(copy), None, settings())
    assert len(articles(records)) == 3 and all(a.origin == str(copy) for a in articles(records))
    state, records = poll_feed(str(copy), state, settings())
    assert records == [] and state.last_status == 304
    os.utime(copy, ns=(time.time_ns(), time.time_ns() + 10**9))
    state, records = poll_feed(str(copy), state, settings())
    assert len(articles(records)) == 3
    assert len(articles(fetch_and_parse(copy.as_uri(), settings()))) == 3
    _, [letter] = poll_feed(str(tmp_path / "missing.xml"), None, settings())
    assert letter.reason == "feed_unavailable"
    _, [letter] = poll_feed(str(copy), None, settings(max_bytes=100))
    assert letter.reason == "too_large" and "truncated" in letter.payload


def test_unsupported_scheme_is_a_dead_letter():
    _, [letter] = poll_feed("ftp://example.org/feed.xml", None, settings())
    assert letter.reason == "bad_url"


def test_feed_source_is_a_resumable_source(feed_server):
    feed_server.routes["/feed.xml"] = (200, {"Content-Type": "application/rss+xml", "ETag": '"v1"'}, FEED.read_bytes())
    source = FeedSource(feed_server.url + "/feed.xml", settings())
    assert isinstance(source, Source)
    assert len(articles(source.poll())) == 3
    resumed = FeedSource(feed_server.url + "/feed.xml", settings(), state=source.position())
    assert list(resumed.poll()) == [] and resumed.next_poll_s() == 300.0


# --- Beam -------------------------------------------------------------------


def test_read_from_feeds_pipeline(feed_server, tmp_path):
    feed_server.routes["/feed.xml"] = (200, {"Content-Type": "application/rss+xml"}, FEED.read_bytes())
    feed_server.routes["/down"] = (503, {}, b"")
    urls = [feed_server.url + "/feed.xml", feed_server.url + "/down", str(FIXTURES / "feed.xml"), str(tmp_path / "missing.xml")]
    with TestPipeline() as p:
        arts, dead = p | ReadFromFeeds(urls, settings(retries=0))
        assert_that(arts | "Origins" >> beam.Map(lambda a: a.origin),
                    equal_to([urls[0]] * 3 + [urls[2]] * 3), label="articles")
        assert_that(dead | "Reasons" >> beam.Map(lambda d: d.reason),
                    equal_to(["empty_entry", "empty_entry", "feed_unavailable", "feed_unavailable"]), label="dead")
