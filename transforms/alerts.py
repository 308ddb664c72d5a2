"""Alert rules: load and validate ``seeds/alert-rules.yaml``, match articles, emit ``Alert`` records.

A rule is metadata (``id``, ``name``, ``description``, ``severity``,
``enabled``, ``languages``) plus exactly one condition. A condition is one of

* ``phrase: "New START"`` or a list of phrases (any of them),
* ``concept: <id>`` / ``entity: <id>`` (or lists): the article's linked
  entities (``Article.entities``, set by ``transforms/entities.py`` before
  alerts run) include that canonical id. This module never matches names
  itself; the watchlist and concept linker own that.
* ``any: [...]``, ``all: [...]``, ``none: [...]`` combining conditions.

Leaf conditions take ``field: title|body|any`` (default ``any``); phrases take
``case_sensitive``.

Phrase matching (also used by ``transforms/topics.py``):

* whole words, Unicode-aware: "Peskow" does not match inside "Peskowa";
* whitespace, line breaks, hyphens, dashes and double quotation marks are
  all one separator, so "New  START", "SNV-III", "SNV III" and "SNV–III"
  are the same phrase, and so are ЧВК «Вагнер» and ЧВК Вагнер;
* case-insensitive, ignoring Latin accents (é = e, ł = l) and ё/е, with
  ß = ss;
* **case, by default, is automatic per word**: a word the rule writes in
  capitals (an acronym of two or more letters: START, NATO, СНВ, III) must
  appear in capitals, every other word matches in any case. So "New START"
  matches "new START" but not "a new start for the city marathon".
  ``case_sensitive: true`` makes every word exact, ``false`` none. In shouted
  all-caps text case says nothing, so a case-sensitive word never matches
  there;
* a trailing ``*`` matches any word ending (``переговор*``), a leading one
  any word beginning (``*sanktion*`` finds "Wirtschaftssanktionen").

All phrases of all rules sit in one Aho-Corasick automaton, so one pass over
the article finds every phrase whatever the number of rules; only rules with
a matched phrase or entity are then evaluated.

An alert's ``matches`` list every phrase and entity that satisfied the rule
(title first, then body, by offset); its ``snippet`` is ~200 characters
around the first body match (the title is in ``Alert.title`` already), the
match marked «like this».

The Beam stage :class:`MatchAlerts` returns ``(articles, alerts, dead)``:
articles pass through unchanged (the input PCollection itself, so alerting
never delays or drops an article), ``alerts`` holds ``Alert`` records and
``dead`` the dead letters of articles whose matching failed.
"""

from __future__ import annotations

import bisect
import difflib
import functools
import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, NamedTuple

import ahocorasick
import apache_beam as beam
import yaml
from apache_beam.metrics import Metrics
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from core.errors import ResourceError
from core.query import COMBINING, FOLD_EXPAND, VANISHING, fold_translate
from core.records import Alert, AlertMatch, Article, Entity

log = logging.getLogger(__name__)

SNIPPET_CHARS = 200
MAX_MATCHES = 50
MARKS = ("«", "»")

# --- text normalisation ----------------------------------------------------------

# What changes length, each found by its own regex (a single alternation is several
# times slower, since only a plain character class gets the fast scan): runs of
# spaces, characters that vanish (soft hyphen, zero-width) or expand, and
# combining marks (folded together with the letter before them).
_RUNS = re.compile(r"  +")
_RARE = re.compile("[" + VANISHING + "".join(FOLD_EXPAND) + "]")
_MARKS_RE = re.compile("[" + COMBINING + "]+")


def _length_changes(t: str) -> list[tuple[int, int, str]]:
    """(start, end, replacement) for every length-changing spot of translated text, in order."""
    spots = [(m.start(), m.end(), " ") for m in _RUNS.finditer(t)]
    spots += [(m.start(), m.end(), FOLD_EXPAND.get(m.group(), "")) for m in _RARE.finditer(t)]
    for m in _MARKS_RE.finditer(t):
        s = max(0, m.start() - 1)
        composed = fold_translate(unicodedata.normalize("NFC", t[s : m.end()]))
        spots.append((s, m.end(), _MARKS_RE.sub("", composed)))
    spots.sort()
    kept, last = [], 0
    for s, e, rep in spots:
        if s >= last:  # a mark right after an expanded letter: the first spot wins
            kept.append((s, e, rep))
            last = e
    return kept


