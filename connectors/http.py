"""The HTTP fetch boundary: one bounded, conditional, size-capped GET with retries.

Every network read of a feed goes through :func:`fetch`. It sends the
User-Agent and the conditional headers (ETag, Last-Modified), streams the
body and stops at ``FetchSettings.max_bytes``, and classifies failures:

- transient (timeouts, refused connections, 408, 429, 5xx) raise
  :class:`TransientFetchError` and are retried through ``core.retry.retry_call``
  up to ``FetchSettings.retries`` times, honouring ``Retry-After``;
- permanent (other 4xx, too large, bad URL, TLS failures, redirect loops)
  raise :class:`PermanentFetchError` at once.

Both are ``RecordError`` subclasses with a stable ``code``, so a caller can
dead-letter them directly. A ``Retry-After`` longer than the fetch's time
budget is not slept through: the error carries it so the poller can wait.
"""

from __future__ import annotations

import email.utils
import logging
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import Callable
from urllib.parse import urlsplit

import requests
import urllib3

from core.errors import RecordError
from core.retry import Backoff, PermanentError, TransientError, retry_call
from core.settings import FetchSettings

log = logging.getLogger(__name__)

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/rdf+xml, "
    "application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)
_CHUNK = 64 * 1024
DEFAULT_BACKOFF = Backoff()
# Statuses that may succeed on a later try; every other 4xx will not.
_TRANSIENT_4XX = {408, 425, 429}


class FetchError(RecordError):
    """A fetch failed. ``code`` is stable: timeout, connection, http_status, too_large, bad_url, tls."""

    code = "fetch_failed"

    def __init__(self, message: str, *, url: str, code: str, status: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint, code=code)
        self.url = url
        self.status = status


class TransientFetchError(FetchError, TransientError):
    """May succeed later; ``retry_after`` is the server's wish in seconds, when it said one."""

    def __init__(self, message: str, *, url: str, code: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, url=url, code=code, status=status)
        self.retry_after = retry_after


class PermanentFetchError(FetchError, PermanentError):
    """Will fail the same way again; not retried."""


@dataclass
class FetchResult:
    url: str
    final_url: str
    status: int
    content: bytes
    headers: dict[str, str]  # lower-cased names
    etag: str | None
    last_modified: str | None
    not_modified: bool
    retry_after: float | None
    elapsed_s: float
    attempts: int = 1
    redirects: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PermanentFetchError(f"not an http(s) URL: {url!r}", url=url, code="bad_url", hint="feeds are http(s) URLs or local paths")


