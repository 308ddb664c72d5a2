"""Article files on disk: folders or single files in, raw articles and dead letters out.

Formats, chosen by extension:

- ``.txt``: the seed format, a title line, a blank line, then the body. A
  file whose first line is not followed by a blank line is all body.
- ``.json``: one article object, a list of them, or an object wrapping the
  list (``{"articles": [...]}``).
- ``.jsonl`` / ``.ndjson``: one article object per line, read as a stream;
  a bad line dead-letters only itself (its origin is ``path:line``).
- ``.html`` / ``.htm``: main text, title, date and canonical URL extracted
  with trafilatura, with a plain lxml fallback.

Other extensions (the seeds folder also holds YAML resources) are skipped
and counted. Folders are walked recursively in sorted order, hidden entries
skipped, so a run over the same folder is deterministic.

Bad input becomes a ``DeadLetter`` with the payload kept: ``too_large``,
``bad_encoding`` (payload in base64), ``bad_json``, ``empty``, ``bad_record``,
``not_found``, ``unreadable``.

Text that is not UTF-8 (or UTF-16/32 with a byte-order mark) is decoded with
a declared charset (HTML ``<meta>``) or a careful guess: the guess is taken
only when every equally likely charset gives the same text, and is recorded
in ``meta`` (``encoding_guessed``). Ambiguous bytes are dead-lettered.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from connectors.base import PREVIEW_BYTES, Record, dead, declared_charset, decode_bytes, payload_of, preview_of, utcnow
from core.errors import RecordError
from core.records import RawArticle
from core.settings import InputSettings

log = logging.getLogger(__name__)

STAGE = "files.read"
DEAD = "dead"

TEXT_SUFFIXES = frozenset({".txt"})
JSON_SUFFIXES = frozenset({".json"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
SUFFIXES = TEXT_SUFFIXES | JSON_SUFFIXES | JSONL_SUFFIXES | HTML_SUFFIXES

# Record field names seen in news exports, in order of preference.
_TITLE_KEYS = ("title", "headline")
_BODY_KEYS = ("body", "text", "content", "content_text", "content_html", "html", "article", "maintext", "description", "summary")
_URL_KEYS = ("url", "link", "href", "canonical_url")
_DATE_KEYS = ("published", "date", "pubDate", "pub_date", "published_at", "publishedAt", "date_published", "datePublished", "date_publish", "created_at")
_SOURCE_KEYS = ("source", "source_name", "site", "sitename", "publisher")
_LANG_KEYS = ("language", "lang")
_ID_KEYS = ("guid", "id", "_id", "uuid")
_HTML_BODY_KEYS = ("content_html", "html")
_LIST_KEYS = ("articles", "items", "entries", "records", "results", "data")
_KNOWN_KEYS = frozenset((*_TITLE_KEYS, *_BODY_KEYS, *_URL_KEYS, *_DATE_KEYS, *_SOURCE_KEYS, *_LANG_KEYS, *_ID_KEYS, "content_type"))

_HTML_TAG = re.compile(r"</?(?:p|div|br|span|a|h[1-6]|ul|ol|li|strong|em|b|i|blockquote|figure|img|table)\b[^>]*>", re.IGNORECASE)
_HTML_LANG = re.compile(rb"<html[^>]*\blang\s*=\s*[\"']?([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)*)", re.IGNORECASE)
_BOILERPLATE_TAGS = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "template", "iframe")


# --- listing ----------------------------------------------------------------


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def iter_files(path: str | os.PathLike) -> Iterator[Path]:
    """Every file under ``path`` (or ``path`` itself), sorted, hidden entries skipped."""
    root = Path(path)
    if root.is_file():
        yield root
        return
    for p in sorted(root.rglob("*")):
        if p.is_file() and not _hidden(p, root):
            yield p


def is_article_file(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


# --- mapping ----------------------------------------------------------------


def _first(record: dict, keys: Iterable[str]) -> tuple[str | None, Any]:
    for key in keys:
        value = record.get(key)
        if value not in (None, "", [], {}):
            return key, value
    return None, None


def _as_text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    # Paragraph lists are common in exports.
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    raise RecordError(f"field {what!r} must be text, got {type(value).__name__}", code="bad_record")


def _as_date(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Epoch seconds, or milliseconds from JavaScript exports.
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            raise RecordError(f"date {value!r} is out of range", code="bad_record") from None
    if isinstance(value, str):
        # Normalised downstream; kept as written here.
        return value.strip() or None
    raise RecordError(f"date must be text or a number, got {type(value).__name__}", code="bad_record")


def looks_like_html(text: str | None) -> bool:
    return bool(text) and _HTML_TAG.search(text) is not None


def record_to_article(record: Any, origin: str, meta: dict[str, Any]) -> RawArticle:
    """Map one JSON object to a RawArticle; raises RecordError (bad_record, empty)."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}", code="bad_record")
    title_key, title_value = _first(record, _TITLE_KEYS)
    body_key, body_value = _first(record, _BODY_KEYS)
    if title_key is None and body_key is None:
        present = any(k in record for k in (*_TITLE_KEYS, *_BODY_KEYS))
        if present:
            raise RecordError("record has empty title and body", code="empty")
        raise RecordError(
            f"record has no title or body field (keys: {sorted(record)[:12]})",
            hint=f"use one of {list(_TITLE_KEYS)} and one of {list(_BODY_KEYS)}",
            code="bad_record",
        )
    title = _as_text(title_value, title_key or "title")
    body = _as_text(body_value, body_key or "body")
    if not body or not body.strip():
        raise RecordError("record has no body", code="empty")
    source_value = _first(record, _SOURCE_KEYS)[1]
    # NewsAPI-style {"id": ..., "name": ...} sources.
    if isinstance(source_value, dict):
        source_value = source_value.get("name") or source_value.get("id")
    content_type = record.get("content_type")
    if content_type not in ("html", "text"):
        content_type = "html" if body_key in _HTML_BODY_KEYS or looks_like_html(body) else "text"
    extra = {k: v for k, v in record.items() if k not in _KNOWN_KEYS}
    article_meta = dict(meta)
    if extra:
        article_meta["extra"] = extra
    guid = _first(record, _ID_KEYS)[1]
    return RawArticle(
        source=_as_text(source_value, "source") or "file",
        url=_as_text(_first(record, _URL_KEYS)[1], "url"),
        title=" ".join(title.split()) if title else None,
        body=body,
        published=_as_date(_first(record, _DATE_KEYS)[1]),
        fetched=utcnow(),
        language=_as_text(_first(record, _LANG_KEYS)[1], "language"),
        content_type=content_type,
        origin=origin,
        guid=str(guid) if guid is not None else None,
        meta=article_meta,
    )


