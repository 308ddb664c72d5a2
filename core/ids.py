"""Stable identifiers: canonical URLs, content hashes and derived ids."""

from __future__ import annotations

import hashlib
import unicodedata
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that only track a click and never change the content.
_TRACKING_PREFIXES = ("utm_", "mc_", "pk_", "at_", "ga_")
_TRACKING_NAMES = {"fbclid", "gclid", "dclid", "msclkid", "yclid", "igshid", "ref", "ref_src", "cmpid", "ocid", "rss", "feature"}


def sha256_hex(text: str | bytes) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def stable_id(*parts: str, length: int = 24) -> str:
    """A short deterministic id from parts, joined unambiguously."""
    return sha256_hex("\x1f".join(parts))[:length]


def canonical_url(url: str | None) -> str | None:
    """Normalise a URL so that trivially different links to one page are equal.

    Lower-cases scheme and host, drops default ports, fragments, tracking
    parameters and a trailing slash, and sorts the remaining query. Returns
    None for anything that is not an absolute http(s) URL.
    """
    if not url:
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if host.startswith("www."):
        host = host[4:]
    port = parts.port if parts.port not in (None, 80, 443) else None
    netloc = f"{host}:{port}" if port else host
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith(_TRACKING_PREFIXES) and k.lower() not in _TRACKING_NAMES
    ]
    path = parts.path or "/"
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/")
    # Both schemes serve the same article; keep one.
    return urlunsplit(("https", netloc, path, urlencode(sorted(query)), ""))


def content_hash(title: str, body: str) -> str:
    """Hash of the normalised text, insensitive to case and whitespace."""
    norm = unicodedata.normalize("NFC", f"{title}\n{body}").casefold()
    return sha256_hex(" ".join(norm.split()))


def article_id(canonical: str | None, chash: str) -> str:
    """The article id: from the canonical URL when there is one, else the content."""
    if canonical:
        return stable_id("url", canonical)
    return stable_id("content", chash)