class NormText:
    """A text in matching form, with a map back to offsets in the original.

    ``norm`` keeps case; ``fold`` is ``norm`` lower-cased and has the same
    length (``lower`` is one-to-one once İ is mapped), so offsets are shared.
    """

    __slots__ = ("original", "norm", "fold", "_starts", "_regions", "_deltas")

    def __init__(self, text: str):
        self.original = text
        t = fold_translate(text)
        self._starts: list[int] = []
        self._regions: list[tuple[int, int, int, int]] = []  # (n_start, n_len, o_start, o_len)
        self._deltas: list[int] = []
        spots = _length_changes(t) if ("  " in t or _RARE.search(t) or _MARKS_RE.search(t)) else ()
        if spots:
            pieces: list[str] = []
            last = n = delta = 0
            for s, e, rep in spots:
                pieces.append(t[last:s])
                n += s - last
                pieces.append(rep)
                self._starts.append(n)
                self._regions.append((n, len(rep), s, e - s))
                delta += (e - s) - len(rep)
                self._deltas.append(delta)
                n += len(rep)
                last = e
            pieces.append(t[last:])
            t = "".join(pieces)
        self.norm = t
        self.fold = t.lower()

    def _orig(self, n: int, end: bool) -> int:
        """Original offset of normalised position ``n``; with ``end``, the offset just after that character."""
        i = bisect.bisect_right(self._starts, n) - 1
        if i < 0:
            return n + (1 if end else 0)
        n_start, n_len, o_start, o_len = self._regions[i]
        if n < n_start + n_len:
            return o_start + o_len if end else o_start
        return n + self._deltas[i] + (1 if end else 0)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Original offsets of the normalised span ``[start, end)``."""
        if not self._regions:
            return start, end
        if end <= start:
            at = self._orig(start, False)
            return at, at
        return self._orig(start, False), self._orig(end - 1, True)


def normalize(text: str) -> NormText:
    return NormText(text)


def _is_word(c: str) -> bool:
    return c.isalnum()


def _is_acronym(token: str) -> bool:
    cased = [c for c in token if c.lower() != c.upper()]
    return len(cased) >= 2 and all(c.isupper() for c in cased)


def _shouted(norm: str, start: int, end: int, radius: int = 40) -> bool:
    """True when the text around a span is all capitals, where case cannot tell START from start."""
    context = norm[max(0, start - radius) : start] + norm[end : end + radius]
    # str.isupper is true only when there is no lower-case letter at all: cheap, and the common case is False.
    return context.isupper() and sum(map(str.isalpha, context)) >= 6


# --- phrase matcher --------------------------------------------------------------


@dataclass(frozen=True)
class PhrasePattern:
    phrase: str  # as written in the resource file
    key: str  # folded core, without stars
    exact: tuple[str | None, ...]  # per word: the form required in the case-kept text, or None
    open_start: bool
    open_end: bool


class PhraseHit(NamedTuple):
    pattern: int
    start: int  # offsets in the original text
    end: int
    text: str


class PhraseMatcher:
    """Many phrases, one pass: an Aho-Corasick automaton over folded text plus boundary and case checks."""

    def __init__(self):
        self.patterns: list[PhrasePattern] = []
        self._ids: dict[tuple, int] = {}
        self._automaton: ahocorasick.Automaton | None = None

    def add(self, phrase: str, *, case_sensitive: bool | None = None) -> int:
        """Register a phrase; returns its pattern id (equal phrases share one). Raises ValueError if unusable."""
        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError("empty phrase")
        raw = phrase.strip()
        open_start, open_end = raw.startswith("*"), raw.endswith("*")
        core = raw.strip("*").strip()
        if "*" in core:
            raise ValueError(f"'*' is allowed only at the start or end of a phrase: {phrase!r}")
        norm = " ".join(NormText(core).norm.split())
        if not any(_is_word(c) for c in norm):
            raise ValueError(f"phrase {phrase!r} has no letters or digits")
        if (open_start or open_end) and sum(_is_word(c) for c in norm) < (4 if open_start else 3):
            raise ValueError(f"wildcard phrase {phrase!r} is too short to be useful (at least 3 letters, 4 with a leading '*')")
        words = norm.split(" ")
        if case_sensitive is None:
            exact = tuple(w if _is_acronym(w) else None for w in words)
        elif case_sensitive:
            exact = tuple(words)
        else:
            exact = tuple(None for _ in words)
        key = norm.lower()
        pattern = PhrasePattern(phrase, key, exact, open_start, open_end)
        ident = (key, exact, open_start, open_end)
        if ident not in self._ids:
            self._ids[ident] = len(self.patterns)
            self.patterns.append(pattern)
            self._automaton = None
        return self._ids[ident]

    def build(self) -> "PhraseMatcher":
        automaton = ahocorasick.Automaton()
        by_key: dict[str, list[int]] = {}
        for i, p in enumerate(self.patterns):
            by_key.setdefault(p.key, []).append(i)
        for key, ids in by_key.items():
            # Everything the hot loop needs, precomputed: (id, key length, check the
            # left boundary, check the right boundary, open start, open end, case check).
            automaton.add_word(key, tuple(
                (i, len(key), _is_word(key[0]) and not self.patterns[i].open_start,
                 _is_word(key[-1]) and not self.patterns[i].open_end,
                 self.patterns[i].open_start, self.patterns[i].open_end, any(self.patterns[i].exact))
                for i in ids
            ))
        if by_key:
            automaton.make_automaton()
        self._automaton = automaton
        return self

    def find(self, text: str | NormText) -> list[PhraseHit]:
        """Every occurrence of every pattern, in text order; offsets refer to the original text."""
        nt = text if isinstance(text, NormText) else NormText(text or "")
        if self._automaton is None:
            self.build()
        if not self.patterns or not nt.fold:
            return []
        fold, norm, original = nt.fold, nt.norm, nt.original
        n = len(fold)
        hits: list[PhraseHit] = []
        for last, entries in self._automaton.iter(fold):
            end = last + 1
            for pid, klen, check_start, check_end, open_start, open_end, exact in entries:
                start = end - klen
                if check_start and start > 0 and fold[start - 1].isalnum():
                    continue
                if check_end and end < n and fold[end].isalnum():
                    continue
                if exact and not self._case_ok(self.patterns[pid], norm, start, end):
                    continue
                s, e = start, end
                if open_start:
                    while s > 0 and fold[s - 1].isalnum():
                        s -= 1
                if open_end:
                    while e < n and fold[e].isalnum():
                        e += 1
                o_start, o_end = nt.span(s, e)
                hits.append(PhraseHit(pid, o_start, o_end, original[o_start:o_end]))
        hits.sort(key=lambda h: (h.start, -h.end, h.pattern))
        return hits

    @staticmethod
    def _case_ok(p: PhrasePattern, norm: str, start: int, end: int) -> bool:
        if _shouted(norm, start, end):
            return False
        words = norm[start:end].split(" ")
        if len(words) != len(p.exact):
            return False
        last = len(words) - 1
        for i, (got, want) in enumerate(zip(words, p.exact)):
            if want is None:
                continue
            # With a wildcard the edge word of the core is only part of the text's word.
            if (i == 0 and p.open_start and got.endswith(want)) or (i == last and p.open_end and got.startswith(want)):
                continue
            if got != want:
                return False
        return True


# --- resource loading helpers (shared with transforms/topics.py) --------------------


def load_yaml(path: str | Path, what: str) -> Any:
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResourceError(f"{what} file not found: {p}", hint=f"check settings resources ({what})") from None
    except yaml.YAMLError as exc:
        raise ResourceError(f"{p}: not valid YAML: {exc}") from None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def loc_path(loc: Iterable[Any]) -> str:
    """('all', 1, 'phrase', 0) -> 'all[1].phrase[0]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_errors(exc: ValidationError, fields_at: Callable[[tuple], Iterable[str]]) -> list[str]:
    """Pydantic errors as short 'where: what' lines, with a did-you-mean for unknown keys.

    ``fields_at(loc)`` lists the keys allowed in the mapping at ``loc``.
    """
    lines = []
    for err in exc.errors():
        # Skip pydantic's internal union/function tags in locations.
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x.startswith("function-"))))
        kind = err["type"]
        if kind == "extra_forbidden":
            key, where = loc[-1], loc[:-1]
            text = f"unknown field '{key}'" + did_you_mean(key, fields_at(where))
        elif kind == "missing":
            key, where = loc[-1], loc[:-1]
            text = f"missing field '{key}'"
        else:
            where = loc
            msg = err["msg"]
            text = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        prefix = loc_path(where)
        lines.append(f"{prefix}: {text}" if prefix else text)
    return lines


