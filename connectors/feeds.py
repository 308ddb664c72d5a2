"""RSS, Atom, RDF, CDF and JSON Feed sources: feed bytes in, raw articles and dead letters out.

:func:`parse_feed` turns one feed document into ``RawArticle`` records (one
per usable entry) and ``DeadLetter`` records (unusable entries, documents that
are not feeds). Broken XML that still yields entries is used, with the
parser's complaint kept in ``meta["bozo"]``.

:func:`poll_feed` is one conditional poll of one feed (http(s), ``file://``
or a local path) with a :class:`FeedState` that carries the ETag,
Last-Modified and failure count between polls, so the long-running poller
resumes where it stopped and backs off a failing feed. A feed that cannot be
fetched becomes a dead letter, never an exception.

:class:`ReadFromFeeds` is the bounded Beam source over a list of feeds.
"""

from __future__ import annotations

import calendar
import html
import io
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

import apache_beam as beam
import feedparser
import requests
from apache_beam.metrics import Metrics

from connectors.base import Record, bom_encoding, dead, declared_charset, guess_charset, payload_of, preview_of, utcnow
from connectors.http import DEFAULT_BACKOFF, FetchError, PermanentFetchError, TransientFetchError, fetch, http_date
from core.records import DeadLetter, RawArticle
from core.retry import Backoff
from core.settings import FetchSettings

log = logging.getLogger(__name__)

STAGE_PARSE = "feeds.parse"
STAGE_FETCH = "feeds.fetch"
DEAD = "dead"

_HTML_TYPES = ("text/html", "application/xhtml+xml", "html", "xhtml")
# Bozo reasons that say nothing is wrong with the content itself.
_BENIGN_BOZO = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)
_TAG = re.compile(r"<[^>]*>")
_XML_DECL = re.compile(rb"^\s*<\?xml[^>]*\?>")
# The first element of the document is <html>, after any declaration, doctype and comments.
_HTML_PAGE = re.compile(rb"^\s*(?:<\?xml[^>]*>\s*)?(?:(?:<!--.*?-->|<!doctype[^>]*>)\s*)*<html\b", re.IGNORECASE | re.DOTALL)


# --- parsing --------------------------------------------------------------


def strip_html(text: str | None) -> str:
    """Visible text of an HTML fragment, whitespace collapsed (for titles and emptiness checks)."""
    if not text:
        return ""
    return " ".join(html.unescape(_TAG.sub(" ", text)).split())


def _iso_from_struct(t: time.struct_time | tuple | None) -> str | None:
    if not t:
        return None
    try:
        # feedparser's *_parsed values are UTC struct_times.
        return datetime.fromtimestamp(calendar.timegm(tuple(t)[:9]), tz=timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, ValueError, TypeError):
        return None


def _iso_from_rfc3339(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds")


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if host and host.startswith("www."):
        host = host[4:]
    return host or None


def _is_html_type(content_type: str | None) -> bool:
    return bool(content_type) and any(t == content_type.split(";")[0].strip().lower() for t in _HTML_TYPES)


def _json_default(value: Any) -> Any:
    if isinstance(value, time.struct_time):
        return _iso_from_struct(value)
    return str(value)


def _entry_payload(entry: Any) -> str:
    return json.dumps(entry, ensure_ascii=False, default=_json_default, sort_keys=True)


def _header(headers: dict | None, name: str) -> str | None:
    if not headers:
        return None
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


def _charset_param(content_type: str | None) -> str | None:
    if not content_type:
        return None
    m = re.search(r"charset\s*=\s*[\"']?([^\"';\s]+)", content_type, re.IGNORECASE)
    return m.group(1) if m else None


def _transcode_undeclared(data: bytes, headers: dict | None) -> tuple[bytes, dict[str, Any]]:
    """Re-encode a feed whose charset nobody declared (or declared wrongly) as UTF-8.

    feedparser falls back to windows-1252 for undeclared non-UTF-8 bytes,
    which turns KOI8-R or GB2312 feeds into mojibake. When a careful guess
    is unambiguous the feed is transcoded and its XML declaration rewritten;
    otherwise the bytes go to feedparser unchanged. A charset in the HTTP
    header wins and is left to feedparser.
    """
    if bom_encoding(data) or _charset_param(_header(headers, "content-type")):
        return data, {}
    try:
        data.decode("utf-8")
        return data, {}
    except UnicodeDecodeError:
        pass
    declared = declared_charset(data)
    if declared and declared not in ("utf-8", "utf-16", "utf-32"):
        try:
            data.decode(declared)
            return data, {}
        except (UnicodeDecodeError, LookupError):
            pass
    name, candidates = guess_charset(data)
    if not name:
        return data, {"encoding_candidates": candidates} if candidates else {}
    text = data.decode(name)
    body = _XML_DECL.sub(b"", text.encode("utf-8"), count=1)
    return b'<?xml version="1.0" encoding="utf-8"?>' + body, {
        "encoding": name, "encoding_guessed": True, "encoding_candidates": candidates,
    }


def _looks_like_json(data: bytes, headers: dict | None) -> bool:
    # The bytes decide before the header: servers mislabel feeds often.
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"{"):
        return True
    if head.startswith(b"<"):
        return False
    return "json" in (_header(headers, "content-type") or "").lower()


