"""Open the configured store: the search server when index.hosts is set, else embedded SQLite."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from core.errors import NewswatchError
from core.settings import Settings
from connectors.store import ArticleStore


class StoreMissing(NewswatchError):
    code = "store_missing"


@contextmanager
def open_sqlite(settings: Settings, *, must_exist: bool = False) -> Iterator:
    from connectors.sqlite_store import SqliteStore

    path = settings.store.path
    if must_exist and not path.exists():
        raise StoreMissing(f"no store at {path}", hint="run `newswatch run` first, or point store.path / --config at an existing store")
    st = SqliteStore(path)
    try:
        yield st
    finally:
        st.close()


@contextmanager
def open_store(settings: Settings, *, must_exist: bool = False) -> Iterator[ArticleStore]:
    if settings.index.enabled:
        from connectors.search_index import open_index

        st = open_index(settings.index)
        try:
            yield st
        finally:
            st.close()
    else:
        with open_sqlite(settings, must_exist=must_exist) as st:
            yield st
