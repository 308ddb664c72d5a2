"""Watchlist and concept linking: find watched people, organisations and treaties in text.

Two YAML resources feed one engine: ``seeds/watchlist.yaml`` (people and
organisations with Wikidata ids) and ``seeds/concepts.yaml`` (treaties and
other concepts). :func:`load_entries` validates them; :class:`EntityLinker`
compiles every alias into Aho-Corasick automata over token sequences, so the
cost of matching grows with the text, not with the number of entries.

Matching runs in this order (see ``/work/shared/NER.md``):

1. **exact alias** on the casefolded words; acronyms (NATO, СНВ, START) must
   keep their case in the original text;
2. **folding key** (:func:`transforms.names.fold`): transliterations such as
   Naryschkin / Naryshkin / Нарышкин, plus given-name × surname combinations;
3. **inflection stem** for the text's language family: Нарышкина, Ławrowowi,
   Naryschkins;
4. **fuzzy surname** (rapidfuzz, high threshold) only next to the person's
   given name or near one of the person's role words.

A surname on its own links only with context: the article names the person
in full somewhere, or uses one of the person's role words (Kremlin, SVR,
Außenminister...), or the entry is marked ``surname_alone``. A similar name
of someone else does not link: a different given name next to the surname
("Natalia Naryshkina", "Elizaveta Peskova"), a double-barrelled name
("Naryshkina-Smith"), a longer name ("Lavrovsky") or a street ("Lavrov
Street") are rejected, and a later bare surname that is closer to such a
lookalike than to the watched person is rejected too.
"""

from __future__ import annotations

import bisect
import difflib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import accumulate, product
from pathlib import Path
from typing import Any, Iterable, Sequence

import ahocorasick
import yaml
from rapidfuzz import fuzz, process

from core.errors import ResourceError
from core.records import Entity
from transforms import names
from transforms.names import Token

log = logging.getLogger(__name__)

PERSON_TYPES = frozenset({"PER", "ORG", "LOC"})
_ENTRY_FIELDS = {
    "id", "type", "name", "gender", "given_names", "surnames", "surname_alone", "roles",
    "aliases", "qid_verified", "note",
}
_CONCEPT_FIELDS = {"id", "type", "name", "aliases", "roles", "note", "qid_verified"}
_ALIAS_FIELDS = {"text", "case", "common_word"}
_CASE_MODES = {"auto", "sensitive", "insensitive"}

# Words next to a surname that make it a place, not a person: "Lavrov Street",
# "улица Лаврова", "rue Lavrov", "Lawrowstraße" is one word and never matches.
_PLACE_AFTER = frozenset(names.fold(w) for w in (
    "Street", "St", "Avenue", "Ave", "Road", "Square", "Boulevard", "Lane", "Prospekt", "Prospect",
    "Straße", "Strasse", "Platz", "Allee", "Weg", "Gasse", "Ring", "Brücke",
))
_PLACE_BEFORE = frozenset(names.stem_slavic(names.fold(w)) for w in (
    "улица", "ул", "проспект", "пр", "площадь", "переулок", "бульвар", "набережная",
    "вулиця", "вул", "провулок", "майдан", "площа", "ulica", "ul", "aleja", "al", "plac",
    "rue", "avenue", "boulevard", "place", "quai", "impasse",
))

_FUZZY_MIN_RATIO = 88.0  # one substitution in a 9-letter surname, one dropped letter in a 6-letter one
_FUZZY_MIN_LEN = 5
_ROLE_WINDOW = 8  # tokens either side for role context of a fuzzy match
_SUBSTRING_ROLE_MIN = 5  # shorter role keys (SVR, МИД) must be whole words


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Alias:
    text: str
    language: str | None = None
    case: str = "auto"
    common_word: bool = False


@dataclass(frozen=True)
class Entry:
    """One watched person, organisation or concept."""

    id: str
    label: str
    name: str
    source: str = "watchlist"  # watchlist | concept
    gender: str | None = None
    given_names: tuple[str, ...] = ()
    surnames: tuple[str, ...] = ()
    surname_alone: bool = False
    roles: tuple[str, ...] = ()
    aliases: tuple[Alias, ...] = ()

    @property
    def is_person(self) -> bool:
        return self.label == "PER" and self.source == "watchlist"


# --------------------------------------------------------------------------- loading


