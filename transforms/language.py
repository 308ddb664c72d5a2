"""Language identification, offline, restricted to the languages newswatch expects.

:func:`detect` wraps py3langid restricted to ``settings.language.languages``
(de, en, ru, uk, pl, fr by default) with probabilities normalised over those
languages. Text with too few letters, or a best guess below
``min_confidence``, is ``"und"`` (undetermined).

A language declared by the source (a feed's ``<language>``, a JSON field) is
often a site-wide default and wrong for individual items, so detection wins
when it is confident; the declared language is kept only when detection is
not (short headlines, mixed text).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from functools import lru_cache

import apache_beam as beam
from apache_beam.metrics import Metrics

from core.records import Article

log = logging.getLogger(__name__)

UNDETERMINED = "und"
MIN_LETTERS = 3
# Language identification of long articles gains nothing after a few KB.
MAX_CHARS = 4000

_lock = threading.Lock()


@lru_cache(maxsize=8)
def _identifier(languages: tuple[str, ...]):
    """A py3langid identifier restricted to ``languages`` (loads the model once, ~1 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(list(languages))
    return ident


def _letters(text: str) -> int:
    return sum(1 for c in text if c.isalpha())


class LanguageDetector:
    """Language identification over a fixed set of candidate languages."""

    def __init__(self, languages: list[str] | tuple[str, ...], min_confidence: float = 0.5):
        if not languages:
            raise ValueError("language.languages must name at least one language")
        self.languages = tuple(sorted({lang.lower() for lang in languages}))
        self.min_confidence = min_confidence
        with _lock:
            self._ident = _identifier(self.languages)

    @classmethod
    def from_settings(cls, settings) -> "LanguageDetector":
        return cls(settings.language.languages, settings.language.min_confidence)

    def detect(self, text: str | None) -> tuple[str, float]:
        """``(language, confidence)``; ``("und", confidence)`` when unsure or too short."""
        text = (text or "")[:MAX_CHARS]
        if _letters(text) < MIN_LETTERS:
            return UNDETERMINED, 0.0
        if len(self.languages) == 1:
            return self.languages[0], 1.0
        lang, conf = self._ident.classify(text)
        conf = float(conf)
        if conf < self.min_confidence:
            return UNDETERMINED, conf
        return lang, conf

    def detect_article(self, article: Article) -> Article:
        """A copy of ``article`` with ``language`` and ``language_score`` set (see the module docstring)."""
        text = f"{article.title}\n{article.body}" if article.title else article.body
        lang, conf = self.detect(text)
        declared = (article.language or "").split("-")[0].lower() or None
        if lang == UNDETERMINED and declared:
            lang = declared
        return dataclasses.replace(article, language=lang, language_score=round(conf, 4))


def detect(text: str | None, languages=("de", "en", "ru", "uk", "pl", "fr"), min_confidence: float = 0.5) -> tuple[str, float]:
    """Detect the language of ``text`` among ``languages`` (see :class:`LanguageDetector`)."""
    return LanguageDetector(tuple(languages), min_confidence).detect(text)


class DetectLanguage(beam.PTransform):
    """Article → Article with ``language`` and ``language_score``. Returns ``(articles, dead)``."""

    def __init__(self, settings):
        super().__init__()
        self._languages = list(settings.language.languages)
        self._min_conf = settings.language.min_confidence

    def expand(self, articles):
        from transforms.deadletters import apply_stage

        languages, min_conf = self._languages, self._min_conf

        def make():
            detector = LanguageDetector(languages, min_conf)
            counters = {}

            def fn(article: Article):
                article = detector.detect_article(article)
                lang = article.language or UNDETERMINED
                if lang not in counters:
                    counters[lang] = Metrics.counter("newswatch", f"language.{lang}")
                counters[lang].inc()
                return [article]

            return fn

        return apply_stage(articles, "DetectLanguage", "language", make)