def parse_feed(data: bytes, origin: str, headers: dict | None = None, *, fetched: str | None = None) -> Iterator[Record]:
    """Yield one RawArticle per usable entry of a feed document, DeadLetters for the rest.

    ``origin`` is the feed's URL (or path); ``headers`` are the HTTP response
    headers, whose Content-Type charset feedparser honours.
    """
    fetched = fetched or utcnow()
    if not data.strip():
        yield dead(STAGE_PARSE, "malformed_feed", "empty document", "", origin)
        return
    if _looks_like_json(data, headers):
        yield from _parse_json_feed(data, origin, fetched)
        return
    data, encoding_meta = _transcode_undeclared(data, headers)
    response_headers = {k.lower(): v for k, v in (headers or {}).items()}
    # Only with real response headers: feedparser flags any header set
    # without a Content-Type as a non-XML response.
    if response_headers and urlsplit(origin).scheme in ("http", "https"):
        response_headers.setdefault("content-location", origin)
    try:
        # A stream, never bytes: feedparser treats bytes as a file name first.
        parsed = feedparser.parse(io.BytesIO(data), response_headers=response_headers)
    except Exception as exc:  # noqa: BLE001 - a parser crash is one bad document, not a pipeline failure
        log.warning("feed parser crashed origin=%s error=%r", origin, exc)
        yield dead(STAGE_PARSE, "malformed_feed", f"parser crashed: {exc!r}", payload_of(data), origin, type(exc).__name__)
        return
    bozo = parsed.get("bozo_exception") if parsed.get("bozo") else None
    benign = isinstance(bozo, _BENIGN_BOZO)
    if bozo is not None:
        log.info("feed bozo origin=%s entries=%d reason=%s", origin, len(parsed.entries), bozo)
    if not parsed.entries:
        if _HTML_PAGE.match(data[:8192]):
            yield dead(STAGE_PARSE, "not_a_feed", "the document is an HTML page, not a feed", payload_of(data), origin)
        elif bozo is not None and not benign:
            yield dead(STAGE_PARSE, "malformed_feed", f"no entries; parser said: {bozo}", payload_of(data), origin, type(bozo).__name__)
        else:
            log.debug("feed empty origin=%s version=%s", origin, parsed.get("version"))
        return
    feed = parsed.feed
    feed_title = strip_html(feed.get("title")) or None
    source = feed_title or _host(feed.get("link")) or _host(origin) or "feed"
    base = feed.get("link") or origin
    meta_base: dict[str, Any] = {"feed_title": feed_title, "feed_version": parsed.get("version") or None, "encoding": parsed.get("encoding")}
    meta_base.update(encoding_meta)
    if bozo is not None:
        meta_base["bozo"] = f"{type(bozo).__name__}: {bozo}"
    feed_language = feed.get("language") or response_headers.get("content-language")
    for entry in parsed.entries:
        try:
            yield _entry_record(entry, origin, source, base, feed_language, meta_base, fetched)
        except Exception as exc:  # noqa: BLE001 - one odd entry must not lose the others
            log.warning("feed entry failed origin=%s error=%r", origin, exc)
            yield dead(STAGE_PARSE, f"unexpected:{type(exc).__name__}", str(exc), _entry_payload(entry), origin, type(exc).__name__)


def _entry_body(entry: Any) -> tuple[str | None, str]:
    """The richest text of an entry and whether it is HTML."""
    candidates = []
    for content in entry.get("content") or []:
        if content.get("value"):
            candidates.append((content["value"], content.get("type")))
    summary = entry.get("summary")
    if summary:
        candidates.append((summary, (entry.get("summary_detail") or {}).get("type")))
    if not candidates:
        return None, "text"
    # Full content beats a teaser; the longest visible text is the fullest.
    value, ctype = max(candidates, key=lambda c: len(strip_html(c[0])))
    return value, "html" if _is_html_type(ctype) else "text"


