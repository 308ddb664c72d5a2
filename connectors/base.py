"""What every source promises, and the helpers its records share.

A source makes one bounded pass at a time (``poll``), yielding ``RawArticle``
records and ``DeadLetter`` records for input it could not use. It reports a
resumable ``position`` (a feed's ETag and Last-Modified, the files already
read) that a restart hands back, and says when it wants to be polled again.
It never blocks forever: every wait it does is bounded by its settings.

The helpers here turn raw bytes into text (or a clear ``bad_encoding``
error) and build dead letters whose payload keeps the input whole.
"""

from __future__ import annotations

import base64
import codecs
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Protocol, Union, runtime_checkable

from core.errors import RecordError
from core.records import DeadLetter, RawArticle

log = logging.getLogger(__name__)

Record = Union[RawArticle, DeadLetter]

# How much of an oversized input a dead letter keeps.
PREVIEW_BYTES = 64 * 1024


@runtime_checkable
class Source(Protocol):
    """A resumable producer of raw articles and dead letters."""

    def poll(self) -> Iterable[Record]:
        """One bounded pass over what is new since the last position."""

    def position(self) -> dict[str, Any]:
        """JSON-serialisable state; pass it back to the constructor to resume."""

    def next_poll_s(self) -> float | None:
        """Seconds until the next useful poll, or None when the source is exhausted."""


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def dead(stage: str, reason: str, detail: str, payload: str, origin: str | None, error_class: str | None = None) -> DeadLetter:
    return DeadLetter(stage=stage, reason=reason, detail=detail, payload=payload, origin=origin, at=utcnow(), error_class=error_class)


def payload_of(data: bytes) -> str:
    """Bytes as dead-letter text: UTF-8 when it is, else ``base64:`` so nothing is lost."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode("ascii")


def preview_of(data: bytes, total: int) -> str:
    """The start of an oversized input, with a note saying how much was cut."""
    head = data[:PREVIEW_BYTES].decode("utf-8", "replace")
    return f"{head}\n[newswatch: truncated, showing the first {min(len(data), PREVIEW_BYTES)} of {total} bytes]"


# --- decoding -------------------------------------------------------------

_BOMS = (
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

_XML_DECL_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_HTML_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)

# A guessed charset is used only when every equally plausible candidate
# decodes the bytes to the same text: single-byte Latin charsets are often
# indistinguishable (cp1250 vs cp1252), and a confident wrong guess silently
# corrupts names that the alerts match on.
_MAX_GUESS_CHAOS = 0.1
_CHAOS_TIE = 0.01
# Only charsets that web pages and feeds really use (the WHATWG Encoding
# Standard's legacy encodings); the detector also proposes DOS and Mac code
# pages that fit random bytes.
_WEB_CHARSETS = frozenset(
    codecs.lookup(name).name
    for name in (
        "cp866", "iso8859-2", "iso8859-3", "iso8859-4", "iso8859-5", "iso8859-6", "iso8859-7", "iso8859-8",
        "iso8859-10", "iso8859-13", "iso8859-14", "iso8859-15", "iso8859-16", "koi8-r", "koi8-u", "mac-roman",
        "mac-cyrillic", "cp874", "tis-620", "cp1250", "cp1251", "cp1252", "cp1253", "cp1254", "cp1255", "cp1256",
        "cp1257", "cp1258", "latin-1", "gbk", "gb2312", "gb18030", "big5", "big5hkscs", "euc-jp", "iso2022-jp",
        "shift-jis", "cp932", "euc-kr", "cp949",
    )
)


@dataclass
class Decoded:
    text: str
    encoding: str
    guessed: bool = False
    candidates: list[str] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        if not self.guessed:
            return {"encoding": self.encoding}
        return {"encoding": self.encoding, "encoding_guessed": True, "encoding_candidates": self.candidates}


def bom_encoding(data: bytes) -> str | None:
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    return None


def declared_charset(data: bytes) -> str | None:
    """The charset an XML declaration or an HTML ``<meta>`` names, if Python knows it."""
    head = data[:4096]
    m = _XML_DECL_ENCODING.match(head) or _HTML_META_CHARSET.search(head)
    if not m:
        return None
    name = m.group(1).decode("ascii", "replace")
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _canonical(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def guess_charset(data: bytes) -> tuple[str | None, list[str]]:
    """A charset guess and the tied candidates; (None, candidates) when it is ambiguous."""
    from charset_normalizer import from_bytes

    matches = [m for m in from_bytes(data) if m.chaos <= _MAX_GUESS_CHAOS and _canonical(m.encoding) in _WEB_CHARSETS]
    if not matches:
        return None, []
    best = min(m.chaos for m in matches)
    tied = [m for m in matches if m.chaos <= best + _CHAOS_TIE]
    names = [m.encoding for m in tied]
    texts = {str(m) for m in tied}
    if len(texts) != 1:
        return None, names
    return tied[0].encoding, names


def decode_bytes(data: bytes, *, declared: str | None = None, guess: bool = True) -> Decoded:
    """Decode text: BOM, then UTF-8, then a declared charset, then a careful guess.

    Raises ``RecordError(code="bad_encoding")`` when none of them gives text.
    """
    bom = bom_encoding(data)
    if bom:
        try:
            return Decoded(data.decode(bom), bom)
        except UnicodeDecodeError as exc:
            raise RecordError(f"text has a {bom} byte-order mark but does not decode: {exc}", code="bad_encoding") from None
    try:
        return Decoded(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError as exc:
        utf8_error = exc
    if declared:
        try:
            return Decoded(data.decode(declared), declared)
        except (UnicodeDecodeError, LookupError):
            pass
    candidates: list[str] = []
    if guess:
        name, candidates = guess_charset(data)
        if name:
            log.debug("charset guessed encoding=%s candidates=%s", name, candidates)
            return Decoded(data.decode(name), name, guessed=True, candidates=candidates)
    hint = f"ambiguous charset, candidates {candidates}" if candidates else "save it as UTF-8"
    raise RecordError(f"not valid UTF-8 ({utf8_error.reason} at byte {utf8_error.start})", hint=hint, code="bad_encoding")
