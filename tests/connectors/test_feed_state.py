"""Feed health and seen items in SQLite: keys, change detection, restarts, pruning."""

from __future__ import annotations

import pytest

from connectors.feed_state import FeedRecord, FeedStateStore, item_fingerprint, item_key
from connectors.feeds import FeedState
from core.ids import canonical_url, content_hash
from core.records import DeadLetter, RawArticle

FEED = "https://news.example.org/rss"


def art(guid=None, url=None, title="Titel", body="Text über Naryschkin") -> RawArticle:
    return RawArticle(source="example", guid=guid, url=url, title=title, body=body, origin=FEED)


@pytest.fixture
def store(tmp_path):
    with FeedStateStore(tmp_path / "state" / "feeds.db") as s:
        yield s


def test_item_key_prefers_guid_then_canonical_link_then_content():
    assert item_key(art(guid=" g-1 ", url="https://x.org/a")) == "guid:g-1"
    # Tracking parameters and www. do not make a new item.
    assert item_key(art(url="https://www.x.org/a?utm_source=rss")) == "url:" + canonical_url("https://x.org/a")
    assert item_key(art()) == "hash:" + content_hash("Titel", "Text über Naryschkin")
    assert item_key(art(body="  text ÜBER naryschkin ")) == item_key(art())


def test_dead_letters_have_keys_of_their_own():
    letter = DeadLetter(stage="feeds.parse", reason="empty_entry", detail="no text", payload="{}", origin=FEED)
    assert item_key(letter) == "dead:" + letter.id
    assert item_fingerprint(letter) == letter.id


def test_first_poll_is_all_new_and_second_is_all_seen(store):
    records = [art(guid="a"), art(guid="b", title="Zweiter")]
    fresh, stale = store.unseen(FEED, records)
    assert fresh == records and stale == []
    assert store.mark_seen(FEED, fresh, now=100.0) == 2
    fresh, stale = store.unseen(FEED, records)
    assert fresh == [] and stale == records


def test_a_corrected_item_is_new_again(store):
    store.mark_seen(FEED, [art(guid="a", title="Tippfehler")], now=1.0)
    fresh, _ = store.unseen(FEED, [art(guid="a", title="Korrigiert")])
    assert [r.title for r in fresh] == ["Korrigiert"]
    # The correction replaces the old fingerprint; the key count stays one.
    assert store.mark_seen(FEED, fresh, now=2.0) == 0
    assert store.seen_count(FEED) == 1


def test_an_item_listed_twice_in_one_poll_counts_once(store):
    fresh, stale = store.unseen(FEED, [art(guid="a"), art(guid="a")])
    assert len(fresh) == 1 and len(stale) == 1


def test_seen_items_are_per_feed(store):
    store.mark_seen(FEED, [art(guid="a")], now=1.0)
    fresh, _ = store.unseen("https://other.example/feed", [art(guid="a")])
    assert len(fresh) == 1


def test_state_survives_a_restart(tmp_path):
    path = tmp_path / "feeds.db"
    with FeedStateStore(path) as s:
        s.mark_seen(FEED, [art(guid="a")], now=5.0)
        state = FeedState(url=FEED, etag='"v1"', last_modified="Mon, 14 Nov 2022 10:00:00 GMT", last_success="2022-11-14T10:00:00+00:00")
        s.save(FeedRecord(url=FEED, state=state, next_poll_at=1300.0, items_seen=1, ttl_s=600.0, extra={"publish_errors": 2}))
        s.save_position("files", {"files": {"/data/a.txt": "1-2"}})
    with FeedStateStore(path) as s:
        record = s.load(FEED)
        assert record.state.etag == '"v1"' and record.state.last_modified.startswith("Mon")
        assert (record.next_poll_at, record.items_seen, record.ttl_s) == (1300.0, 1, 600.0)
        assert record.extra == {"publish_errors": 2}
        assert s.unseen(FEED, [art(guid="a")])[0] == []
        assert s.load_position("files") == {"files": {"/data/a.txt": "1-2"}}
        assert s.load_position("other") is None
        assert s.load("https://unknown.example/") is None
        assert s.load_or_new("https://unknown.example/").state.url == "https://unknown.example/"


def test_prune_keeps_the_most_recently_listed_keys(tmp_path):
    with FeedStateStore(tmp_path / "f.db", max_seen_per_feed=3) as s:
        for i in range(5):
            s.mark_seen(FEED, [art(guid=f"g{i}")], now=float(i))
        assert s.seen_count(FEED) == 3
        # The oldest keys were forgotten, the newest kept.
        assert [r.guid for r in s.unseen(FEED, [art(guid=f"g{i}") for i in range(5)])[0]] == ["g0", "g1"]
        # An item still listed in the feed is refreshed and survives pruning.
        s.mark_seen(FEED, [art(guid="g2")], now=10.0)
        s.mark_seen(FEED, [art(guid="new1"), art(guid="new2")], now=11.0)
        assert s.unseen(FEED, [art(guid="g2")])[0] == []


def test_status_reports_health_and_time_to_next_poll(store):
    state = FeedState(url=FEED, failures=3, last_error="feed_unavailable: HTTP 503", last_status=503, last_success="2022-11-14T10:00:00+00:00")
    store.save(FeedRecord(url=FEED, state=state, next_poll_at=1_000_100.0, items_seen=12))
    [record] = store.all()
    status = record.status(now=1_000_000.0)
    assert status["consecutive_errors"] == 3
    assert status["last_error"] == "feed_unavailable: HTTP 503"
    assert status["next_poll_in_s"] == 100.0
    assert status["next_poll_at"].startswith("1970-01-12T")
    assert status["items_seen"] == 12 and status["last_success"] == "2022-11-14T10:00:00+00:00"


def test_a_reader_sees_the_writers_state(tmp_path):
    path = tmp_path / "f.db"
    with FeedStateStore(path) as writer:
        writer.save(FeedRecord(url=FEED, state=FeedState(url=FEED, etag="x")))
        with FeedStateStore(path, readonly=True) as reader:
            assert reader.load(FEED).state.etag == "x"


def test_many_keys_are_looked_up_in_chunks(store):
    records = [art(guid=f"g{i}") for i in range(1200)]
    store.mark_seen(FEED, records[:700], now=1.0)
    fresh, stale = store.unseen(FEED, records)
    assert len(stale) == 700 and len(fresh) == 500
