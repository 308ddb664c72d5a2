"""The analyst's search language, shared by every store backend.

A query string is parsed once into a small AST (``Term``, ``Phrase``, ``And``,
``Or``, ``Not``); each backend renders that AST into its own syntax. The
SQLite store uses :func:`to_fts5`; a search-server backend walks the same
nodes to build a ``bool`` query (``And`` → ``must``/``must_not``, ``Or`` →
``should`` with ``minimum_should_match: 1``, ``Phrase`` → ``match_phrase``,
``Term`` with ``prefix`` → ``match_phrase_prefix`` or ``prefix``).

Syntax::

    peskov lavrov            implicit AND
    peskov AND lavrov        the same; AND, OR and NOT are operators only in capitals
    "new start" OR snv       "quoted phrases" keep word order
    ankara NOT sport         NOT subtracts; so does a leading minus: ankara -sport
    (peskov OR lavrov) talks parentheses group
    verhandl*                prefix: a trailing star matches any word starting so
    title:naryshkin          restrict a word, "phrase" or (group) to title or body

Precedence, tightest first: NOT (and ``-``), AND (and juxtaposition), OR.
Lower-case ``and``/``or``/``not`` are ordinary words. Words without a letter or
digit (``-``, ``!!!``, ``*``) are dropped because no index can find them.
A query must keep something to find: ``-sport`` alone or ``a OR NOT b`` are
errors, since neither SQLite FTS5 nor a relevance ranking can start from
"everything except".

Filters are not part of the string; they travel next to it in
:class:`SearchQuery`.

:func:`fold` defines when two spellings are the same word (case, Latin
accents, ß/ss, ё/е, ł/l, typographic quotes and dashes). The SQLite store
indexes and queries folded text; alert and topic phrases
(``transforms/alerts.py``) use the same character table.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import date, datetime, time, timedelta, timezone
from typing import Callable, Iterator, Union

from core.errors import NewswatchError

FIELDS = ("title", "body")
OPERATORS = ("AND", "OR", "NOT")
MAX_LIMIT = 1000
SORTS = ("relevance", "date")


class QueryError(NewswatchError):
    """A search request is invalid (bad filter value, limit, date)."""

    code = "bad_query"


class QuerySyntaxError(QueryError):
    """The query string cannot be parsed; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, query: str, position: int, *, hint: str | None = None):
        self.query = query
        self.position = max(0, min(position, len(query)))
        super().__init__(f"query syntax error at position {self.position}: {message}", hint=hint)

    def pointer(self) -> str:
        """The query with a caret under the problem, for a terminal."""
        return f"{self.query}\n{' ' * self.position}^"


# --- text folding --------------------------------------------------------------
#
# One notion of "the same word" for search and for alert phrases: case, Latin
# accents (é = e, ł = l, ß = ss), ё = е, typographic apostrophes and quotes,
# hyphens and dashes (word separators) and combining marks do not matter.

HYPHENS = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe58\ufe63\uff0d"
APOSTROPHES = "\u2019\u2018\u02bc\u02b9\u0060\u00b4\u2032"
# Double quotation marks separate words like spaces do: ЧВК «Вагнер» = ЧВК "Вагнер" = ЧВК Вагнер.
QUOTES = "\"\u00ab\u00bb\u201a\u201c\u201d\u201e\u201f\u2039\u203a"
COMBINING = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
VANISHING = "\u00ad\u200b\u200c\u200d\u2060\ufeff"  # soft hyphen and zero-width characters
FOLD_EXPAND = {"ß": "ss", "ẞ": "SS", "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st",
               "œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE"}


@functools.lru_cache(maxsize=1)
def fold_table() -> dict[int, str]:
    """The one-to-one part of folding (offsets survive it): separators, apostrophes, accents, ё."""
    table: dict[int, str] = {}
    for cp in range(0x3001):
        if chr(cp).isspace():
            table[cp] = " "
    for ch in HYPHENS + QUOTES:
        table[ord(ch)] = " "
    for ch in APOSTROPHES:
        table[ord(ch)] = "'"
    for lo, hi in ((0x00C0, 0x0250), (0x1E00, 0x1F00)):
        for cp in range(lo, hi):
            d = unicodedata.normalize("NFD", chr(cp))
            if len(d) > 1 and d[0].isascii() and d[0].isalpha() and all(unicodedata.combining(c) for c in d[1:]):
                table[cp] = d[0]
    table.update({ord(k): v for k, v in {
        "ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "đ": "d", "Đ": "D", "ı": "i", "İ": "I",
        "ё": "е", "Ё": "Е", "ς": "σ", "ſ": "s",
        # Ukrainian/Belarusian і looks like Latin i and stands in for it in
        # roman numerals ("СНВ-ІІІ"); folding it the same way everywhere is harmless.
        "і": "i", "І": "I",
    }.items()})
    return {k: v for k, v in table.items() if chr(k) != v}