def _request_headers(settings: FetchSettings, etag: str | None, last_modified: str | None) -> dict[str, str]:
    headers = {"User-Agent": settings.user_agent, "Accept": ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    return headers


def _classify_status(url: str, resp: requests.Response) -> FetchError:
    status = resp.status_code
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    message = f"HTTP {status} {resp.reason or ''} from {resp.url}".replace("  ", " ")
    if status in _TRANSIENT_4XX or 500 <= status <= 599:
        return TransientFetchError(message, url=url, code="http_status", status=status, retry_after=retry_after)
    return PermanentFetchError(message, url=url, code="http_status", status=status)


def _body_chunks(resp: requests.Response):
    """Decoded body chunks as they arrive, so the caller can check its budget between them."""
    raw = resp.raw
    if not hasattr(raw, "read1"):
        # urllib3 1.x: blocks per 64 KB chunk, so the budget is checked less often.
        yield from resp.iter_content(_CHUNK)
        return
    try:
        while True:
            chunk = raw.read1(_CHUNK, decode_content=True)
            if not chunk:
                return
            yield chunk
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ReadTimeout(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc


def _read_capped(url: str, resp: requests.Response, max_bytes: int, budget_s: float, started: float) -> bytes:
    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PermanentFetchError(
            f"response declares {declared} bytes, over the {max_bytes}-byte cap", url=url, code="too_large", status=resp.status_code
        )
    chunks: list[bytes] = []
    size = 0
    for chunk in _body_chunks(resp):
        size += len(chunk)
        if size > max_bytes:
            raise PermanentFetchError(
                f"response exceeds the {max_bytes}-byte cap", url=url, code="too_large", status=resp.status_code,
                hint="raise fetch.max_bytes if this feed is legitimately large",
            )
        # The read timeout applies per socket read; this bounds a server
        # that trickles bytes forever.
        if time.monotonic() - started > budget_s:
            raise TransientFetchError(f"response body not complete after {budget_s:.1f}s", url=url, code="timeout")
        chunks.append(chunk)
    return b"".join(chunks)


def _fetch_once(
    url: str, settings: FetchSettings, session: requests.Session, etag: str | None, last_modified: str | None
) -> FetchResult:
    started = time.monotonic()
    try:
        resp = session.get(
            url,
            headers=_request_headers(settings, etag, last_modified),
            timeout=(settings.timeout_s, settings.timeout_s),
            stream=True,
            allow_redirects=True,
        )
    except requests.exceptions.SSLError as exc:
        raise PermanentFetchError(f"TLS failure for {url}: {exc}", url=url, code="tls") from exc
    except requests.exceptions.Timeout as exc:
        raise TransientFetchError(f"timed out fetching {url}: {exc}", url=url, code="timeout") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        raise TransientFetchError(f"cannot connect to {url}: {exc}", url=url, code="connection") from exc
    except requests.exceptions.TooManyRedirects as exc:
        raise PermanentFetchError(f"too many redirects from {url}", url=url, code="redirect_loop") from exc
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as exc:
        raise PermanentFetchError(f"bad URL {url!r}: {exc}", url=url, code="bad_url") from exc
    with resp:
        headers = {k.lower(): v for k, v in resp.headers.items()}
        retry_after = parse_retry_after(headers.get("retry-after"))
        redirects = [r.headers.get("Location", "") for r in resp.history]
        if resp.status_code == 304:
            return FetchResult(
                url=url, final_url=resp.url, status=304, content=b"", headers=headers,
                etag=headers.get("etag") or etag, last_modified=headers.get("last-modified") or last_modified,
                not_modified=True, retry_after=retry_after, elapsed_s=time.monotonic() - started, redirects=redirects,
            )
        if not 200 <= resp.status_code < 300:
            raise _classify_status(url, resp)
        try:
            content = _read_capped(url, resp, settings.max_bytes, 2 * settings.timeout_s, started)
        except requests.exceptions.ContentDecodingError as exc:
            raise PermanentFetchError(f"cannot decode the compressed body of {url}: {exc}", url=url, code="bad_body") from exc
        except requests.exceptions.Timeout as exc:
            raise TransientFetchError(f"timed out reading the body of {url}: {exc}", url=url, code="timeout") from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientFetchError(f"body of {url} cut short: {exc}", url=url, code="connection") from exc
        return FetchResult(
            url=url, final_url=resp.url, status=resp.status_code, content=content, headers=headers,
            etag=headers.get("etag"), last_modified=headers.get("last-modified"), not_modified=False,
            retry_after=retry_after, elapsed_s=time.monotonic() - started, redirects=redirects,
        )


def fetch(
    url: str,
    settings: FetchSettings,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    session: requests.Session | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """GET ``url`` with conditional headers, a size cap and transient retries.

    Returns a :class:`FetchResult` (``not_modified`` for a 304). Raises
    :class:`PermanentFetchError` or, once retries are spent,
    :class:`TransientFetchError`. Without a ``session`` a new one is used and
    closed; pass one to reuse connections.
    """
    check_url(url)
    attempts = 0

    def attempt() -> FetchResult:
        nonlocal attempts
        attempts += 1
        return _fetch_once(url, settings, session or own, etag, last_modified)

    started = time.monotonic()
    own = requests.Session() if session is None else None
    try:
        result = retry_call(
            attempt,
            attempts=settings.retries + 1,
            backoff=backoff,
            what=f"fetch {url}",
            sleep=sleep,
            # Each try may take up to two timeouts (connect/read, then the
            # body budget), so a longer Retry-After is left to the poller.
            deadline_s=2 * settings.timeout_s * (settings.retries + 1),
        )
    except FetchError as exc:
        log.info("fetch failed url=%s code=%s status=%s attempts=%d elapsed_s=%.2f", url, exc.code, exc.status, attempts, time.monotonic() - started)
        raise
    finally:
        if own is not None:
            own.close()
    result.attempts = attempts
    result.elapsed_s = time.monotonic() - started
    log.debug(
        "fetch url=%s status=%d bytes=%d not_modified=%s attempts=%d elapsed_s=%.2f",
        url, result.status, len(result.content), result.not_modified, attempts, result.elapsed_s,
    )
    return result


def http_date(ts: float) -> str:
    """An RFC 7231 date, as Last-Modified and If-Modified-Since use."""
    return email.utils.formatdate(ts, usegmt=True)