def read_resource_ids(path: str | Path) -> dict[str, str]:
    """``{id: name}`` of a watchlist or concepts file (its ``entries``/``concepts`` list).

    Only the ids are read; the file's own loader validates the rest.
    """
    data = load_yaml(path, "resource")
    if not isinstance(data, dict):
        raise ResourceError(f"{path}: expected a mapping with a list of entries")
    ids: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    ids[item["id"]] = str(item.get("name") or item["id"])
    return ids


# --- rule schema -------------------------------------------------------------------

_KINDS = ("any", "all", "none", "phrase", "concept", "entity")
_LEAVES = ("phrase", "concept", "entity")


def _as_list(value):
    return [value] if isinstance(value, str) else value


class Condition(BaseModel):
    """One node of a rule's condition tree; exactly one of the kind keys is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    any: list["Condition"] | None = None
    all: list["Condition"] | None = None
    none: list["Condition"] | None = None
    phrase: list[str] | None = None
    concept: list[str] | None = None
    entity: list[str] | None = None
    field: Literal["title", "body", "any"] | None = None
    case_sensitive: bool | None = None

    @field_validator("phrase", "concept", "entity", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return _as_list(v)

    @field_validator("phrase", "concept", "entity")
    @classmethod
    def _not_blank(cls, v, info: ValidationInfo):
        if v is not None:
            what = "phrase" if info.field_name == "phrase" else "id"
            if not v:
                raise ValueError(f"empty list: give at least one {what}")
            if any(not item.strip() for item in v):
                raise ValueError(f"empty {what}")
        return v

    @field_validator("any", "all", "none")
    @classmethod
    def _not_empty(cls, v):
        if v is not None and not v:
            raise ValueError("empty list of conditions")
        return v

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in _KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            if not kinds:
                raise ValueError("needs one condition: " + ", ".join(_KINDS))
            raise ValueError(f"has {' and '.join(kinds)}; use one condition per mapping (combine them with all/any)")
        if self.case_sensitive is not None and kinds[0] != "phrase":
            raise ValueError("case_sensitive applies to phrase conditions only")
        if self.field is not None and kinds[0] not in _LEAVES:
            raise ValueError("field applies to phrase, concept and entity conditions only")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) is not None)


class Rule(Condition):
    """An alert rule: metadata plus one condition (the condition keys sit in the rule itself)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    name: str | None = None
    description: str = ""
    severity: Literal["info", "low", "medium", "high", "critical"] = "info"
    enabled: bool = True
    languages: list[str] | None = None

    @field_validator("languages", mode="before")
    @classmethod
    def _langs(cls, v):
        v = _as_list(v)
        if v is not None:
            bad = [x for x in v if not isinstance(x, str) or not re.fullmatch(r"[a-z]{2,3}", x)]
            if bad:
                raise ValueError(f"language codes are ISO 639 like 'de' or 'ru', got {bad}")
        return v

    @property
    def display_name(self) -> str:
        return self.name or self.id


