from core.ids import article_id, canonical_url, content_hash, stable_id


def test_canonical_url_drops_tracking_fragment_and_case():
    a = canonical_url("HTTP://WWW.Example.com:80/news/item/?utm_source=rss&b=2&a=1#top")
    b = canonical_url("https://example.com/news/item?a=1&b=2")
    assert a == b == "https://example.com/news/item?a=1&b=2"


def test_canonical_url_rejects_non_http():
    assert canonical_url("ftp://example.com/x") is None
    assert canonical_url("not a url") is None
    assert canonical_url(None) is None


def test_content_hash_ignores_case_and_whitespace():
    assert content_hash("Titel", "Ein  Text\n hier") == content_hash("titel", "ein text hier")
    assert content_hash("Titel", "Ein Text") != content_hash("Titel", "Ein anderer Text")


def test_article_id_prefers_url_and_is_stable():
    h = content_hash("t", "b")
    assert article_id("https://x.org/a", h) == article_id("https://x.org/a", content_hash("other", "text"))
    assert article_id(None, h) == article_id(None, content_hash("T", "B"))
    assert article_id(None, h) != article_id("https://x.org/a", h)
    assert len(stable_id("a", "b")) == 24 and stable_id("a", "b") != stable_id("ab")
