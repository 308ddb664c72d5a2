"""Text cleaning: strip HTML, decode entities, Unicode NFC and tidy whitespace.

Paragraph breaks survive (as one blank line) because snippets and NER read
better with them; every other run of whitespace becomes one space.
"""

from __future__ import annotations

import html
import re
import unicodedata

from lxml import html as lxml_html
from lxml.etree import ParserError

_TAG_HINT = re.compile(r"<\s*/?\s*[a-zA-Z][^>]*>")
_BLOCK_TAGS = ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "blockquote", "section", "article", "pre")
_DROP_TAGS = ("script", "style", "noscript", "template", "iframe", "svg", "head")
# Zero-width and bidi control characters that break matching but carry no text.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u202a\u202b\u202c\u202d\u202e"), None)
_SPACES = re.compile(r"[^\S\n]+")
_BLANKS = re.compile(r"\n\s*\n+")


def looks_like_html(text: str) -> bool:
    return bool(_TAG_HINT.search(text))


def html_to_text(markup: str) -> str:
    """Visible text of an HTML fragment or page, with block elements as paragraphs."""
    try:
        root = lxml_html.fromstring(markup)
    except (ParserError, ValueError):
        return re.sub(r"<[^>]+>", " ", markup)
    for bad in root.iter(*_DROP_TAGS):
        bad.drop_tree()
    for el in root.iter(*_BLOCK_TAGS):
        el.tail = "\n\n" + (el.tail or "")
        if el.tag == "br":
            el.tail = "\n" + el.tail[2:]
    return root.text_content()


def normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANKS.sub("\n\n", text)
    return text.strip()


def clean_text(text: str | None, *, is_html: bool | None = None) -> str:
    """Clean one field. ``is_html=None`` guesses from the content."""
    if not text:
        return ""
    if is_html or (is_html is None and looks_like_html(text)):
        text = html_to_text(text)
    # Entities can be double-escaped in feeds (&amp;quot;); unescape at most twice.
    for _ in range(2):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    text = "".join(ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return normalize_whitespace(text)


def clean_title(text: str | None, *, is_html: bool | None = None) -> str:
    """A title is one line."""
    return " ".join(clean_text(text, is_html=is_html).split())