_RULE_FIELDS = tuple(Rule.model_fields)
_CONDITION_FIELDS = tuple(Condition.model_fields)
_FILE_FIELDS = ("version", "rules")


# --- compiled rules ---------------------------------------------------------------


@dataclass(frozen=True)
class _Leaf:
    kind: str  # phrase | concept | entity
    terms: tuple[int, ...] | tuple[str, ...]  # pattern ids for phrases, canonical ids otherwise
    field: str  # title | body | any


@dataclass(frozen=True)
class _Group:
    op: str  # any | all | none
    children: tuple


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    tree: Any
    languages: frozenset[str] | None


@dataclass
class _Evidence:
    """What one article offers to the rules: phrase hits and linked entities, by field."""

    phrases: dict[int, list[tuple[str, PhraseHit]]]
    entities: dict[str, list[Entity]]


def _field_ok(want: str, field: str) -> bool:
    return want == "any" or want == field


def _eval(node, ev: _Evidence, matcher: PhraseMatcher) -> tuple[bool, list[AlertMatch]]:
    if isinstance(node, _Leaf):
        found: list[AlertMatch] = []
        if node.kind == "phrase":
            for pid in node.terms:
                for field, hit in ev.phrases.get(pid, ()):
                    if _field_ok(node.field, field):
                        found.append(AlertMatch(hit.text, field, hit.start, hit.end, matcher.patterns[pid].phrase, "phrase"))
        else:
            for cid in node.terms:
                for ent in ev.entities.get(cid, ()):
                    if _field_ok(node.field, ent.field):
                        found.append(AlertMatch(ent.text, ent.field, ent.start, ent.end, cid, node.kind))
        return bool(found), found
    results = [_eval(c, ev, matcher) for c in node.children]
    if node.op == "all":
        ok = all(r[0] for r in results)
        return ok, [m for r in results for m in r[1]] if ok else []
    if node.op == "any":
        return any(r[0] for r in results), [m for r in results if r[0] for m in r[1]]
    return not any(r[0] for r in results), []