def _fail(path: Path, where: str, message: str, hint: str | None = None) -> ResourceError:
    return ResourceError(f"{path}: {where}: {message}", hint=hint)


def _suggest(name: str, allowed: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, sorted(allowed), n=1)
    return f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(sorted(allowed))}"


def _str_list(path: Path, where: str, fld: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(path, where, f"field '{fld}' must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _per_language(path: Path, where: str, fld: str, value: Any) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if isinstance(value, list):
        return {"*": value}
    if not isinstance(value, dict):
        raise _fail(path, where, f"field '{fld}' must map a language code to a list")
    out = {}
    for lang, items in value.items():
        if not isinstance(lang, str):
            raise _fail(path, where, f"field '{fld}': language key {lang!r} must be a string such as 'de'")
        if items is None:
            continue
        if not isinstance(items, list):
            items = [items]
        out[lang] = items
    return out


def _aliases(path: Path, where: str, value: Any) -> tuple[Alias, ...]:
    out = []
    for lang, items in _per_language(path, where, "aliases", value).items():
        for item in items:
            if isinstance(item, str):
                if not item.strip():
                    raise _fail(path, where, f"field 'aliases.{lang}': empty alias")
                out.append(Alias(item.strip(), lang))
            elif isinstance(item, dict):
                unknown = set(item) - _ALIAS_FIELDS
                if unknown:
                    bad = sorted(unknown)[0]
                    raise _fail(path, where, f"field 'aliases.{lang}': unknown alias field '{bad}'", _suggest(bad, _ALIAS_FIELDS))
                text = item.get("text")
                if not isinstance(text, str) or not text.strip():
                    raise _fail(path, where, f"field 'aliases.{lang}': an alias mapping needs a non-empty 'text'")
                case = item.get("case", "auto")
                if case not in _CASE_MODES:
                    raise _fail(path, where, f"field 'aliases.{lang}': case must be one of {sorted(_CASE_MODES)}, got {case!r}")
                out.append(Alias(text.strip(), lang, case, bool(item.get("common_word", False))))
            else:
                raise _fail(path, where, f"field 'aliases.{lang}': an alias is a string or a mapping with 'text'")
    return tuple(out)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResourceError(f"{path}: file not found", hint="check resources.watchlist / resources.concepts in the settings") from None
    except yaml.YAMLError as exc:
        raise ResourceError(f"{path}: not valid YAML: {exc}") from None


def load_entries(path: str | Path, kind: str = "watchlist") -> list[Entry]:
    """Load and validate a watchlist (``kind="watchlist"``) or concepts file.

    Raises :class:`ResourceError` naming the file, the entry and the field.
    """
    path = Path(path)
    data = _read_yaml(path)
    list_key = "entries" if kind == "watchlist" else "concepts"
    if not isinstance(data, dict) or not isinstance(data.get(list_key), list):
        raise ResourceError(f"{path}: expected a mapping with a list under '{list_key}'")
    allowed = _ENTRY_FIELDS if kind == "watchlist" else _CONCEPT_FIELDS
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(data[list_key], 1):
        where = f"entry {n}"
        if not isinstance(raw, dict):
            raise _fail(path, where, "must be a mapping")
        ident = raw.get("id")
        if not isinstance(ident, str) or not ident.strip():
            raise _fail(path, where, "field 'id' is missing or empty", "use a Wikidata QID such as Q39259 or a slug such as concept:new-start")
        ident = ident.strip()
        where = f"entry {n} ('{ident}')"
        unknown = set(raw) - allowed
        if unknown:
            bad = sorted(unknown)[0]
            raise _fail(path, where, f"unknown field '{bad}'", _suggest(bad, allowed))
        if ident in seen:
            raise _fail(path, where, f"field 'id': duplicate of entry {seen[ident]}")
        seen[ident] = n
        label = raw.get("type")
        if not isinstance(label, str) or not label.strip():
            raise _fail(path, where, "field 'type' is missing", "PER, ORG or LOC for the watchlist; TREATY, ORG... for concepts")
        label = label.strip().upper()
        if kind == "watchlist" and label not in PERSON_TYPES:
            raise _fail(path, where, f"field 'type' must be one of {sorted(PERSON_TYPES)}, got {label!r}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fail(path, where, "field 'name' is missing or empty")
        gender = raw.get("gender")
        if gender is not None and gender not in ("m", "f"):
            raise _fail(path, where, f"field 'gender' must be 'm' or 'f', got {gender!r}")
        given = _str_list(path, where, "given_names", raw.get("given_names"))
        surnames = _str_list(path, where, "surnames", raw.get("surnames"))
        roles: list[str] = []
        for lang, items in _per_language(path, where, "roles", raw.get("roles")).items():
            roles.extend(_str_list(path, where, f"roles.{lang}", items))
        aliases = _aliases(path, where, raw.get("aliases"))
        if label == "PER" and kind == "watchlist" and not surnames:
            raise _fail(path, where, "field 'surnames' is required for a PER entry", "list the surname in every script, e.g. [Naryshkin, Нарышкин]")
        if not aliases and not surnames:
            raise _fail(path, where, "field 'aliases' is empty: nothing to match")
        surname_alone = raw.get("surname_alone", False)
        if not isinstance(surname_alone, bool):
            raise _fail(path, where, "field 'surname_alone' must be true or false")
        entries.append(Entry(
            id=ident, label=label, name=name.strip(), source=kind if kind == "concept" else "watchlist",
            gender=gender, given_names=given, surnames=surnames, surname_alone=surname_alone,
            roles=tuple(roles), aliases=aliases,
        ))
    return entries


def load_resources(watchlist: str | Path | None, concepts: str | Path | None) -> list[Entry]:
    """The watchlist and concept entries together; ids must be unique across both."""
    entries: list[Entry] = []
    if watchlist:
        entries.extend(load_entries(watchlist, "watchlist"))
    if concepts:
        entries.extend(load_entries(concepts, "concept"))
    seen: dict[str, str] = {}
    for e in entries:
        if e.id in seen:
            raise ResourceError(f"{concepts}: entry '{e.id}': id is also used in {seen[e.id]}", hint="ids must be unique across watchlist and concepts")
        seen[e.id] = str(watchlist if e.source == "watchlist" else concepts)
    return entries


# --------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class _Pattern:
    entry: int
    kind: str  # full | surname | alias
    tokens: tuple[str, ...] = ()  # original alias words, for case checks (exact pass)
    case: str = "insensitive"
    common_word: bool = False


@dataclass
class _Hit:
    field: int
    start: int  # token index
    end: int  # token index, exclusive
    entry: int
    kind: str
    how: str  # exact | fold | stem | fuzzy
    score: float
    surname_at: int = -1  # token index of the surname in a person hit


@dataclass
class _Field:
    name: str
    text: str
    tokens: list[Token]
    stems: list[str]
    shouting: bool
    roles: dict[int, list[int]] = field(default_factory=dict)  # role id -> token indices
    roles_stem: dict[int, list[int]] = field(default_factory=dict)


def _is_acronym(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return len(letters) >= 2 and all(c.isupper() for c in letters)


def _joined(keys: Sequence[str]) -> tuple[str, list[int]]:
    """A ' a b c ' stream of keys and the stream offset at which each key starts."""
    stream = " " + " ".join(keys) + " "
    starts = list(accumulate((len(k) + 1 for k in keys[:-1]), initial=1)) if keys else []
    return stream, starts


class _Automaton:
    """Token-sequence keys → payloads, searched over a joined token stream."""

    def __init__(self):
        self._pending: dict[str, list] = defaultdict(list)
        self._auto = ahocorasick.Automaton()
        self._empty = True

    def add(self, keys: Sequence[str], payload) -> None:
        if keys and all(keys):
            self._pending[" " + " ".join(keys) + " "].append(payload)

    def build(self) -> None:
        for key, payloads in self._pending.items():
            self._auto.add_word(key, (len(key), tuple(dict.fromkeys(payloads))))
        self._empty = not self._pending
        self._pending.clear()
        if not self._empty:
            self._auto.make_automaton()

    def __len__(self) -> int:
        return len(self._auto)

    def search(self, keys: Sequence[str]):
        """Yield (first token, end token exclusive, payloads) for every whole-token match."""
        if self._empty or not keys:
            return
        stream, starts = _joined(keys)
        index = {pos: i for i, pos in enumerate(starts)}
        for end, (length, payloads) in self._auto.iter(stream):
            first = index.get(end - length + 2)
            if first is None:
                continue
            inner = stream.count(" ", end - length + 2, end)
            yield first, first + inner + 1, payloads


class _RoleAutomaton:
    """Role words → role ids. Substring matches on the stream (German compounds such
    as Kremlsprecher), whole words for short keys (SVR, МИД)."""

    def __init__(self):
        self._auto = ahocorasick.Automaton()
        self._ids: dict[str, int] = {}
        self._has = False

    def add(self, keys: Sequence[str]) -> int | None:
        """Register a role word; returns its id (the same id for the same folded key)."""
        if not keys or not all(keys):
            return None
        joined = " ".join(keys)
        key = joined if len(joined) >= _SUBSTRING_ROLE_MIN else f" {joined} "
        return self._ids.setdefault(key, len(self._ids))

    def build(self) -> None:
        for key, rid in self._ids.items():
            self._auto.add_word(key, (len(key), rid))
        self._has = bool(self._ids)
        if self._has:
            self._auto.make_automaton()

    def search(self, keys: Sequence[str]) -> dict[int, list[int]]:
        """Role id → token indices where it occurs."""
        found: dict[int, list[int]] = defaultdict(list)
        if not self._has or not keys:
            return found
        stream, starts = _joined(keys)
        for end, (length, rid) in self._auto.iter(stream):
            pos = end - length + 1
            if stream[pos] == " ":
                pos += 1
            found[rid].append(max(0, bisect.bisect_right(starts, pos) - 1))
        return found


class EntityLinker:
    """Links watchlist people/organisations and concepts in text, with exact offsets."""

    def __init__(self, entries: Sequence[Entry]):
        self.entries = list(entries)
        self._exact = _Automaton()
        self._fold = _Automaton()
        self._stem = _Automaton()
        self._roles = _RoleAutomaton()
        self._roles_stem = _RoleAutomaton()
        self._given: list[frozenset[str]] = []
        self._surname_keys: list[frozenset[str]] = []
        # Role words are shared by many entries (minister, Kremlin): entries point at
        # role ids, documents record where each role id occurs.
        self._entry_roles: list[frozenset[int]] = []
        self._entry_roles_stem: list[frozenset[int]] = []
        # Fuzzy surname candidates, bucketed by first letter and length: (keys, entries).
        self._fuzzy: dict[tuple[str, int], tuple[list[str], list[int]]] = defaultdict(lambda: ([], []))
        # Acronyms that are also ordinary words (START): no match in shouted text.
        self._common_words = frozenset(
            a.text for e in entries for a in e.aliases if a.common_word and len(names.tokenize(a.text)) == 1
        )
        lexicon = set(names.common_given_name_keys())
        for i, e in enumerate(self.entries):
            given_keys = set()
            for g in e.given_names:
                for k in names.fold_phrase(g):
                    given_keys.update((k, names.stem_slavic(k)))
            self._given.append(frozenset(given_keys))
            lexicon |= given_keys
            self._add_entry(i, e)
        self._lexicon = frozenset(lexicon)
        self._fuzzy = dict(self._fuzzy)
        for a in (self._exact, self._fold, self._stem, self._roles, self._roles_stem):
            a.build()
        log.info(
            "linker entries=%d exact_keys=%d fold_keys=%d stem_keys=%d",
            len(self.entries), len(self._exact), len(self._fold), len(self._stem),
        )

    # -- construction

    @classmethod
    def from_files(cls, watchlist: str | Path | None, concepts: str | Path | None) -> "EntityLinker":
        return cls(load_resources(watchlist, concepts))

    @classmethod
    def from_settings(cls, settings) -> "EntityLinker":
        res = settings.resources
        concepts = res.concepts if res.concepts and Path(res.concepts).exists() else None
        if concepts is None and res.concepts:
            log.warning("concepts file %s not found: linking watchlist entries only", res.concepts)
        return cls.from_files(res.watchlist, concepts)

    def _add_fold_and_stem(self, keys: tuple[str, ...], payload: _Pattern) -> None:
        self._fold.add(keys, payload)
        stems = tuple(names.stem_slavic(k) for k in keys)
        # A one-word stem shorter than four letters would match too much.
        if len(stems) > 1 or len(stems[0]) >= 4:
            self._stem.add(stems, payload)

    def _add_entry(self, i: int, e: Entry) -> None:
        person = e.is_person
        for alias in e.aliases:
            toks = names.tokenize(alias.text)
            if not toks:
                continue
            words = tuple(t.text for t in toks)
            case = alias.case
            if case == "auto":
                case = "acronyms" if any(_is_acronym(w) for w in words) else "insensitive"
            kind = ("full" if len(toks) > 1 else "surname") if person else "alias"
            self._exact.add(tuple(t.lower for t in toks), _Pattern(i, kind, words, case, alias.common_word))
            if case == "insensitive":
                self._add_fold_and_stem(tuple(t.key for t in toks), _Pattern(i, kind))
        surname_keys = set()
        for s in e.surnames:
            toks = names.tokenize(s)
            if not toks:
                continue
            keys = tuple(t.key for t in toks)
            surname_keys.add(keys[-1])
            self._exact.add(tuple(t.lower for t in toks), _Pattern(i, "surname", tuple(t.text for t in toks)))
            self._add_fold_and_stem(keys, _Pattern(i, "surname"))
            last = keys[-1]
            if len(last) >= _FUZZY_MIN_LEN:
                bucket = self._fuzzy[(last[0], len(last))]
                bucket[0].append(last)
                bucket[1].append(i)
        self._surname_keys.append(frozenset(surname_keys))
        if person:
            givens = [names.fold_phrase(g) for g in e.given_names]
            surnames = [names.fold_phrase(s) for s in e.surnames]
            for g, s in product(givens, surnames):
                if g and s:
                    self._add_fold_and_stem(g + s, _Pattern(i, "full"))
        roles, roles_stem = set(), set()
        for role in e.roles:
            keys = names.fold_phrase(role)
            if keys:
                roles.add(self._roles.add(keys))
                roles_stem.add(self._roles_stem.add(tuple(names.stem_slavic(k) for k in keys)))
        self._entry_roles.append(frozenset(roles - {None}))
        self._entry_roles_stem.append(frozenset(roles_stem - {None}))

    # -- public API

    def link(self, text: str, language: str | None = None, field: str = "body") -> list[Entity]:
        """Entities in one text; offsets are into ``text``."""
        return self.link_fields([(field, text)], language)

    def link_fields(self, fields: Sequence[tuple[str, str]], language: str | None = None) -> list[Entity]:
        """Entities in the fields of one document (e.g. title and body).

        The fields share one document context: a full name in the title lets a
        bare surname in the body link. Offsets are relative to each field.
        """
        docs = [self._prepare(name, text or "", language) for name, text in fields]
        hits = []
        for fi, doc in enumerate(docs):
            hits.extend(self._candidates(fi, doc, language))
        accepted = self._decide(docs, hits, language)
        accepted.extend(self._fuzzy_hits(docs, accepted, language))
        return self._to_entities(docs, accepted)

    def link_article(self, article) -> list[Entity]:
        """Entities of an :class:`core.records.Article`, on its title and body."""
        return self.link_fields([("title", article.title or ""), ("body", article.body or "")], article.language)

    def resolve(self, text: str, language: str | None = None, known_ids: Iterable[str] = ()) -> Entry | None:
        """The watched entry a name (e.g. an NER span) stands for, or None.

        Every name word of ``text`` must be accounted for: a full name resolves
        on its own; a bare surname resolves when its entry is in ``known_ids``
        (already linked in the same article) or is marked ``surname_alone``.
        A different given name ("Elizaveta Peskova") resolves to nothing.
        """
        doc = self._prepare("span", text, language)
        toks = doc.tokens
        name_idx = [j for j, t in enumerate(toks) if t.key not in names.HONORIFICS and not names.is_patronymic(t.key) and len(t.key) > 1]
        if not name_idx:
            return None
        known = set(known_ids)
        best: Entry | None = None
        for hit in self._candidates(0, doc, language):
            entry = self.entries[hit.entry]
            if not set(name_idx) <= set(range(hit.start, hit.end)):
                continue
            if hit.kind in ("full", "alias"):
                return entry
            if entry.id in known or (entry.surname_alone and not self._gender_mismatch(hit.entry, toks[hit.start])):
                best = entry
        return best

    # -- steps

    def _prepare(self, name: str, text: str, language: str | None) -> _Field:
        tokens = names.tokenize(text)
        fam = self._family(text, language)
        stems = [names.stem(t.key, fam) for t in tokens] if fam else []
        doc = _Field(name, text, tokens, stems, names.is_shouting(text))
        keys = [t.key for t in tokens]
        doc.roles = self._roles.search(keys)
        if fam == "slavic":
            doc.roles_stem = self._roles_stem.search(stems)
        return doc

    @staticmethod
    def _family(text: str, language: str | None) -> str | None:
        fam = names.family(language)
        if fam is None and (not language or language == "und"):
            # Undetermined language: Cyrillic script still tells that Slavic case endings apply.
            if any("\u0400" <= c <= "\u04ff" for c in text):
                return "slavic"
        return fam

    def _candidates(self, fi: int, doc: _Field, language: str | None) -> list[_Hit]:
        toks = doc.tokens
        hits: list[_Hit] = []
        for a, b, payloads in self._exact.search([t.lower for t in toks]):
            for p in payloads:
                if self._case_ok(p, toks[a:b], doc.shouting):
                    hits.append(_Hit(fi, a, b, p.entry, p.kind, "exact", 1.0, b - 1))
        for a, b, payloads in self._fold.search([t.key for t in toks]):
            for p in payloads:
                hits.append(_Hit(fi, a, b, p.entry, p.kind, "fold", 0.95, b - 1))
        if doc.stems:
            auto = self._stem if self._family(doc.text, language) == "slavic" else self._fold
            for a, b, payloads in auto.search(doc.stems):
                for p in payloads:
                    hits.append(_Hit(fi, a, b, p.entry, p.kind, "stem", 0.9, b - 1))
        # Keep the best way each (span, entry) was found.
        best: dict[tuple[int, int, int], _Hit] = {}
        for h in hits:
            k = (h.start, h.end, h.entry)
            if k not in best or h.score > best[k].score:
                best[k] = h
        return list(best.values())

    def _case_ok(self, p: _Pattern, toks: Sequence[Token], shouting: bool) -> bool:
        if p.case == "insensitive":
            return True
        if shouting and (p.common_word or any(w in self._common_words for w in p.tokens)):
            return False
        for word, tok in zip(p.tokens, toks):
            if p.case == "sensitive" or _is_acronym(word):
                if tok.text != word:
                    return False
        return True

    def _gender_mismatch(self, idx: int, tok: Token) -> bool:
        """A surname form of the other gender: Zakharov for Zakharova, Naryshkina for Naryshkin."""
        gender = self.entries[idx].gender
        if gender == "f":
            return any(tok.key == base[:-1] for base in self._surname_keys[idx] if base.endswith("a"))
        if gender == "m":
            return any(names.is_feminine_form(tok.key, base) for base in self._surname_keys[idx])
        return False

    @staticmethod
    def _prev_name_token(doc: _Field, i: int) -> int | None:
        """Index of the word right before token ``i`` (only spaces between), skipping a
        patronymic or an initial ("Antony J. Blinken"); None after punctuation."""
        j = i - 1
        while j >= 0:
            t = doc.tokens[j]
            gap = doc.text[t.end : doc.tokens[j + 1].start]
            initial = len(t.text) == 1 and t.text.isupper()
            if gap.strip() not in ("", ".") or (gap.strip() == "." and not initial):
                return None
            if initial or names.is_patronymic(t.key):
                j -= 1
                continue
            return j
        return None

    def _role_positions(self, doc: _Field, idx: int) -> list[int]:
        """Token indices of the role words of entry ``idx`` in ``doc``."""
        out = [t for r in self._entry_roles[idx] if r in doc.roles for t in doc.roles[r]]
        if doc.roles_stem:
            out.extend(t for r in self._entry_roles_stem[idx] if r in doc.roles_stem for t in doc.roles_stem[r])
        return out

    def _is_given(self, key: str, stem_key: str) -> bool:
        return key in self._lexicon or stem_key in self._lexicon

    def _decide(self, docs: list[_Field], hits: list[_Hit], language: str | None) -> list[_Hit]:
        roles_in_doc = {h.entry for h in hits if any(self._role_positions(doc, h.entry) for doc in docs)}
        accepted: list[_Hit] = []
        pending: list[_Hit] = []
        # anchors per entry: (field, token, is_lookalike, surface key)
        anchors: dict[int, list[tuple[int, int, bool, str]]] = defaultdict(list)
        for h in sorted(hits, key=lambda h: (h.field, h.start)):
            entry = self.entries[h.entry]
            doc = docs[h.field]
            if not entry.is_person:
                accepted.append(h)
                continue
            sur = doc.tokens[h.surname_at]
            if not (sur.is_capitalised or doc.shouting):
                continue
            if self._place_or_compound(doc, h, language):
                continue
            if h.kind == "full":
                if h.how == "stem" and self._gender_mismatch(h.entry, sur):
                    continue
                anchors[h.entry].append((h.field, h.start, False, sur.key))
                accepted.append(h)
                continue
            verdict = self._surname_context(doc, h, entry)
            if verdict == "lookalike":
                anchors[h.entry].append((h.field, h.start, True, sur.key))
            elif verdict == "full":
                anchors[h.entry].append((h.field, h.start, False, sur.key))
                accepted.append(h)
            elif verdict == "bare":
                pending.append(h)
        for h in pending:
            entry = self.entries[h.entry]
            sur = docs[h.field].tokens[h.surname_at]
            mismatch = self._gender_mismatch(h.entry, sur)
            has_full = any(not look for _, _, look, _ in anchors[h.entry])
            if not (has_full or h.entry in roles_in_doc or (entry.surname_alone and not mismatch)):
                continue
            if mismatch and any(look and key == sur.key for _, _, look, key in anchors[h.entry]):
                # The other-gender form was used for someone else in this article
                # (Наталья Нарышкина ... Нарышкина рассказала): it stays ambiguous.
                continue
            before = [a for a in anchors[h.entry] if (a[0], a[1]) < (h.field, h.start)]
            if before:
                _, _, look, key = max(before)
                if look and (key == sur.key or mismatch):
                    continue
            elif any(look and key == sur.key for _, _, look, key in anchors[h.entry]):
                continue
            h.score *= 0.9
            accepted.append(h)
        return self._one_entry_per_span(accepted, docs, anchors, roles_in_doc)

    def _place_or_compound(self, doc: _Field, h: _Hit, language: str | None) -> bool:
        toks, text = doc.tokens, doc.text
        a, b = h.start, h.end - 1
        if b + 1 < len(toks) and toks[b + 1].key in _PLACE_AFTER and not names.starts_sentence(text, toks, b + 1):
            return True
        if a > 0 and names.stem_slavic(toks[a - 1].key) in _PLACE_BEFORE and not names.starts_sentence(text, toks, a):
            return True
        german = names.family(language) == "de"
        # A double-barrelled name (Naryshkina-Smith) is someone else; German
        # compounds (Lawrow-Besuch, Kreml-Sprecher) are not names.
        if names.hyphen_after(text, toks, b) and toks[b + 1].is_capitalised and not german:
            return True
        if h.kind != "full" and names.hyphen_before(text, toks, a) and toks[a - 1].is_capitalised and not german:
            if a - 1 not in self._role_positions(doc, h.entry):
                return True
        return False

    def _surname_context(self, doc: _Field, h: _Hit, entry: Entry) -> str:
        """'full' (own given name next to it), 'lookalike' (someone else's), or 'bare'."""
        toks = doc.tokens
        sur = toks[h.surname_at]
        given = self._given[h.entry]
        j = self._prev_name_token(doc, h.start)
        if j is not None:
            p = toks[j]
            pstem = names.stem_slavic(p.key)
            if p.key in given or pstem in given:
                h.start = j
                return "full"
            is_role = j in self._role_positions(doc, h.entry)
            if not is_role and p.key not in names.HONORIFICS:
                if p.is_capitalised and self._is_given(p.key, pstem):
                    return "lookalike"
                if (
                    self._gender_mismatch(h.entry, sur)
                    and p.is_capitalised
                    and not names.starts_sentence(doc.text, toks, j)
                ):
                    return "lookalike"
        # Russian order: Нарышкин Сергей Евгеньевич.
        n = h.end
        if n < len(toks) and (toks[n].key in given or names.stem_slavic(toks[n].key) in given):
            h.end = n + 1
            return "full"
        return "bare"

    def _one_entry_per_span(self, hits: list[_Hit], docs, anchors, roles_in_doc) -> list[_Hit]:
        """When two entries share a surname, keep the one the document supports."""
        by_span: dict[tuple[int, int, int], list[_Hit]] = defaultdict(list)
        for h in hits:
            by_span[(h.field, h.start, h.end)].append(h)
        out = []
        for group in by_span.values():
            if len({h.entry for h in group}) == 1:
                out.append(max(group, key=lambda h: h.score))
                continue

            def support(h: _Hit) -> tuple:
                full = any(not look for _, _, look, _ in anchors.get(h.entry, ()))
                return (h.kind != "surname", full, h.entry in roles_in_doc, h.score)

            ranked = sorted(group, key=support, reverse=True)
            if support(ranked[0]) != support(ranked[1]):
                out.append(ranked[0])
        return out

    def _fuzzy_candidate(self, key: str) -> tuple[float, int] | None:
        """The closest watched surname to ``key`` above the threshold: (ratio, entry)."""
        best = None
        for length in (len(key) - 1, len(key), len(key) + 1):
            bucket = self._fuzzy.get((key[0], length))
            if not bucket:
                continue
            keys, entries = bucket
            for cand, ratio, j in process.extract(key, keys, scorer=fuzz.ratio, score_cutoff=_FUZZY_MIN_RATIO, limit=5):
                # Longer or shorter forms of a surname (Lavrovsky, Lavrova) are
                # other names or inflections, never typos.
                if key.startswith(cand) or cand.startswith(key):
                    continue
                if best is None or ratio > best[0]:
                    best = (ratio, entries[j])
        return best

    def _fuzzy_hits(self, docs: list[_Field], accepted: list[_Hit], language: str | None) -> list[_Hit]:
        if not self._fuzzy:
            return []
        covered = {(h.field, i) for h in accepted for i in range(h.start, h.end)}
        cache: dict[str, tuple[float, int] | None] = {}
        out = []
        for fi, doc in enumerate(docs):
            for i, tok in enumerate(doc.tokens):
                key = tok.key
                if (fi, i) in covered or len(key) < _FUZZY_MIN_LEN or not tok.is_capitalised:
                    continue
                if key in self._lexicon:
                    continue
                if key not in cache:
                    cache[key] = self._fuzzy_candidate(key)
                best = cache[key]
                if best is None:
                    continue
                r, e = best
                h = _Hit(fi, i, i + 1, e, "surname", "fuzzy", 0.85 * r / 100, i)
                if self._place_or_compound(doc, h, language):
                    continue
                verdict = self._surname_context(doc, h, self.entries[e])
                near_role = any(abs(t - i) <= _ROLE_WINDOW for t in self._role_positions(doc, e))
                if verdict == "full" or (verdict == "bare" and near_role):
                    out.append(h)
        return out

    @staticmethod
    def _merge_same_entry(hits: list[_Hit]) -> list[_Hit]:
        """Overlapping hits of one entry become one span (Договір СНО + СНО-3)."""
        out: list[_Hit] = []
        for h in sorted(hits, key=lambda h: (h.entry, h.start, h.end)):
            last = out[-1] if out else None
            if last is not None and last.entry == h.entry and h.start < last.end:
                last.end = max(last.end, h.end)
                last.score = max(last.score, h.score)
            else:
                out.append(_Hit(h.field, h.start, h.end, h.entry, h.kind, h.how, h.score, h.surname_at))
        return out

    def _to_entities(self, docs: list[_Field], hits: list[_Hit]) -> list[Entity]:
        out: list[Entity] = []
        for fi, doc in enumerate(docs):
            mine = self._merge_same_entry([h for h in hits if h.field == fi])
            # One span, one entity: longest first, then the most certain.
            mine.sort(key=lambda h: (-(h.end - h.start), -h.score, h.start))
            taken: set[int] = set()
            chosen = []
            for h in mine:
                span = set(range(h.start, h.end))
                if span & taken:
                    continue
                taken |= span
                chosen.append(h)
            for h in sorted(chosen, key=lambda h: h.start):
                e = self.entries[h.entry]
                start, end = doc.tokens[h.start].start, doc.tokens[h.end - 1].end
                out.append(Entity(
                    text=doc.text[start:end], label=e.label, start=start, end=end, field=doc.name,
                    canonical_id=e.id, canonical_name=e.name, key=e.id, source=e.source,
                    score=round(h.score, 3),
                ))
        return out