@functools.lru_cache(maxsize=1)
def _translator() -> tuple[re.Pattern, dict[str, str]]:
    # str.translate with a dict costs a Python lookup per character; substituting only
    # the characters that change is an order of magnitude faster on real text.
    table = {chr(k): v for k, v in fold_table().items()}
    return re.compile("[" + "".join(re.escape(c) for c in sorted(table)) + "]"), table


def fold_translate(text: str) -> str:
    """Apply :func:`fold_table` (same length, case kept)."""
    pattern, table = _translator()
    return pattern.sub(lambda m: table[m.group()], text)


_FOLD_LENGTH = re.compile("[" + VANISHING + "".join(FOLD_EXPAND) + COMBINING + "]")


def fold(text: str) -> str:
    """Text in search form: NFC, folded (see above), lower case. Offsets are not kept."""
    t = fold_translate(unicodedata.normalize("NFC", text))
    if _FOLD_LENGTH.search(t):
        t = "".join(FOLD_EXPAND.get(c, c) for c in t if not unicodedata.combining(c) and c not in VANISHING)
    return t.lower()


# --- AST --------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One word. ``prefix`` means it was written with a trailing ``*``."""

    text: str
    prefix: bool = False
    field: str | None = None
    pos: int = dc_field(default=0, compare=False)  # where it starts in the query, for messages

    def to_dict(self) -> dict:
        d = {"term": self.text}
        if self.prefix:
            d["prefix"] = True
        if self.field:
            d["field"] = self.field
        return d


@dataclass(frozen=True)
class Phrase:
    """A quoted sequence of words that must appear in this order, adjacent."""

    text: str
    field: str | None = None
    pos: int = dc_field(default=0, compare=False)  # where it starts in the query, for messages

    def to_dict(self) -> dict:
        d = {"phrase": self.text}
        if self.field:
            d["field"] = self.field
        return d


@dataclass(frozen=True)
class And:
    children: tuple["Node", ...]
    pos: int = dc_field(default=0, compare=False)  # where it starts in the query, for messages

    def to_dict(self) -> dict:
        return {"and": [c.to_dict() for c in self.children]}


@dataclass(frozen=True)
class Or:
    children: tuple["Node", ...]
    pos: int = dc_field(default=0, compare=False)  # where it starts in the query, for messages

    def to_dict(self) -> dict:
        return {"or": [c.to_dict() for c in self.children]}


@dataclass(frozen=True)
class Not:
    child: "Node"
    pos: int = dc_field(default=0, compare=False)  # where it starts in the query, for messages

    def to_dict(self) -> dict:
        return {"not": self.child.to_dict()}


Node = Union[Term, Phrase, And, Or, Not]


def leaves(node: Node, *, positive_only: bool = True) -> Iterator[Term | Phrase]:
    """The words and phrases of a query, e.g. for highlighting; negated ones are skipped by default."""
    if isinstance(node, (Term, Phrase)):
        yield node
    elif isinstance(node, Not):
        if not positive_only:
            yield from leaves(node.child, positive_only=False)
    else:
        for child in node.children:
            yield from leaves(child, positive_only=positive_only)


# --- tokenizer ----------------------------------------------------------------

_WORDY = re.compile(r"\w", re.UNICODE)


@dataclass(frozen=True)
class _Tok:
    kind: str  # WORD PHRASE LPAREN RPAREN AND OR NOT MINUS FIELD
    value: str
    pos: int


