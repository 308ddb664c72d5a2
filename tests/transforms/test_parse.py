import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.errors import RecordError
from core.records import RawArticle
from core.settings import InputSettings
from transforms.clean import clean_text, clean_title
from transforms.dedup import DedupArticles
from transforms.parse import ParseArticles, parse_date, to_article

S = InputSettings()


def raw(**kw):
    base = dict(source="test", title="Titel", body="Ein Text, der lang genug ist, um zu zählen.")
    base.update(kw)
    return RawArticle(**base)


def test_clean_strips_html_entities_and_invisible_characters():
    text = clean_text("<div><p>Erster&nbsp;Absatz &amp;amp; mehr</p><script>evil()</script><p>Zwei\u200bter</p></div>")
    assert text == "Erster Absatz & mehr\n\nZweiter"
    assert clean_title("  Ein\n Titel  ") == "Ein Titel"


def test_clean_is_nfc():
    decomposed = "Gespra\u0308che"
    assert clean_text(decomposed) == "Gespräche"


def test_to_article_sets_ids_and_dates():
    a = to_article(raw(url="https://www.example.org/a?utm_medium=x", published="2023-01-10 10:00 +01:00"), S)
    assert a.canonical_url == "https://example.org/a"
    assert a.published == "2023-01-10T09:00:00+00:00"
    assert a.id == to_article(raw(url="http://example.org/a"), S).id


def test_without_url_the_id_comes_from_content():
    a, b = to_article(raw(), S), to_article(raw(title="titel"), S)
    assert a.id == b.id and a.canonical_url is None


@pytest.mark.parametrize(
    "record,code",
    [
        (raw(body=""), "empty_body"),
        (raw(body="   <p> </p> ", title=""), "empty_body"),
        (raw(body="x" * (S.max_article_bytes + 1)), "too_large"),
        (raw(title=123), "bad_record"),
    ],
)
def test_bad_records_raise_with_reason(record, code):
    with pytest.raises(RecordError) as info:
        to_article(record, S)
    assert info.value.code == code


def test_headline_only_items_keep_the_title_as_text():
    a = to_article(raw(body="", title="Lawrow trifft Fidan in Ankara zu Gesprächen"), S)
    assert a.body == a.title


def test_bad_date_does_not_drop_the_article():
    assert parse_date("not a date at all") is None
    assert to_article(raw(published="gestern"), S).published is None


def test_parse_and_dedup_in_a_pipeline():
    records = [
        raw(url="https://example.org/a", fetched="2024-01-01T00:00:00Z"),
        raw(url="https://example.org/a?utm_source=x", fetched="2024-01-02T00:00:00Z"),
        raw(url="https://example.org/b", title="Titel", body="Ein Text, der lang genug ist, um zu zählen."),
        raw(body=""),
    ]
    with TestPipeline() as p:
        good, dead = p | beam.Create(records) | ParseArticles(S)
        unique = good | DedupArticles()
        # a and a?utm are one URL; b has the same content as a, so only one remains.
        assert_that(unique | beam.Map(lambda a: a.canonical_url), equal_to(["https://example.org/a"]), label="unique")
        assert_that(dead | beam.Map(lambda d: (d.stage, d.reason)), equal_to([("parse", "empty_body")]), label="dead")
