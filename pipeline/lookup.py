"""Turn what an analyst types (a QID, a name in any spelling) into canonical entity ids."""

from __future__ import annotations

import difflib

from core.errors import ResourceError
from core.query import QueryError
from core.settings import Settings


def _entries(settings: Settings):
    from transforms.watchlist import load_resources

    r = settings.resources
    return load_resources(r.watchlist, r.concepts)


def resolve_entity(settings: Settings, value: str, *, linker=None, entries=None) -> str:
    """A canonical id for ``value``: an id as it is, else a name resolved through the watchlist.

    ``Q320225``, ``Sergei Naryshkin``, ``Нарышкин`` and ``Naryschkin`` all give
    the same id. An unknown id-shaped value (``Q…``, ``concept:…``) is passed
    through, since the store may hold ids from an older watchlist.
    """
    from transforms.watchlist import EntityLinker

    value = value.strip()
    entries = entries if entries is not None else _entries(settings)
    by_id = {e.id: e for e in entries}
    if value in by_id or value.startswith("concept:") or (value[:1] == "Q" and value[1:].isdigit()):
        return value
    linker = linker or EntityLinker(entries)
    # A bare surname is accepted here: the analyst asked for that person.
    found = {e.id for e in entries if value.casefold() in {s.casefold() for s in getattr(e, "surnames", ())}}
    entry = linker.resolve(value, None, known_ids=[e.id for e in entries])
    if entry is not None:
        found.add(entry.id)
    for ent in linker.link(value):
        if ent.canonical_id and ent.end - ent.start >= len(value) * 0.6:
            found.add(ent.canonical_id)
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        names = ", ".join(f"{i} ({by_id[i].name})" for i in sorted(found))
        raise QueryError(f"entity '{value}' is ambiguous: {names}", hint="give the canonical id")
    close = difflib.get_close_matches(value, [e.name for e in entries], n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see `newswatch entities list` for the watchlist"
    raise QueryError(f"no watchlist entry or concept matches '{value}'", hint=hint)


def list_entries(settings: Settings) -> list[dict]:
    try:
        return [{"id": e.id, "name": e.name, "label": e.label, "source": e.source} for e in _entries(settings)]
    except ResourceError:
        raise
