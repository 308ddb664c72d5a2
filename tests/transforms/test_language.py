import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.records import Article
from core.settings import Settings
from transforms.language import DetectLanguage, LanguageDetector, detect


@pytest.fixture(scope="module")
def detector():
    return LanguageDetector(["de", "en", "ru", "uk", "pl", "fr"], min_confidence=0.5)


def article(title, body, language=None):
    return Article(id=title, url=None, canonical_url=None, source="t", title=title, body=body,
                   published=None, fetched="2024-01-01T00:00:00+00:00", content_hash="h", language=language)


@pytest.mark.parametrize("text,lang", [
    ("Der Kreml bestätigt das Treffen in Ankara nicht.", "de"),
    ("The Kremlin declined to confirm the meeting.", "en"),
    ("Кремль не подтвердил встречу в Анкаре.", "ru"),
    ("Кремль не підтвердив зустріч в Анкарі.", "uk"),
    ("Kreml nie potwierdził spotkania w Ankarze.", "pl"),
    ("Le Kremlin n'a pas confirmé la rencontre.", "fr"),
])
def test_detects_each_configured_language(detector, text, lang):
    got, conf = detector.detect(text)
    assert got == lang
    assert 0.5 <= conf <= 1.0


def test_empty_and_tiny_texts_are_undetermined(detector):
    assert detector.detect("") == ("und", 0.0)
    assert detector.detect(None) == ("und", 0.0)
    assert detector.detect("12 — ?!") == ("und", 0.0)


def test_low_confidence_is_undetermined():
    strict = LanguageDetector(["de", "en", "pl"], min_confidence=0.99)
    lang, conf = strict.detect("NATO")
    assert lang == "und" and conf < 0.99


def test_probabilities_are_normalised_over_the_configured_languages():
    lang, conf = LanguageDetector(["en", "fr"]).detect("Der Kreml bestätigt das Treffen nicht.")
    assert lang in ("en", "fr") and 0 < conf <= 1


def test_module_level_detect():
    assert detect("Der Bundestag hat das Gesetz beschlossen.")[0] == "de"


def test_source_language_is_kept_only_when_detection_is_unsure(detector):
    confident = detector.detect_article(article("Kreml", "Der Kreml bestätigt das Treffen in Ankara nicht.", language="en"))
    assert confident.language == "de"
    unsure = detector.detect_article(article("", "OK!", language="en-GB"))
    assert unsure.language == "en"
    assert detector.detect_article(article("", "OK!")).language == "und"


def test_detect_language_transform_sets_language():
    settings = Settings()
    items = [article("a", "Пресс-секретарь Кремля заявил журналистам, что встреча не планируется."),
             article("b", "Le porte-parole du Kremlin a démenti toute rencontre avec les Américains.")]
    with TestPipeline() as p:
        good, dead = p | beam.Create(items) | DetectLanguage(settings)
        assert_that(good | beam.Map(lambda a: (a.id, a.language)), equal_to([("a", "ru"), ("b", "fr")]), label="langs")
        assert_that(dead, equal_to([]), label="dead")