# --- formats ----------------------------------------------------------------


def parse_text(text: str, origin: str, meta: dict[str, Any]) -> RawArticle:
    """The seed format: title line, blank line, body.

    Without the blank line the whole text is body. A single line is a title
    without a body.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    if len(lines) >= 2 and not lines[1].strip():
        title, body = lines[0].strip(), "\n".join(lines[2:]).strip()
    elif len(lines) == 1:
        title, body = lines[0].strip(), ""
    else:
        title, body = None, "\n".join(lines).strip()
    if not body:
        raise RecordError("file has a title but no body" if title else "file has no text", code="empty")
    return RawArticle(source="file", title=title, body=body, fetched=utcnow(), content_type="text", origin=origin, meta=meta)


def _fallback_html(text: str) -> tuple[str | None, str]:
    """Title and visible text without trafilatura: drop boilerplate elements, keep the main block."""
    import lxml.html

    try:
        root = lxml.html.document_fromstring(text)
    except (ValueError, lxml.etree.ParserError):
        return None, ""
    for bad in root.xpath("|".join(f"//{t}" for t in _BOILERPLATE_TAGS)):
        bad.drop_tree()
    title_el = root.find(".//title")
    h1 = root.find(".//h1")
    title = title_el.text_content().strip() if title_el is not None else ""
    if not title and h1 is not None:
        title = h1.text_content().strip()
    main = next(iter(root.xpath("//article") or root.xpath("//main") or root.xpath("//body") or [root]))
    blocks = [" ".join(el.text_content().split()) for el in main.iter("p", "h1", "h2", "h3", "li", "blockquote", "pre")]
    body = "\n".join(b for b in blocks if b) or " ".join(main.text_content().split())
    return title or None, body


def parse_html(data: bytes, origin: str, meta: dict[str, Any]) -> RawArticle:
    """Main text, title, date and URL of an HTML page."""
    import trafilatura

    decoded = decode_bytes(data, declared=declared_charset(data))
    meta = {**meta, **decoded.meta()}
    lang = _HTML_LANG.search(data[:4096])
    doc = None
    try:
        doc = trafilatura.bare_extraction(
            decoded.text,
            with_metadata=True,
            include_comments=False,
            include_tables=True,
            # Site navigation is never article text; without this, a page
            # with no article yields its menu through the baseline fallback.
            prune_xpath=["//nav", "//footer", "//aside"],
            # Only dates the page states about itself; the extensive search
            # picks up any date in the text.
            date_extraction_params={"extensive_search": False, "original_date": True},
        )
    except Exception as exc:  # noqa: BLE001 - a crash in the extractor falls back to the plain route
        log.warning("trafilatura failed origin=%s error=%r", origin, exc)
    title = body = None
    if doc is not None and (doc.text or "").strip():
        title, body = doc.title, doc.text
        meta["extracted_by"] = "trafilatura"
    else:
        title, body = _fallback_html(decoded.text)
        meta["extracted_by"] = "lxml"
    title = " ".join(title.split()) if title else None
    body = (body or "").strip()
    # trafilatura repeats the headline as the first line of the text.
    if title and body.split("\n", 1)[0].strip() == title:
        body = body.split("\n", 1)[1].strip() if "\n" in body else ""
    if not body:
        raise RecordError("HTML page has no main text", code="empty")
    return RawArticle(
        source=(doc.sitename if doc is not None and doc.sitename else "file"),
        url=doc.url if doc is not None else None,
        title=title,
        body=body,
        published=doc.date if doc is not None else None,
        fetched=utcnow(),
        language=lang.group(1).decode("ascii").lower() if lang else None,
        content_type="text",
        origin=origin,
        meta=meta,
    )


def _letter(exc: RecordError, payload: str, origin: str) -> Record:
    return dead(STAGE, exc.code, str(exc), payload, origin, type(exc).__name__)


def _decode_payload(data: bytes, exc: RecordError) -> str:
    # Undecodable bytes are kept exactly, as base64.
    if exc.code == "bad_encoding":
        return "base64:" + base64.b64encode(data).decode("ascii")
    return payload_of(data)


def _read_json(data: bytes, origin: str, meta: dict[str, Any]) -> Iterator[Record]:
    try:
        decoded = decode_bytes(data, guess=False)
    except RecordError as exc:
        yield _letter(exc, _decode_payload(data, exc), origin)
        return
    try:
        doc = json.loads(decoded.text)
    except json.JSONDecodeError as exc:
        yield dead(STAGE, "bad_json", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", decoded.text, origin, "JSONDecodeError")
        return
    if isinstance(doc, dict) and not any(k in doc for k in (*_TITLE_KEYS, *_BODY_KEYS)):
        # Wrapped exports such as NewsAPI's {"status": ..., "articles": [...]}.
        wrapped = next((doc[k] for k in _LIST_KEYS if isinstance(doc.get(k), list)), None)
        if wrapped is not None:
            doc = wrapped
    records = doc if isinstance(doc, list) else [doc]
    if not records:
        yield dead(STAGE, "empty", "JSON list has no records", decoded.text, origin)
        return
    for i, record in enumerate(records):
        # Items of a list get their index so that a dead letter points at one.
        where = f"{origin}#{i}" if isinstance(doc, list) else origin
        try:
            yield record_to_article(record, where, meta)
        except RecordError as exc:
            yield _letter(exc, json.dumps(record, ensure_ascii=False), where)


def _read_jsonl(path: Path, origin: str, settings: InputSettings, meta: dict[str, Any]) -> Iterator[Record]:
    limit = settings.max_article_bytes
    records = 0
    with path.open("rb") as f:
        lineno = 0
        while True:
            raw = f.readline(limit + 1)
            if not raw:
                break
            lineno += 1
            where = f"{origin}:{lineno}"
            if len(raw) > limit and not raw.endswith(b"\n"):
                # Skip the rest of the line without holding it in memory.
                total = len(raw)
                while True:
                    more = f.readline(PREVIEW_BYTES)
                    total += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                yield dead(STAGE, "too_large", f"line {lineno} is {total} bytes, over input.max_article_bytes={limit}",
                           preview_of(raw, total), where)
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            records += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield dead(STAGE, "bad_encoding", f"line {lineno} is not UTF-8 ({exc.reason} at byte {exc.start})",
                           "base64:" + base64.b64encode(raw).decode("ascii"), where, "UnicodeDecodeError")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield dead(STAGE, "bad_json", f"invalid JSON at line {lineno} column {exc.colno}: {exc.msg}", text.rstrip("\r\n"), where, "JSONDecodeError")
                continue
            try:
                yield record_to_article(record, where, meta)
            except RecordError as exc:
                yield _letter(exc, text.rstrip("\r\n"), where)
    if not records:
        yield dead(STAGE, "empty", "file has no records", "", origin)


def read_file(path: str | os.PathLike, settings: InputSettings) -> Iterator[Record]:
    """The records of one article file; unknown extensions yield nothing."""
    path = Path(path)
    origin = str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        return
    try:
        st = path.stat()
        meta: dict[str, Any] = {"path": origin, "mtime": datetime.fromtimestamp(st.st_mtime, tz=timezone.utc).isoformat(timespec="seconds")}
        if suffix in JSONL_SUFFIXES:
            # Line by line: the size limit applies to each record, not the file.
            yield from _read_jsonl(path, origin, settings, meta)
            return
        if st.st_size > settings.max_article_bytes:
            with path.open("rb") as f:
                head = f.read(PREVIEW_BYTES)
            yield dead(STAGE, "too_large", f"{origin} is {st.st_size} bytes, over input.max_article_bytes={settings.max_article_bytes}",
                       preview_of(head, st.st_size), origin)
            return
        data = path.read_bytes()
        if not data.strip():
            yield dead(STAGE, "empty", "file is empty", payload_of(data), origin)
            return
        if suffix in JSON_SUFFIXES:
            yield from _read_json(data, origin, meta)
            return
        try:
            if suffix in HTML_SUFFIXES:
                yield parse_html(data, origin, meta)
            else:
                decoded = decode_bytes(data)
                yield parse_text(decoded.text, origin, {**meta, **decoded.meta()})
        except RecordError as exc:
            yield _letter(exc, _decode_payload(data, exc), origin)
    except OSError as exc:
        yield dead(STAGE, "unreadable", f"cannot read {origin}: {exc.strerror or exc}", "", origin, type(exc).__name__)


def read_path(path: str | os.PathLike, settings: InputSettings) -> Iterator[Record]:
    """Every record of a file or of every article file under a folder, in sorted order."""
    root = Path(path)
    if not root.exists():
        yield dead(STAGE, "not_found", f"no such file or folder: {root}", str(root), str(root))
        return
    files = skipped = articles = dead_letters = 0
    for file in iter_files(root):
        if not is_article_file(file):
            skipped += 1
            log.debug("file skipped path=%s reason=extension", file)
            continue
        files += 1
        for record in _guarded(file, settings):
            if isinstance(record, RawArticle):
                articles += 1
            else:
                dead_letters += 1
            yield record
    log.info("files path=%s files=%d skipped=%d articles=%d dead=%d", root, files, skipped, articles, dead_letters)


def _guarded(file: Path, settings: InputSettings) -> Iterator[Record]:
    """One file's records; an unexpected error becomes a dead letter for that file only."""
    try:
        yield from read_file(file, settings)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop a folder
        log.exception("file read failed path=%s", file)
        yield dead(STAGE, f"unexpected:{type(exc).__name__}", repr(exc), str(file), str(file), type(exc).__name__)


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


