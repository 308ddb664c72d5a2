"""Parse and validate raw connector records into typed, cleaned ``Article``s.

Everything a later stage relies on is checked here: a non-empty body within
the size limit, a parseable date, a stable id (from the canonical URL, else
from the content).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import apache_beam as beam
from dateutil import parser as dateparser

from core.errors import RecordError
from core.ids import article_id, canonical_url, content_hash
from core.records import Article, RawArticle
from core.settings import InputSettings
from transforms.clean import clean_text, clean_title

log = logging.getLogger(__name__)


def parse_date(value: str | None) -> str | None:
    """ISO-8601 in UTC, or None when absent or unparseable (a bad date never drops an article)."""
    if not value:
        return None
    try:
        dt = dateparser.parse(str(value))
    except (ValueError, OverflowError, TypeError):
        log.debug("unparseable date value=%r", value)
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def to_article(raw: RawArticle | dict, settings: InputSettings) -> Article:
    """Validate and clean one raw record; raises RecordError with a reason code."""
    if isinstance(raw, dict):
        raw = RawArticle.from_dict(raw)
    if not isinstance(raw, RawArticle):
        raise RecordError(f"expected a RawArticle, got {type(raw).__name__}", code="bad_record")
    for name in ("title", "body", "url", "published"):
        value = getattr(raw, name)
        if value is not None and not isinstance(value, str):
            raise RecordError(f"field {name!r} must be text, got {type(value).__name__}", code="bad_record")
    body_in = raw.body or ""
    if len(body_in.encode("utf-8", "surrogatepass")) > settings.max_article_bytes:
        raise RecordError(
            f"body is {len(body_in):,} characters, over input.max_article_bytes={settings.max_article_bytes:,}",
            code="too_large",
            hint="raise input.max_article_bytes if such articles are expected",
        )
    is_html = True if raw.content_type == "html" else None
    title = clean_title(raw.title, is_html=is_html)
    body = clean_text(body_in, is_html=is_html)
    if len(body) < settings.min_body_chars:
        if not body and title and len(title) >= settings.min_body_chars:
            # Headline-only feed items are still news; the title is the text.
            body = title
        else:
            raise RecordError(
                f"body has {len(body)} characters after cleaning (minimum {settings.min_body_chars})",
                code="empty_body",
            )
    curl = canonical_url(raw.url)
    chash = content_hash(title, body)
    return Article(
        id=article_id(curl, chash),
        url=raw.url,
        canonical_url=curl,
        source=raw.source or "unknown",
        title=title,
        body=body,
        published=parse_date(raw.published),
        fetched=parse_date(raw.fetched) or now_iso(),
        content_hash=chash,
        language=raw.language or None,
        origin=raw.origin,
    )


class ParseArticles(beam.PTransform):
    """RawArticle → Article. Returns ``(articles, dead_letters)``."""

    def __init__(self, settings: InputSettings):
        super().__init__()
        self._settings = settings

    def expand(self, raw):
        from transforms.deadletters import apply_stage

        settings = self._settings

        def make():
            return lambda r: [to_article(r, settings)]

        return apply_stage(raw, "Parse", "parse", make)