def _entry_record(
    entry: Any, origin: str, source: str, base: str, feed_language: str | None, meta_base: dict, fetched: str
) -> Record:
    title_raw = entry.get("title")
    title_type = (entry.get("title_detail") or {}).get("type")
    title = (strip_html(title_raw) if _is_html_type(title_type) else " ".join((title_raw or "").split())) or None
    body, content_type = _entry_body(entry)
    if not title and not strip_html(body):
        return dead(STAGE_PARSE, "empty_entry", "entry has neither a title nor any text", _entry_payload(entry), origin)
    link = entry.get("link")
    if not link:
        link = next((l.get("href") for l in entry.get("links") or [] if l.get("rel") == "alternate" and l.get("href")), None)
    if link and not urlsplit(link).scheme:
        link = urljoin(base, link)
    published = _iso_from_struct(entry.get("published_parsed") or entry.get("updated_parsed") or entry.get("created_parsed"))
    meta = dict(meta_base)
    raw_date = entry.get("published") or entry.get("updated")
    if raw_date and not published:
        meta["published_raw"] = raw_date
    if entry.get("author"):
        meta["author"] = entry["author"]
    tags = [t.get("term") for t in entry.get("tags") or [] if t.get("term")]
    if tags:
        meta["tags"] = tags
    language = None
    for detail in [*(entry.get("content") or []), entry.get("summary_detail") or {}, entry.get("title_detail") or {}]:
        if detail.get("language"):
            language = detail["language"]
            break
    return RawArticle(
        source=source,
        url=link or None,
        title=title,
        body=body,
        published=published,
        fetched=fetched,
        language=(language or feed_language or None),
        content_type=content_type,
        origin=origin,
        guid=entry.get("id") or None,
        meta={k: v for k, v in meta.items() if v is not None},
    )


def _parse_json_feed(data: bytes, origin: str, fetched: str) -> Iterator[Record]:
    """JSON Feed 1.0/1.1 (https://jsonfeed.org), which feedparser 6 does not read."""
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        yield dead(STAGE_PARSE, "malformed_feed", f"not valid JSON: {exc}", payload_of(data), origin, type(exc).__name__)
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        yield dead(STAGE_PARSE, "not_a_feed", "JSON document without an 'items' list", payload_of(data), origin)
        return
    feed_title = strip_html(doc.get("title") if isinstance(doc.get("title"), str) else None) or None
    source = feed_title or _host(doc.get("home_page_url")) or _host(origin) or "feed"
    base = doc.get("home_page_url") or origin
    meta_base = {"feed_title": feed_title, "feed_version": "json" + str(doc.get("version", "")).rsplit("/", 1)[-1]}
    for item in doc["items"]:
        if not isinstance(item, dict):
            yield dead(STAGE_PARSE, "empty_entry", "JSON Feed item is not an object", json.dumps(item, ensure_ascii=False), origin)
            continue
        title = " ".join(str(item.get("title") or "").split()) or None
        if item.get("content_html"):
            body, content_type = str(item["content_html"]), "html"
        elif item.get("content_text"):
            body, content_type = str(item["content_text"]), "text"
        elif item.get("summary"):
            body, content_type = str(item["summary"]), "text"
        else:
            body, content_type = None, "text"
        if not title and not strip_html(body):
            yield dead(STAGE_PARSE, "empty_entry", "item has neither a title nor any text", json.dumps(item, ensure_ascii=False), origin)
            continue
        link = item.get("url") or item.get("external_url")
        if isinstance(link, str) and link and not urlsplit(link).scheme:
            link = urljoin(base, link)
        published = _iso_from_rfc3339(item.get("date_published")) or _iso_from_rfc3339(item.get("date_modified"))
        meta = dict(meta_base)
        if item.get("tags"):
            meta["tags"] = item["tags"]
        authors = item.get("authors") or ([item["author"]] if item.get("author") else [])
        names = [a.get("name") for a in authors if isinstance(a, dict) and a.get("name")]
        if names:
            meta["author"] = ", ".join(names)
        yield RawArticle(
            source=source,
            url=link if isinstance(link, str) and link else None,
            title=title,
            body=body,
            published=published,
            fetched=fetched,
            language=item.get("language") or doc.get("language"),
            content_type=content_type,
            origin=origin,
            guid=str(item["id"]) if item.get("id") is not None else None,
            meta={k: v for k, v in meta.items() if v is not None},
        )