def _tokenize(q: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(q)
    while i < n:
        c = q[i]
        if c.isspace():
            i += 1
            continue
        if c == "(":
            toks.append(_Tok("LPAREN", c, i))
            i += 1
            continue
        if c == ")":
            toks.append(_Tok("RPAREN", c, i))
            i += 1
            continue
        if c == '"':
            start = i
            i += 1
            buf = []
            while i < n and q[i] != '"':
                if q[i] == "\\" and i + 1 < n and q[i + 1] in '"\\':
                    i += 1
                buf.append(q[i])
                i += 1
            if i >= n:
                raise QuerySyntaxError("unterminated quote", q, start, hint='close the phrase with another "')
            i += 1
            toks.append(_Tok("PHRASE", "".join(buf), start))
            continue
        if c in "-+" and i + 1 < n and not q[i + 1].isspace() and q[i + 1] not in ")-+":
            # "-word" negates, "+word" is an explicit (and redundant) AND; a
            # lone or doubled dash is punctuation and falls through as a word.
            if not toks or toks[-1].kind in ("LPAREN", "AND", "OR", "NOT", "MINUS", "FIELD") or q[i - 1].isspace():
                if c == "-":
                    toks.append(_Tok("MINUS", c, i))
                i += 1
                continue
        start = i
        while i < n and not q[i].isspace() and q[i] not in '()"':
            i += 1
        word = q[start:i]
        if word in OPERATORS:
            toks.append(_Tok(word, word, start))
            continue
        head, sep, rest = word.partition(":")
        if sep and head.lower() in FIELDS:
            if rest:
                toks.append(_Tok("FIELD", head.lower(), start))
                toks.append(_Tok("WORD", rest, start + len(head) + 1))
            elif i < n and q[i] in '"(':
                toks.append(_Tok("FIELD", head.lower(), start))
            else:
                raise QuerySyntaxError(f"'{head}:' needs a word, \"phrase\" or (group) right after it", q, start)
            continue
        toks.append(_Tok("WORD", word, start))
    return toks


# --- parser -------------------------------------------------------------------


def _join(kind, parts: list, start: int):
    """One node of ``kind`` (And/Or) over the parts that kept something, nested ones flattened."""
    kept = [p for p in parts if p is not None]
    if not kept:
        return None
    if len(kept) == 1:
        return kept[0]
    flat: list[Node] = []
    for p in kept:
        flat.extend(p.children if isinstance(p, kind) else (p,))
    return kind(tuple(flat), start)


class _Parser:
    def __init__(self, q: str):
        self.q = q
        self.toks = _tokenize(q)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def error(self, message: str, pos: int | None = None, hint: str | None = None) -> QuerySyntaxError:
        if pos is None:
            tok = self.peek()
            pos = tok.pos if tok else len(self.q)
        return QuerySyntaxError(message, self.q, pos, hint=hint)

    def parse(self) -> Node | None:
        if not self.toks:
            return None
        node = self.or_expr(None)
        tok = self.peek()
        if tok is not None:
            if tok.kind == "RPAREN":
                raise self.error("unbalanced ')'", hint="remove it or add a matching '('")
            raise self.error(f"unexpected {tok.value!r}")
        return node

    # Each level returns None when everything in it was dropped (punctuation only).
    def or_expr(self, fld: str | None) -> Node | None:
        start = self.peek().pos if self.peek() else len(self.q)
        parts = [self.and_expr(fld)]
        while self.peek() is not None and self.peek().kind == "OR":
            op = self.take()
            if self.peek() is None or self.peek().kind in ("OR", "AND", "RPAREN"):
                raise self.error("OR needs a word, \"phrase\" or (group) after it", op.pos)
            parts.append(self.and_expr(fld))
        return _join(Or, parts, start)

    def and_expr(self, fld: str | None) -> Node | None:
        tok = self.peek()
        if tok is None or tok.kind in ("OR", "AND", "RPAREN"):
            what = "the end of the query" if tok is None else repr(tok.value)
            raise self.error(f"expected a word, \"phrase\" or (group) before {what}")
        start = tok.pos
        parts = [self.unary(fld)]
        while True:
            tok = self.peek()
            if tok is None or tok.kind in ("OR", "RPAREN"):
                break
            if tok.kind == "AND":
                op = self.take()
                nxt = self.peek()
                if nxt is None or nxt.kind in ("OR", "AND", "RPAREN"):
                    raise self.error("AND needs a word, \"phrase\" or (group) after it", op.pos)
            parts.append(self.unary(fld))
        return _join(And, parts, start)

    def unary(self, fld: str | None) -> Node | None:
        tok = self.peek()
        if tok is not None and tok.kind in ("NOT", "MINUS"):
            op = self.take()
            nxt = self.peek()
            if nxt is None or nxt.kind in ("OR", "AND", "RPAREN"):
                raise self.error(f"{op.value} needs a word, \"phrase\" or (group) after it", op.pos)
            inner = self.unary(fld)
            if inner is None:
                return None
            if isinstance(inner, Not):
                return inner.child
            return Not(inner, op.pos)
        return self.atom(fld)

    def atom(self, fld: str | None) -> Node | None:
        tok = self.peek()
        if tok is None:
            raise self.error("expected a word, \"phrase\" or (group) at the end of the query")
        if tok.kind == "FIELD":
            self.take()
            if fld is not None and fld != tok.value:
                raise self.error(f"'{tok.value}:' inside a '{fld}:' group can never match", tok.pos)
            return self.atom(tok.value)
        if tok.kind == "LPAREN":
            self.take()
            if self.peek() is not None and self.peek().kind == "RPAREN":
                raise self.error("empty parentheses", tok.pos)
            if self.peek() is None:
                raise self.error("unbalanced '('", tok.pos, hint="add a matching ')'")
            node = self.or_expr(fld)
            close = self.peek()
            if close is None or close.kind != "RPAREN":
                raise self.error("unbalanced '('", tok.pos, hint="add a matching ')'")
            self.take()
            return node
        if tok.kind == "PHRASE":
            self.take()
            text = " ".join(tok.value.split())
            if not _WORDY.search(text):
                return None
            return Phrase(text, fld, tok.pos)
        if tok.kind == "WORD":
            self.take()
            text = tok.value
            prefix = text.endswith("*")
            text = text.rstrip("*")
            if not _WORDY.search(text):
                return None
            return Term(text, prefix, fld, tok.pos)
        raise self.error(f"unexpected {tok.value!r}")


def _positive(node: Node) -> bool:
    """Whether the node can be evaluated without an 'everything' set to subtract from."""
    if isinstance(node, (Term, Phrase)):
        return True
    if isinstance(node, Not):
        return False
    if isinstance(node, And):
        return any(_positive(c) for c in node.children)
    return all(_positive(c) for c in node.children)


def _check_negation(node: Node, q: str) -> None:
    if isinstance(node, Not):
        raise QuerySyntaxError(
            "NOT needs something to subtract from", q, node.pos, hint="combine it with a positive word, e.g. 'ankara -sport'"
        )
    if isinstance(node, Or):
        for child in node.children:
            if not _positive(child):
                bad = child if isinstance(child, Not) else next(
                    (c for c in getattr(child, "children", ()) if isinstance(c, Not)), child
                )
                raise QuerySyntaxError(
                    "NOT inside OR would match almost everything", q, bad.pos,
                    hint="put the NOT outside the OR: '(a OR b) NOT c'",
                )
            _check_negation(child, q)
    elif isinstance(node, And):
        if not _positive(node):
            raise QuerySyntaxError(
                "NOT needs something to subtract from", q, node.pos, hint="combine it with a positive word, e.g. 'ankara -sport'"
            )
        for child in node.children:
            if isinstance(child, Not):
                _check_inner(child.child, q)
            else:
                _check_negation(child, q)


def _check_inner(node: Node, q: str) -> None:
    """Inside a NOT anything positive goes; nested NOTs must still be anchored."""
    if isinstance(node, (Term, Phrase)):
        return
    _check_negation(node, q)


def parse(q: str) -> Node | None:
    """Parse a query string into an AST; None for a blank query (filters only).

    Raises QuerySyntaxError with the position of the problem.
    """
    if q is None or not q.strip():
        return None
    node = _Parser(q).parse()
    if node is None:
        raise QuerySyntaxError("the query has no searchable words", q, 0, hint="use letters or digits")
    _check_negation(node, q)
    return node


# --- SQLite FTS5 ----------------------------------------------------------------


def _fts5_string(text: str) -> str:
    # Inside double quotes FTS5 treats everything literally except the quote itself.
    return '"' + text.replace('"', '""') + '"'


def to_fts5(node: Node, *, fold: Callable[[str], str] | None = None) -> str:
    """Render the AST as an FTS5 MATCH expression; every word is quoted, so no input can break it.

    ``fold`` is applied to each word and phrase first, when the index holds folded text.
    """

    def render(n: Node) -> str:
        if isinstance(n, (Term, Phrase)):
            text = fold(n.text) if fold else n.text
            s = _fts5_string(text) + ("*" if isinstance(n, Term) and n.prefix else "")
            return f"{n.field} : {s}" if n.field else s
        if isinstance(n, Or):
            return "(" + " OR ".join(render(c) for c in n.children) + ")"
        if isinstance(n, And):
            pos = [c for c in n.children if not isinstance(c, Not)]
            neg = [c.child for c in n.children if isinstance(c, Not)]
            expr = render(pos[0]) if len(pos) == 1 else "(" + " AND ".join(render(c) for c in pos) + ")"
            for c in neg:
                expr = f"({expr} NOT {render(c)})"
            return expr
        raise QueryError(f"cannot render a lone NOT for FTS5: {n.to_dict()}")

    return render(node)


# --- the search request -----------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str | date | datetime | None, *, end_of_day: bool = False, now: datetime | None = None) -> datetime | None:
    """An aware UTC datetime from ISO 8601, a date, or a relative span like ``7d``/``24h``.

    Naive values are taken as UTC. A bare date is its first moment, or its last
    with ``end_of_day`` (so ``until=2022-11-10`` includes that whole day).
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime.combine(value, time.max if end_of_day else time.min, tzinfo=timezone.utc)
    text = str(value).strip()
    m = _RELATIVE.match(text)
    if m:
        return (now or datetime.now(timezone.utc)) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        if len(text) == 10:
            return parse_time(date.fromisoformat(text), end_of_day=end_of_day)
        return parse_time(datetime.fromisoformat(text.replace("z", "Z")))
    except ValueError:
        raise QueryError(
            f"not a date or time: {text!r}", hint="use ISO 8601 like 2022-11-10 or 2022-11-10T08:00:00Z, or a span like 7d or 24h"
        ) from None


def _str_list(name: str, value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out = []
    for v in value:
        if not isinstance(v, str) or not v.strip():
            raise QueryError(f"{name}: expected non-empty strings, got {v!r}")
        out.append(v.strip())
    return out


@dataclass
class SearchQuery:
    """One search request: the query string plus filters.

    Filter semantics: every id in ``entities`` must be present (AND: "articles
    naming both"); ``languages``, ``topics`` and ``sources`` each accept any of
    their values (OR). ``since``/``until`` bound the publication time
    (inclusive; articles without one use their fetch time). ``sort`` is
    ``relevance`` (rank, then newest) or ``date`` (newest first); a query
    without text is always sorted by date.
    """

    text: str = ""
    entities: list[str] = dc_field(default_factory=list)
    languages: list[str] = dc_field(default_factory=list)
    topics: list[str] = dc_field(default_factory=list)
    sources: list[str] = dc_field(default_factory=list)
    since: str | datetime | None = None
    until: str | datetime | None = None
    limit: int = 20
    offset: int = 0
    sort: str = "relevance"

    def __post_init__(self):
        self.text = self.text or ""
        self.entities = _str_list("entities", self.entities)
        self.languages = [v.lower() for v in _str_list("languages", self.languages)]
        self.topics = _str_list("topics", self.topics)
        self.sources = _str_list("sources", self.sources)
        if not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_LIMIT:
            raise QueryError(f"limit must be between 1 and {MAX_LIMIT}, got {self.limit!r}")
        if not isinstance(self.offset, int) or self.offset < 0:
            raise QueryError(f"offset must be 0 or more, got {self.offset!r}")
        if self.sort not in SORTS:
            raise QueryError(f"sort must be one of {', '.join(SORTS)}, got {self.sort!r}")
        since, until = self.since_dt, self.until_dt
        if since and until and since > until:
            raise QueryError(f"since ({since.isoformat()}) is after until ({until.isoformat()})")
        # Parse now so that a syntax error surfaces when the request is built.
        self._ast = parse(self.text)

    @property
    def ast(self) -> Node | None:
        """The parsed query string; None when there is no text (filters only)."""
        return self._ast

    @property
    def since_dt(self) -> datetime | None:
        return parse_time(self.since)

    @property
    def until_dt(self) -> datetime | None:
        return parse_time(self.until, end_of_day=True)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "entities": self.entities,
            "languages": self.languages,
            "topics": self.topics,
            "sources": self.sources,
            "since": self.since_dt.isoformat() if self.since_dt else None,
            "until": self.until_dt.isoformat() if self.until_dt else None,
            "limit": self.limit,
            "offset": self.offset,
            "sort": self.sort,
        }