def _satisfiable_without_evidence(node) -> bool:
    """Would the tree be true for an article that matches none of its leaves?"""
    if isinstance(node, _Leaf):
        return False
    values = [_satisfiable_without_evidence(c) for c in node.children]
    if node.op == "all":
        return all(values)
    if node.op == "any":
        return any(values)
    return not any(values)


def _leaf_keys(node) -> Iterable[tuple[str, Any]]:
    if isinstance(node, _Leaf):
        for t in node.terms:
            yield ("phrase" if node.kind == "phrase" else "id", t)
    else:
        for c in node.children:
            yield from _leaf_keys(c)


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_snippet(text: str, start: int, end: int, *, width: int = SNIPPET_CHARS, marks: tuple[str, str] = MARKS) -> str:
    """About ``width`` characters of ``text`` around ``[start, end)``, the match marked, cut at word boundaries."""
    room = max(0, width - (end - start))
    a = max(0, start - room // 2)
    b = min(len(text), end + (room - (start - a)))
    a = max(0, min(a, b - width))
    if a > 0:
        space = text.find(" ", a, start)
        a = space + 1 if space != -1 else a
    if b < len(text):
        space = text.rfind(" ", end, b)
        b = space if space != -1 else b
    body = f"{text[a:start]}{marks[0]}{text[start:end]}{marks[1]}{text[end:b]}"
    return ("…" if a > 0 else "") + " ".join(body.split()) + ("…" if b < len(text) else "")


def _compile(cond: Condition, matcher: PhraseMatcher, where: str):
    kind = cond.kind
    if kind in ("any", "all", "none"):
        return _Group(kind, tuple(_compile(c, matcher, f"{where}{kind}[{i}].") for i, c in enumerate(getattr(cond, kind))))
    field = cond.field or "any"
    if kind == "phrase":
        ids = []
        for i, phrase in enumerate(cond.phrase):
            try:
                ids.append(matcher.add(phrase, case_sensitive=cond.case_sensitive))
            except ValueError as exc:
                raise ValueError(f"{where}phrase[{i}]: {exc}") from None
        return _Leaf("phrase", tuple(ids), field)
    return _Leaf(kind, tuple(getattr(cond, kind)), field)


def compile_rule(rule: Rule, matcher: PhraseMatcher):
    """The rule's condition tree with its phrases registered in ``matcher``; ValueError says what is wrong."""
    tree = _compile(rule, matcher, "")
    if _satisfiable_without_evidence(tree):
        raise ValueError(
            "would fire on every article that matches none of its conditions"
            " — add a phrase, concept or entity condition outside 'none'"
        )
    return tree


class AlertEngine:
    """Compiled rules; :meth:`match` returns the alerts one article fires."""

    def __init__(self, rules: list[Rule], *, source: str = "<rules>"):
        self.source = source
        self.rules = list(rules)
        self.matcher = PhraseMatcher()
        self._compiled: list[CompiledRule] = []
        self._by_phrase: dict[int, set[int]] = {}
        self._by_id: dict[str, set[int]] = {}
        problems = []
        for rule in self.rules:
            try:
                tree = compile_rule(rule, self.matcher)
            except ValueError as exc:
                problems.append(f"rule '{rule.id}': {exc}")
                continue
            langs = frozenset(rule.languages) if rule.languages else None
            self._compiled.append(CompiledRule(rule, tree, langs))
            for kind, term in _leaf_keys(tree):
                (self._by_phrase if kind == "phrase" else self._by_id).setdefault(term, set()).add(len(self._compiled) - 1)
        if problems:
            raise _problems(source, problems)
        self.matcher.build()

    @property
    def enabled_rules(self) -> list[Rule]:
        return [c.rule for c in self._compiled if c.rule.enabled]

    def evidence(self, article: Article) -> _Evidence:
        phrases: dict[int, list[tuple[str, PhraseHit]]] = {}
        for field, text in (("title", article.title), ("body", article.body)):
            for hit in self.matcher.find(text or ""):
                phrases.setdefault(hit.pattern, []).append((field, hit))
        entities: dict[str, list[Entity]] = {}
        for ent in article.entities:
            if ent.canonical_id and ent.canonical_id in self._by_id:
                entities.setdefault(ent.canonical_id, []).append(ent)
        return _Evidence(phrases, entities)

    def match(self, article: Article, *, now: str | None = None) -> list[Alert]:
        """The alerts this article fires, in rule-file order; ids are deterministic (rule + article)."""
        ev = self.evidence(article)
        candidates: set[int] = set()
        for pid in ev.phrases:
            candidates |= self._by_phrase.get(pid, set())
        for cid in ev.entities:
            candidates |= self._by_id.get(cid, set())
        alerts = []
        fired_at = now or utcnow()
        for idx in sorted(candidates):
            compiled = self._compiled[idx]
            rule = compiled.rule
            if not rule.enabled:
                continue
            if compiled.languages is not None and (article.language or "") not in compiled.languages:
                continue
            ok, matches = _eval(compiled.tree, ev, self.matcher)
            if not ok:
                continue
            alerts.append(self._alert(rule, article, matches, fired_at))
        return alerts

    def _alert(self, rule: Rule, article: Article, matches: list[AlertMatch], fired_at: str) -> Alert:
        order = {"title": 0, "body": 1}
        unique = {}
        for m in matches:
            unique.setdefault((m.field, m.start, m.end, m.term), m)
        ordered = sorted(unique.values(), key=lambda m: (order.get(m.field, 2), m.start or 0, -(m.end or 0)))
        # Alert.title already shows the title, so the snippet prefers the first body match.
        first = next((m for m in ordered if m.field == "body"), ordered[0] if ordered else None)
        if first is not None and first.start is not None:
            text = article.body if first.field == "body" else article.title
            snippet = make_snippet(text, first.start, first.end)
        else:
            snippet = make_snippet(article.body, 0, 0)
        return Alert(
            id=Alert.make_id(rule.id, article.id),
            rule_id=rule.id,
            rule_name=rule.display_name,
            article_id=article.id,
            title=article.title,
            language=article.language,
            url=article.url,
            matches=ordered[:MAX_MATCHES],
            snippet=snippet,
            fired_at=fired_at,
            published=article.published,
            severity=rule.severity,
        )


def _problems(source: str, problems: list[str]) -> ResourceError:
    if len(problems) == 1:
        return ResourceError(f"{source}: {problems[0]}")
    return ResourceError(f"{source}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


def _rule_fields_at(loc: tuple) -> Iterable[str]:
    return _RULE_FIELDS if not loc else _CONDITION_FIELDS


def _check_ids(rule: Rule, known: dict[str, str], labels: str) -> list[str]:
    problems = []

    def walk(cond: Condition):
        kind = cond.kind
        if kind in ("any", "all", "none"):
            for c in getattr(cond, kind):
                walk(c)
        elif kind in ("concept", "entity"):
            for ident in getattr(cond, kind):
                if ident in known:
                    continue
                hint = did_you_mean(ident, known)
                if not hint:
                    # The writer may have used a name instead of the id.
                    by_name = {name.casefold(): i for i, name in known.items()}
                    close = difflib.get_close_matches(ident.casefold(), list(by_name), n=1, cutoff=0.5)
                    if close:
                        hint = f" — did you mean '{by_name[close[0]]}' ({known[by_name[close[0]]]})?"
                problems.append(f"rule '{rule.id}': {kind} '{ident}' is not defined in {labels}{hint}")

    walk(rule)
    return problems


def load_rules(
    path: str | Path,
    *,
    known_ids: dict[str, str] | None = None,
    known_from: str = "the watchlist or concepts",
) -> list[Rule]:
    """Read and validate a rule file; raises ResourceError naming the file, the rule and the field.

    ``known_ids`` (``{id: name}``) are the canonical ids a ``concept``/``entity``
    condition may use; None skips that check. Either kind of condition may
    name an id from either file: both are linked into ``Article.entities``.
    """
    source = str(path)
    data = load_yaml(path, "alert rules")
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict):
        raise ResourceError(f"{source}: expected a mapping with a 'rules' list")
    problems = []
    for key in data:
        if key not in _FILE_FIELDS:
            problems.append(f"unknown top-level field '{key}'" + did_you_mean(key, _FILE_FIELDS))
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list):
        problems.append("'rules' must be a list of rules")
        raise _problems(source, problems)
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    scratch = PhraseMatcher()
    for index, raw in enumerate(raw_rules):
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        label = f"rule '{raw_id}'" if isinstance(raw_id, str) else f"rule #{index + 1}"
        if not isinstance(raw, dict):
            problems.append(f"{label}: expected a mapping, got {type(raw).__name__}")
            continue
        if isinstance(raw_id, str):
            if raw_id in seen:
                problems.append(f"{label}: duplicate rule id (rules #{seen[raw_id]} and #{index + 1})")
                continue
            seen[raw_id] = index + 1
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            problems.extend(f"{label}: {line}" for line in describe_errors(exc, _rule_fields_at))
            continue
        if known_ids is not None:
            problems.extend(_check_ids(rule, known_ids, known_from))
        try:
            compile_rule(rule, scratch)
        except ValueError as exc:
            problems.append(f"{label}: {exc}")
            continue
        rules.append(rule)
    if problems:
        raise _problems(source, problems)
    return rules