# --- polling --------------------------------------------------------------


@dataclass
class FeedState:
    """What one feed's next poll needs to know: validators, health and backoff."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    final_url: str | None = None
    last_status: int | None = None
    last_checked: str | None = None
    last_success: str | None = None
    failures: int = 0
    permanent_failure: bool = False
    last_error: str | None = None
    retry_after: float | None = None
    entries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeedState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def next_poll_s(self, settings: FetchSettings) -> float:
        """Seconds until this feed is worth polling again."""
        if self.permanent_failure:
            return settings.max_interval_s
        if self.failures:
            backoff = min(settings.max_interval_s, settings.interval_s * 2 ** (self.failures - 1))
            # A server's Retry-After is a floor, even above our own cap.
            return max(backoff, self.retry_after or 0.0)
        return max(settings.interval_s, self.retry_after or 0.0)


def local_path(url_or_path: str) -> Path | None:
    """The file a ``file://`` URL or plain path names; None for anything else."""
    parts = urlsplit(url_or_path)
    if parts.scheme == "file":
        return Path(url2pathname(unquote(parts.path)))
    # One letter is a Windows drive, not a scheme.
    if not parts.scheme or len(parts.scheme) == 1:
        return Path(url_or_path)
    return None


def _failed(state: FeedState, settings: FetchSettings, letter: DeadLetter, *, permanent: bool, status: int | None = None,
            retry_after: float | None = None) -> tuple[FeedState, list[Record]]:
    state.failures += 1
    state.permanent_failure = permanent
    state.last_error = f"{letter.reason}: {letter.detail}"
    state.last_status = status
    state.retry_after = retry_after
    log.warning(
        "feed=%s status=%s reason=%s failures=%d next_poll_s=%.0f",
        state.url, status, letter.reason, state.failures, state.next_poll_s(settings),
    )
    return state, [letter]


def _fetch_letter(url: str, exc: FetchError) -> DeadLetter:
    if exc.code in ("too_large", "bad_url"):
        reason = exc.code
    elif isinstance(exc, TransientFetchError):
        reason = "feed_unavailable"
    else:
        reason = "feed_error"
    payload = json.dumps(
        {"url": url, "error": str(exc), "code": exc.code, "status": exc.status, "retry_after": getattr(exc, "retry_after", None)},
        ensure_ascii=False,
    )
    return dead(STAGE_FETCH, reason, str(exc), payload, url, type(exc).__name__)


def _poll_local(path: Path, state: FeedState, settings: FetchSettings, origin: str) -> tuple[FeedState, list[Record]]:
    try:
        st = path.stat()
    except OSError as exc:
        letter = dead(STAGE_FETCH, "feed_unavailable", f"cannot read {path}: {exc.strerror or exc}",
                      json.dumps({"url": origin, "error": str(exc)}), origin, type(exc).__name__)
        return _failed(state, settings, letter, permanent=False)
    # Like a web server's ETag: changes whenever the file does.
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    if state.etag == etag:
        state.last_status, state.failures, state.retry_after = 304, 0, None
        return state, []
    if st.st_size > settings.max_bytes:
        with path.open("rb") as f:
            head = f.read(64 * 1024)
        letter = dead(STAGE_FETCH, "too_large", f"{path} is {st.st_size} bytes, over fetch.max_bytes={settings.max_bytes}",
                      preview_of(head, st.st_size), origin)
        return _failed(state, settings, letter, permanent=True)
    try:
        data = path.read_bytes()
    except OSError as exc:
        letter = dead(STAGE_FETCH, "feed_unavailable", f"cannot read {path}: {exc}", json.dumps({"url": origin, "error": str(exc)}),
                      origin, type(exc).__name__)
        return _failed(state, settings, letter, permanent=False)
    records = list(parse_feed(data, origin))
    state.etag, state.last_modified = etag, http_date(st.st_mtime)
    return _succeeded(state, 200, records)


def _succeeded(state: FeedState, status: int, records: list[Record]) -> tuple[FeedState, list[Record]]:
    now = utcnow()
    state.last_status, state.last_success = status, now
    state.failures, state.permanent_failure, state.last_error, state.retry_after = 0, False, None, None
    state.entries = sum(isinstance(r, RawArticle) for r in records)
    return state, records


