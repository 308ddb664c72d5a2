"""Topic tagging: scoring rules, language gating, taxonomy validation and the Beam stage."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.errors import ResourceError
from core.records import Article, Entity
from core.settings import ResourceSettings, Settings
from transforms.topics import TagTopics, load_topics

SEEDS = Path(__file__).resolve().parents[2] / "seeds"

TAXONOMY = """
version: 1
threshold: 2
languages: [de, en, ru]
topics:
  - id: sanctions
    name: Sanctions
    strong:
      de: [Sanktionspaket*]
    keywords:
      en: [sanction*, embargo*]
      de: ["*sanktion*", Embargo*]
      ru: [санкци*, эмбарго]
  - id: arms-control
    name: Arms control
    entities: [concept:new-start]
    keywords:
      en: [treaty, warhead*]
  - id: war
    name: War
    keywords:
      en: [war, troops]
      any: [{text: Ukraine, weight: 0.5}]
"""


def art(body, *, title="", language="en", entities=()):
    return Article(
        id="a", url=None, canonical_url=None, source="test", title=title, body=body, published=None,
        fetched="2022-11-10T11:00:00+00:00", content_hash="h", language=language, entities=list(entities),
    )


@pytest.fixture
def tagger(tmp_path):
    p = tmp_path / "topics.yaml"
    p.write_text(TAXONOMY, encoding="utf-8")
    return load_topics(p)


def test_one_stray_keyword_is_not_enough(tagger):
    assert tagger.tag(art("The EU discussed sanctions on Tuesday.")) == []
    assert tagger.scores(art("The EU discussed sanctions on Tuesday.")) == {"sanctions": 1.0}


def test_two_distinct_keywords_tag_a_topic(tagger):
    assert tagger.tag(art("New sanctions and an oil embargo were agreed.")) == ["sanctions"]


def test_repeats_and_title_add_weight(tagger):
    body = "Sanctions were extended. The sanctions hit banks. More sanctions follow."
    assert tagger.scores(art(body))["sanctions"] == 2.0  # 1 + 2 × 0.5 for the repeats
    assert tagger.scores(art("Banks were named.", title="New sanctions"))["sanctions"] == 1.5


def test_strong_keywords_and_entities_suffice_alone(tagger):
    assert tagger.tag(art("Das neue Sanktionspaket ist da.", language="de")) == ["sanctions"]
    body = "The New START limits were discussed."
    ents = [Entity(text="New START", label="TREATY", start=4, end=13, canonical_id="concept:new-start", source="concept")]
    assert tagger.tag(art(body, entities=ents)) == ["arms-control"]


def test_prefix_and_infix_keywords(tagger):
    text = "Neue Wirtschaftssanktionen und ein Embargo."
    assert tagger.tag(art(text, language="de")) == ["sanctions"]
    assert tagger.tag(art("Новые санкции и эмбарго.", language="ru")) == ["sanctions"]


def test_keywords_count_only_in_their_language(tagger):
    # German "war" means "was": the English keyword must not fire on German text.
    german = "Der Krieg war lang, die troops waren müde."
    assert "war" not in tagger.scores(art(german, language="de"))
    assert tagger.scores(art("war and troops", language="en"))["war"] == 2.0
    # Unknown language: every language's keywords count.
    assert tagger.scores(art("war and troops", language=None))["war"] == 2.0
    # `any` keywords count in every language.
    assert tagger.scores(art("Ukraine", language="de"))["war"] == 0.5


def test_overlapping_keywords_do_not_count_one_word_twice(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("topics:\n  - id: t\n    name: T\n    keywords:\n      en: [terror*, terrorist*]\n", encoding="utf-8")
    tagger = load_topics(p)
    assert tagger.scores(art("a terrorist"))["t"] == 1.0


def test_results_are_ordered_best_first(tagger):
    body = "Sanctions, an embargo and new sanctions; troops at war."
    assert tagger.tag(art(body)) == ["sanctions", "war"]


def write(tmp_path, text):
    p = tmp_path / "topics.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "text, expected",
    [
        ("topics:\n  - id: t\n    nme: T\n    keywords: {en: [a1]}\n", "topic 't': unknown field 'nme' — did you mean 'name'?"),
        ("topics:\n  - id: t\n    name: T\n    keywords: {en: [{txt: abc}]}\n",
         "topic 't': keywords.en[0]: unknown field 'txt' — did you mean 'text'?"),
        ("topics:\n  - id: t\n    name: T\n    keywords: {english: [abc]}\n", "topic 't': keywords.english: unknown language 'english'"),
        ("topics:\n  - id: t\n    name: T\n    keywords: {de: [ab*]}\n", "topic 't': keywords.de[0]: wildcard phrase 'ab*' is too short"),
        ("topics:\n  - id: t\n    name: T\n    keywords: {de: [abc, abc]}\n", "topic 't': keywords.de[1]: 'abc' is listed twice"),
        ("topics:\n  - id: t\n    name: T\n  - id: t\n    name: U\n    keywords: {de: [x]}\n",
         "topic 't': duplicate topic id (topics #1 and #2)"),
        ("topics:\n  - id: t\n    name: T\n", "topic 't': needs keywords, strong keywords or entities"),
        ("topics:\n  - id: t\n    name: T\n    keywords: {de: [{text: x, weight: -1}]}\n", "topic 't': keywords.de[0].weight"),
        ("topcs: []\n", "unknown field 'topcs' — did you mean 'topics'?"),
        ("threshold: 0\ntopics: []\n", "threshold: Input should be greater than 0"),
    ],
)
def test_invalid_taxonomies_give_clear_messages(tmp_path, text, expected):
    with pytest.raises(ResourceError) as err:
        load_topics(write(tmp_path, text))
    assert str(err.value).startswith(str(tmp_path / "topics.yaml"))
    assert expected in str(err.value)


def test_unknown_entity_ids_are_reported_when_resource_files_exist(tmp_path):
    (tmp_path / "c.yaml").write_text("concepts:\n  - {id: concept:new-start, name: New START}\n", encoding="utf-8")
    text = "topics:\n  - id: t\n    name: T\n    entities: [concept:new-strat]\n"
    with pytest.raises(ResourceError, match="entity 'concept:new-strat' is not defined in .* did you mean 'concept:new-start'"):
        load_topics(write(tmp_path, text), concepts=tmp_path / "c.yaml")


def test_seed_taxonomy_loads_and_tags_the_seed_article():
    from transforms.entities import link_article
    from transforms.watchlist import EntityLinker

    tagger = load_topics(SEEDS / "topics.yaml", watchlist=SEEDS / "watchlist.yaml", concepts=SEEDS / "concepts.yaml")
    assert 10 <= len(tagger.topics) <= 15
    text = (SEEDS / "000_f1290934ed803041.txt").read_text(encoding="utf-8")
    title, _, body = text.partition("\n\n")
    linker = EntityLinker.from_files(SEEDS / "watchlist.yaml", SEEDS / "concepts.yaml")
    a = link_article(linker, art(body.strip(), title=title.strip(), language="de"))
    topics = tagger.tag(a)
    assert {"diplomacy", "arms-control", "intelligence", "prisoner-exchange", "war-in-ukraine"} <= set(topics)
    assert topics[0] == "diplomacy"
    for off_topic in ("cyber", "elections", "energy", "terrorism"):
        assert off_topic not in topics


@pytest.mark.parametrize(
    "language, text, expected",
    [
        ("en", "Hackers behind a ransomware attack demanded payment from the servers' owners.", "cyber"),
        ("ru", "Центризбирком объявил итоги: явка на выборах составила 60 процентов.", "elections"),
        ("uk", "Відбувся обмін полоненими між Україною та Росією.", "prisoner-exchange"),
        ("pl", "Unia Europejska przyjęła nowy pakiet sankcji wobec Rosji.", "sanctions"),
        ("fr", "Les livraisons de gaz par le gazoduc ont repris.", "energy"),
        ("de", "Der Bundestag debattierte über Rüstungskontrolle und Atomwaffen.", "arms-control"),
    ],
)
def test_seed_taxonomy_covers_the_six_languages(language, text, expected):
    tagger = load_topics(SEEDS / "topics.yaml")
    assert expected in tagger.tag(art(text, language=language))


def test_seed_taxonomy_leaves_small_talk_untagged():
    tagger = load_topics(SEEDS / "topics.yaml")
    assert tagger.tag(art("A new start for the city marathon: runners met in the park on Sunday.")) == []
    assert tagger.tag(art("Das Wetter war gestern sonnig, heute regnet es.", language="de")) == []


def test_tag_topics_beam_stage(tmp_path):
    p = write(tmp_path, TAXONOMY)
    settings = Settings(resources=ResourceSettings(topics=p, watchlist=tmp_path / "x.yaml", concepts=tmp_path / "x.yaml"))
    with TestPipeline() as pipeline:
        tagged, dead = pipeline | beam.Create([art("sanctions and an embargo"), art("nothing")]) | TagTopics(settings)
        assert_that(tagged | beam.Map(lambda a: a.topics), equal_to([["sanctions"], []]), label="topics")
        assert_that(dead, equal_to([]), label="dead")