class FileSource:
    """Files and folders as a resumable :class:`connectors.base.Source`.

    The position maps each file read to its mtime and size; a later poll
    reads only files that are new or changed since.
    """

    def __init__(self, paths: Iterable[str | os.PathLike], settings: InputSettings, position: dict[str, Any] | None = None):
        self._paths = [Path(p) for p in paths]
        self._settings = settings
        self._seen: dict[str, str] = dict((position or {}).get("files", {}))

    def poll(self) -> Iterator[Record]:
        for root in self._paths:
            if not root.exists():
                yield dead(STAGE, "not_found", f"no such file or folder: {root}", str(root), str(root))
                continue
            for file in iter_files(root):
                if not is_article_file(file):
                    continue
                try:
                    stamp = _stamp(file)
                except OSError:
                    continue
                if self._seen.get(str(file)) == stamp:
                    continue
                yield from _guarded(file, self._settings)
                self._seen[str(file)] = stamp

    def position(self) -> dict[str, Any]:
        return {"files": dict(self._seen)}

    def next_poll_s(self) -> float | None:
        return None


# --- Beam -------------------------------------------------------------------


class _ListFilesFn(beam.DoFn):
    def __init__(self):
        self._skipped = Metrics.counter("newswatch", "files.skipped")

    def process(self, path: str):
        root = Path(path)
        if not root.exists():
            yield beam.pvalue.TaggedOutput(DEAD, dead(STAGE, "not_found", f"no such file or folder: {root}", path, path))
            return
        for file in iter_files(root):
            if is_article_file(file):
                yield str(file)
            else:
                self._skipped.inc()
                log.debug("file skipped path=%s reason=extension", file)