def known_ids_from(paths: Iterable[str | Path | None]) -> tuple[dict[str, str] | None, str]:
    """Ids from the watchlist/concepts files that exist; (None, '') when none do."""
    ids: dict[str, str] = {}
    used = []
    for p in paths:
        if p and Path(p).exists():
            ids.update(read_resource_ids(p))
            used.append(str(p))
    return (ids, " or ".join(used)) if used else (None, "")


def load_engine(rules_path: str | Path, *, watchlist: str | Path | None = None, concepts: str | Path | None = None) -> AlertEngine:
    """Load, validate (ids against the watchlist and concepts files when they exist) and compile."""
    known, labels = known_ids_from([watchlist, concepts])
    if known is None and (watchlist or concepts):
        log.warning("alerts.ids_unchecked rules=%s reason=no_watchlist_or_concepts_file", rules_path)
    rules = load_rules(rules_path, known_ids=known, known_from=labels)
    return AlertEngine(rules, source=str(rules_path))


def engine_from_settings(settings) -> AlertEngine:
    r = settings.resources
    return load_engine(r.rules, watchlist=r.watchlist, concepts=r.concepts)


# --- Beam -------------------------------------------------------------------------


class _MatchFn:
    """The per-DoFn matching function: engine built once, counters per rule."""

    def __init__(self, rules: str, watchlist: str | None, concepts: str | None):
        self._engine = load_engine(rules, watchlist=watchlist, concepts=concepts)
        self._articles = Metrics.counter("newswatch", "alerts.articles")
        self._fired = {r.id: Metrics.counter("newswatch", f"alerts.fired.{r.id}") for r in self._engine.rules}

    def __call__(self, article: Article) -> list[Alert]:
        self._articles.inc()
        alerts = self._engine.match(article)
        for alert in alerts:
            self._fired[alert.rule_id].inc()
        return alerts


class MatchAlerts(beam.PTransform):
    """Articles → ``(articles, alerts, dead)``.

    ``articles`` is the input, unchanged; ``alerts`` are ``Alert`` records;
    ``dead`` holds a dead letter for each article whose matching failed (the
    article itself still flows on). Rules are validated when the pipeline is
    built, so a bad rule file stops the run before anything is read.
    Counters: ``alerts.articles`` and ``alerts.fired.<rule id>``.
    """

    def __init__(self, settings):
        super().__init__()
        r = settings.resources
        self._paths = (str(r.rules), str(r.watchlist) if r.watchlist else None, str(r.concepts) if r.concepts else None)
        engine = load_engine(self._paths[0], watchlist=self._paths[1], concepts=self._paths[2])
        log.info("alerts.rules file=%s rules=%d enabled=%d phrases=%d", r.rules, len(engine.rules),
                 len(engine.enabled_rules), len(engine.matcher.patterns))

    def expand(self, articles):
        from transforms.deadletters import apply_stage

        alerts, dead = apply_stage(articles, "Match", "alerts", functools.partial(_MatchFn, *self._paths))
        return articles, alerts, dead