def poll_feed(
    url: str,
    state: FeedState | None,
    settings: FetchSettings,
    *,
    session: requests.Session | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[FeedState, list[Record]]:
    """Poll one feed once: a conditional fetch (or file read), then parse.

    Returns the updated state (a new copy; the given one is not changed) and
    the records. A 304 or an unchanged file gives no records. Fetch failures
    come back as one dead letter (``feed_unavailable`` when transient after
    retries, ``feed_error`` for other permanent failures, ``too_large``,
    ``bad_url``) with the state's failure count raised.
    """
    state = FeedState.from_dict(state.to_dict()) if state else FeedState(url=url)
    state.last_checked = utcnow()
    started = time.monotonic()
    path = local_path(url)
    if path is not None:
        state, records = _poll_local(path, state, settings, url)
    else:
        try:
            result = fetch(url, settings, etag=state.etag, last_modified=state.last_modified, session=session, backoff=backoff, sleep=sleep)
        except FetchError as exc:
            permanent = isinstance(exc, PermanentFetchError)
            return _failed(state, settings, _fetch_letter(url, exc), permanent=permanent, status=exc.status,
                           retry_after=getattr(exc, "retry_after", None))
        state.final_url = result.final_url if result.final_url != url else None
        state.etag = result.etag or state.etag
        state.last_modified = result.last_modified or state.last_modified
        if result.not_modified:
            state, records = _succeeded(state, 304, [])
        else:
            records = list(parse_feed(result.content, url, result.headers))
            state, records = _succeeded(state, result.status, records)
        state.retry_after = result.retry_after
    new = sum(isinstance(r, RawArticle) for r in records)
    log.info(
        "feed=%s status=%s new=%d dead=%d elapsed_s=%.2f",
        url, state.last_status, new, len(records) - new, time.monotonic() - started,
    )
    return state, records


def fetch_and_parse(url_or_path: str, settings: FetchSettings, *, session: requests.Session | None = None) -> list[Record]:
    """Read one feed unconditionally and return its records (dead letters included)."""
    _, records = poll_feed(url_or_path, None, settings, session=session)
    return records


class FeedSource:
    """One feed as a resumable :class:`connectors.base.Source`."""

    def __init__(self, url: str, settings: FetchSettings, state: dict[str, Any] | None = None,
                 session: requests.Session | None = None):
        self._settings = settings
        self._session = session
        self._state = FeedState.from_dict(state) if state else FeedState(url=url)

    def poll(self) -> Iterable[Record]:
        self._state, records = poll_feed(self._state.url, self._state, self._settings, session=self._session)
        return records

    def position(self) -> dict[str, Any]:
        return self._state.to_dict()

    def next_poll_s(self) -> float | None:
        return self._state.next_poll_s(self._settings)


# --- Beam -----------------------------------------------------------------


class _PollFeedFn(beam.DoFn):
    def __init__(self, settings: FetchSettings):
        self._settings = settings
        self._session: requests.Session | None = None
        self._feeds = Metrics.counter("newswatch", "feeds.polled")
        self._failed = Metrics.counter("newswatch", "feeds.failed")
        self._articles = Metrics.counter("newswatch", "feeds.articles")
        self._dead = Metrics.counter("newswatch", "feeds.dead")

    def setup(self):
        self._session = requests.Session()

    def teardown(self):
        if self._session is not None:
            self._session.close()

    def process(self, url: str):
        self._feeds.inc()
        try:
            state, records = poll_feed(url, None, self._settings, session=self._session)
        except Exception as exc:  # noqa: BLE001 - one feed's surprise must not stop the others
            log.exception("feed poll crashed feed=%s", url)
            records = [dead(STAGE_FETCH, f"unexpected:{type(exc).__name__}", repr(exc), json.dumps({"url": url}), url, type(exc).__name__)]
            state = None
        if state is None or state.failures:
            self._failed.inc()
        for record in records:
            if isinstance(record, RawArticle):
                self._articles.inc()
                yield record
            else:
                self._dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD, record)


class ReadFromFeeds(beam.PTransform):
    """Poll each feed once; returns ``(articles, dead)`` PCollections.

    The URL list is reshuffled so that feeds are fetched in parallel.
    """

    def __init__(self, urls: Iterable[str | os.PathLike], settings: FetchSettings, label: str | None = None):
        super().__init__(label)
        self._urls = [str(u) for u in urls]
        self._settings = settings

    def expand(self, pbegin):
        outputs = (
            pbegin
            | "FeedUrls" >> beam.Create(self._urls)
            | "Spread" >> beam.Reshuffle()
            | "Poll" >> beam.ParDo(_PollFeedFn(self._settings)).with_outputs(DEAD, main="articles")
        )
        return outputs.articles, outputs[DEAD]