class _ReadFileFn(beam.DoFn):
    def __init__(self, settings: InputSettings):
        self._settings = settings
        self._files = Metrics.counter("newswatch", "files.read")
        self._records = Metrics.counter("newswatch", "files.records")
        self._dead = Metrics.counter("newswatch", "files.dead")

    def process(self, path: str):
        self._files.inc()
        for record in _guarded(Path(path), self._settings):
            if isinstance(record, RawArticle):
                self._records.inc()
                yield record
            else:
                self._dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD, record)


class ReadFromFiles(beam.PTransform):
    """Read article files and folders; returns ``(articles, dead)`` PCollections.

    Folders are listed at run time, then the file list is reshuffled so that
    files are read in parallel.
    """

    def __init__(self, paths: Iterable[str | os.PathLike], settings: InputSettings, label: str | None = None):
        super().__init__(label)
        self._paths = [str(p) for p in paths]
        self._settings = settings

    def expand(self, pbegin):
        listed = (
            pbegin
            | "Paths" >> beam.Create(self._paths)
            | "List" >> beam.ParDo(_ListFilesFn()).with_outputs(DEAD, main="files")
        )
        read = (
            listed.files
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadFileFn(self._settings)).with_outputs(DEAD, main="articles")
        )
        dead_letters = (listed[DEAD], read[DEAD]) | "Dead" >> beam.Flatten()
        return read.articles, dead_letters
